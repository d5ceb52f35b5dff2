"""The encoder adapter contract.

An adapter wraps one library family (Hugging Face DINOv2, SigLIP, timm Swin, ...). Presets are
data (:class:`EncoderPreset`); adapters are code. Every adapter obeys the same sealed template:

* :meth:`Preprocessing.prepare` turns one grey image ``(H, W)`` float32 in ``[0, 1]`` into the
  model's input geometry ``(1, S, S)``, still in ``[0, 1]``. It runs in DataLoader workers.
* :meth:`Encoder.forward` takes a batch ``(B, 1 | 3, S, S)`` in ``[0, 1]``, repeats grey to three
  channels, applies the preset's mean/std, and only then calls the adapter's :meth:`Encoder.encode`.
  Normalisation cannot be forgotten or applied twice by a caller.
* :meth:`Encoder.encode` returns :class:`Features`: the global vector ``(B, D)`` and the patch grids
  ``{16: (B, h, w, C), 32: (B, h', w', C')}``, channels-last.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedcache.geometry import CropRounding, Frame, ResizePolicy

Interpolation = Literal["bilinear", "bicubic"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The two nominal grid levels every encoder provides. The actual pixel stride is recorded in
#: :class:`GridSpec` (a ViT-B/14 has stride 14 at level 16 and 28 at level 32).
GRID_LEVELS = (16, 32)


@dataclass(frozen=True)
class Preprocessing:
    """Geometry and intensity normalisation of one preset.

    Attributes:
        input_size: side S of the square model input, pixels.
        mean, std: per-channel normalisation applied to the ``[0, 1]`` three-channel input.
        resize: ``resize`` stretches to S x S (aspect not kept); ``crop`` scales the shorter side to
            ``resize_to`` (default S) then centre-crops S x S (the DINOv2/BiT processor's policy);
            ``pad`` pads to a square with black (0) then scales to S.
        interpolation: kernel for the image resize (always antialiased when shrinking).
        resize_to: ``crop`` only: the shorter side before the centre crop, pixels. ``None`` means S.
            The Hugging Face DINOv2 processor resizes to 256 then crops 224, which cuts a border
            off a square chest X-ray; ``resize_to=256`` reproduces that exactly.
        crop_rounding: ``crop`` only: where an odd margin puts the window. ``floor`` is
            ``(h - S) // 2`` (Hugging Face processors); ``round`` rounds ``(h - S) / 2`` half to
            even (torchvision's ``center_crop``, hence timm and open_clip). A 1 px shift, and
            only for non-square images.
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: ResizePolicy = "resize"
    interpolation: Interpolation = "bicubic"
    resize_to: int | None = None
    crop_rounding: CropRounding = "floor"

    def __post_init__(self) -> None:
        _ = self.frame  # validates the geometry (input size, policy, resize_to, rounding)

    @property
    def frame(self) -> Frame:
        """The input frame's geometry (:class:`embedcache.geometry.Frame`)."""
        return Frame(self.input_size, self.resize, self.resize_to, self.crop_rounding)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """Resize one grey image to the model input.

        The padding, resized canvas and crop window come from :attr:`frame` (the one place
        that knows the geometry); this method only interpolates.

        Args:
            image: ``(H, W)`` float32 in ``[0, 1]``, bright = dense.

        Returns:
            ``(1, S, S)`` float32 tensor, still in ``[0, 1]`` up to interpolation overshoot
            (not clamped, as the model libraries' own processors do not clamp either).
        """
        if image.ndim != 2:
            raise ValueError(f"expected a grey (H, W) image, got shape {image.shape}")
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        frame, size = self.frame, self.input_size
        h, w = image.shape
        top, bottom, left, right = frame.padding(h, w)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=0.0)
        target = frame.resized_size(h, w)
        if tuple(x.shape[-2:]) != target:
            x = F.interpolate(
                x, size=target, mode=self.interpolation, align_corners=False, antialias=True
            )
        crop_top, crop_left = frame.crop_offset(h, w)
        x = x[..., crop_top : crop_top + size, crop_left : crop_left + size]
        return x[0].contiguous()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GridSpec:
    """One patch grid: its actual pixel stride and its channels-last shape ``(h, w, C)``."""

    stride: int
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Features:
    """Outputs of one forward pass.

    Attributes:
        embedding: global vector per image, ``(B, D)``.
        grids: ``{16: (B, h, w, C), 32: (B, h', w', C')}``, channels-last.
        taps: ``{block: (B, D')}``, the class (or pooled) token of each tapped block (see
            :meth:`Encoder.set_taps`); empty unless taps were asked for.
    """

    embedding: torch.Tensor
    grids: Mapping[int, torch.Tensor]
    taps: Mapping[int, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderPreset:
    """A named encoder: which adapter family builds it, from which weights, fed how.

    Attributes:
        name: registry name (``rad-dino``).
        family: adapter family key in the registry (``hf-dinov2``).
        source: default weights: a Hugging Face hub id, or a description for checkpoint files.
        preprocessing: input geometry and normalisation (the reference study's by default).
        arch: keyword arguments that build the architecture offline (``--weights none``), e.g. a
            transformers config's fields. Never downloaded.
        description, license: shown by ``embedcache encoders`` and the docs.
        options: family-specific switches (which output is the global vector, ...).
    """

    name: str
    family: str
    source: str
    preprocessing: Preprocessing
    arch: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    license: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


class Encoder(nn.Module, ABC):
    """Base class of all adapters. Subclasses implement :meth:`encode` and set the attributes.

    Attributes set by subclasses in ``__init__``:
        preset: the :class:`EncoderPreset` (or an ad-hoc one for ``hf:`` specs).
        global_dim: D of the global vector.
        grid_specs: ``{16: GridSpec, 32: GridSpec}``.
        weights_id: JSON-able identity of the weights: hub id and commit, local folder and the
            digest of its weight files, or ``{"random_init": seed}``. Part of the store key.
    """

    #: Bump when an adapter change alters its numbers: old store groups then stop matching.
    adapter_version: ClassVar[str] = "1"
    #: The checkpoint's own preprocessing compared with the preset's (set by ``build_encoder``
    #: for real weights; see :mod:`embedcache.encoders._published`). Provenance, not key.
    preprocessing_check: dict[str, Any] | None = None

    preset: EncoderPreset
    global_dim: int
    grid_specs: dict[int, GridSpec]
    weights_id: dict[str, Any]
    #: Blocks whose class (or pooled) token ``encode`` also returns (:meth:`set_taps`), and
    #: the size of each.
    taps: tuple[int, ...] = ()
    tap_dim: int = 0

    @property
    def preprocessing(self) -> Preprocessing:
        return self.preset.preprocessing

    @final
    def forward(self, pixels: torch.Tensor) -> Features:
        """Normalise and encode a batch.

        Args:
            pixels: ``(B, 1, S, S)`` or ``(B, 3, S, S)`` float in ``[0, 1]`` (from
                :meth:`Preprocessing.prepare`).

        Returns:
            :class:`Features` with channels-last grids.
        """
        if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
            raise ValueError(f"expected pixels (B, 1|3, S, S), got {tuple(pixels.shape)}")
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        mean, std = self._normalisation(pixels.device, pixels.dtype)
        return self.encode((pixels - mean) / std)

    def _normalisation(
        self, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The preset's mean and std as ``(1, 3, 1, 1)`` tensors on ``device``, made once per
        device and dtype: building them in every forward is a blocking host-to-device copy
        that keeps the CPU from running ahead of the GPU."""
        cache = self.__dict__.setdefault("_normalisation_cache", {})
        key = (device, dtype)
        if key not in cache:
            pp = self.preprocessing
            # Normal tensors even when first asked under inference_mode (fine-tuning reuses them).
            with torch.inference_mode(False):
                cache[key] = tuple(
                    torch.tensor(v, dtype=dtype).view(1, 3, 1, 1).to(device)
                    for v in (pp.mean, pp.std)
                )
        return cache[key]

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> Features:
        """Model-specific part: normalised ``(B, 3, S, S)`` in, :class:`Features` out."""

    def tap_blocks(self) -> int | None:
        """How many blocks a tap can name; ``None`` where the family has no per-block class or
        pooled token (hierarchical models). Overridden by adapters that support taps."""
        return None

    def set_taps(self, spec: str | Sequence[int] | None) -> None:
        """Also return the class (or pooled) token of some blocks (:attr:`Features.taps`).

        Args:
            spec: ``lastN`` (the last N blocks, DINOv2's linear evaluation uses 4), block
                indices (``8,9,10,11``; negative counts from the end), or ``None``/``""`` for
                none. Taps are part of the store key.
        """
        blocks = self.tap_blocks()
        if spec in (None, "", ()):
            self.taps = ()
            return
        if blocks is None:
            raise ValueError(
                f"{self.preset.name}: --taps needs a single-scale ViT (a class or pooled token "
                f"per block); {type(self).__name__} has none"
            )
        self.taps = parse_taps(spec, blocks)

    def key_material(self) -> dict[str, Any]:
        """Everything that changes the numbers this encoder produces (hashed into the store key)."""
        return {
            "preset": self.preset.name,
            "family": self.preset.family,
            "adapter": f"{type(self).__module__}.{type(self).__qualname__}",
            "adapter_version": self.adapter_version,
            "weights": self.weights_id,
            "preprocessing": self.preprocessing.to_dict(),
            "options": dict(self.preset.options),
            **({"taps": list(self.taps)} if self.taps else {}),
        }

    def describe(self) -> dict[str, Any]:
        """Provenance and shapes, JSON-able (written to the store's attributes)."""
        extra = (
            {"preprocessing_check": self.preprocessing_check} if self.preprocessing_check else {}
        )
        return {
            **self.key_material(),
            **extra,
            "source": self.preset.source,
            "global_dim": self.global_dim,
            "grids": {
                str(level): {"stride": g.stride, "shape": list(g.shape)}
                for level, g in self.grid_specs.items()
            },
            "parameters": sum(p.numel() for p in self.parameters()),
            **({"tap_dim": self.tap_dim} if self.taps else {}),
        }


def pool_grid(grid: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average-pool a channels-last grid ``(B, h, w, C)`` by ``factor`` -> ``(B, h//f, w//f, C)``.

    Used for the stride-32 level of plain ViTs (a 2x2 pool of the token grid). An odd side drops
    its last row/column, as ``avg_pool2d`` does (37x37 -> 18x18).
    """
    pooled = F.avg_pool2d(grid.permute(0, 3, 1, 2), kernel_size=factor, stride=factor)
    return pooled.permute(0, 2, 3, 1).contiguous()


def parse_taps(spec: str | Sequence[int], blocks: int) -> tuple[int, ...]:
    """Block indices (0-based, ascending, unique) of a taps spec for a model of ``blocks``
    blocks: ``last4`` -> ``(blocks - 4, ..., blocks - 1)``; ``"8,9,-1"`` or ``[8, 9, -1]``."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text.startswith("last"):
            try:
                count = int(text[4:])
            except ValueError:
                raise ValueError(f"taps {spec!r}: expected lastN, e.g. last4") from None
            if not 1 <= count <= blocks:
                raise ValueError(f"taps {spec!r}: the model has {blocks} blocks")
            return tuple(range(blocks - count, blocks))
        try:
            indices = [int(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise ValueError(
                f"taps {spec!r}: expected lastN or block indices, e.g. 8,9,10,11"
            ) from None
    else:
        indices = [int(v) for v in spec]
    resolved = sorted({i + blocks if i < 0 else i for i in indices})
    bad = [i for i in resolved if not 0 <= i < blocks]
    if bad or not resolved:
        raise ValueError(
            f"taps {spec!r}: block indices must lie in 0..{blocks - 1} (or -{blocks}..-1)"
        )
    return tuple(resolved)
