"""The adapter for models that hand out their own intermediate feature maps.

timm models (``forward_intermediates``), open_clip vision towers (the same method, wrapped) and
our DaViT all return a list of feature maps plus a global vector from one forward pass. What
differs is which maps become the two grid levels, decided once at build time by a
:class:`GridPlan` from the model's stages (pixel stride and channels of each tap):

* single-scale models (every tap at the patch stride, a plain ViT): level 16 is the last block's
  token grid, level 32 its 2x2 average pool (stride 2p), as for the Hugging Face ViTs;
* hierarchical models (Swin, ConvNeXt, DaViT, ...): level 16 is the last stage at stride 16 and
  level 32 the last stage at stride 32. A model without both is refused, never probed at a
  different scale silently.

Single-scale models can also return taps: the class token (or pooled map) of chosen blocks.

The shapes of both levels are what the model returns for the preset's input (one forward on
the meta device at build time), never ``input // stride``. Every batch is checked against the
plan: a grid of another shape is an error.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from embedcache.encoders._shapes import dry_run
from embedcache.encoders.base import (
    GRID_LEVELS,
    Encoder,
    EncoderPreset,
    Features,
    GridSpec,
    pool_grid,
)


@dataclass(frozen=True)
class Stage:
    """One tap of ``forward_intermediates``.

    Attributes:
        index: its index in ``forward_intermediates(indices=...)``.
        reduction: nominal pixel stride of its feature map (the model's ``feature_info``).
        channels: C of its feature map.
    """

    index: int
    reduction: int
    channels: int


@dataclass(frozen=True)
class GridPlan:
    """Which taps become grid levels 16 and 32, and their shapes.

    Attributes:
        indices: the taps to request, level 16's first (one tap when ``pooled``).
        specs: ``{16: GridSpec, 32: GridSpec}``, the shapes the model returned for the preset's
            input (see :meth:`MultiScaleEncoder.plan_grids`).
        pooled: level 32 is the 2x2 average pool of level 16 (single-scale models).
    """

    indices: tuple[int, ...]
    specs: dict[int, GridSpec]
    pooled: bool


def choose_stages(stages: Sequence[Stage], what: str) -> tuple[dict[int, Stage], bool]:
    """``({16: stage, 32: stage}, pooled)``: which stages give the two grid levels.

    Single-scale models (every tap at one stride): both levels come from the last tap, level 32
    as its 2x2 pool (``pooled``). Hierarchical models: the last stage at stride 16 and at 32;
    a model without both is refused.
    """
    if not stages:
        raise ValueError(f"{what} reports no feature stages")
    reductions = sorted({s.reduction for s in stages})
    if len(reductions) == 1:
        return {16: stages[-1], 32: stages[-1]}, True
    picked: dict[int, Stage] = {}
    for level in GRID_LEVELS:
        at_level = [s for s in stages if s.reduction == level]
        if not at_level:
            raise ValueError(
                f"{what} has feature strides {reductions}: no stride-{level} stage for grid "
                f"level {level}"
            )
        picked[level] = at_level[-1]
    return picked, False


def tap_vector(spatial: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """One block's tap, ``(B, C)``: its (normed) class token, the first prefix token, or the mean
    of its ``(B, C, h, w)`` map where the model has no prefix tokens."""
    if prefix is not None and prefix.shape[1] > 0:
        return prefix[:, 0].float().contiguous()
    return spatial.mean(dim=(2, 3)).float().contiguous()


def channels_last(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> contiguous float32 ``(B, h, w, C)``."""
    return feature_map.permute(0, 2, 3, 1).float().contiguous()


class MultiScaleEncoder(Encoder):
    """An encoder whose subclass returns the global vector and the planned maps in one pass.

    Args:
        preset: the preset; ``options["normalize_global"]`` divides the global vector by its L2
            norm (what MedImageInsight's ``encode_image`` and the reference study did).
        weights_id: identity of the weights (store key).
        global_dim: D of the global vector.

    Subclasses put their model in place, then call :meth:`plan_grids` once.
    """

    adapter_version = "1"

    def __init__(
        self,
        preset: EncoderPreset,
        weights_id: dict[str, Any],
        global_dim: int,
    ) -> None:
        super().__init__()
        self.preset = preset
        self.weights_id = weights_id
        self.global_dim = int(global_dim)
        self.normalize_global = bool(preset.options.get("normalize_global", False))

    def plan_grids(self, stages: Sequence[Stage], what: str) -> GridPlan:
        """Choose the stages (:func:`choose_stages`) and read their shapes from what the model
        returns for the preset's input (one forward on the meta device, see
        :func:`~embedcache.encoders._shapes.dry_run`): sets and returns :attr:`plan`, and
        :attr:`grid_specs`. Subclasses call it once their model is in place."""
        picked, pooled = choose_stages(stages, what)
        indices = (picked[16].index,) if pooled else (picked[16].index, picked[32].index)
        self.plan = GridPlan(indices, {}, pooled)
        size = self.preset.preprocessing.input_size
        embedding, grids, _ = dry_run(self, self._outputs, size)
        specs = {}
        for level, grid in grids.items():
            _, h, w, channels = grid.shape
            if min(h, w) < 1 or (level == 16 and min(h, w) < 2):
                raise ValueError(
                    f"{what}: input {size} px gives a {h}x{w} map at grid level {level}; at "
                    "least 2x2 is needed"
                )
            stride = 2 * picked[16].reduction if pooled and level == 32 else picked[level].reduction
            specs[level] = GridSpec(stride, (int(h), int(w), int(channels)))
        if embedding.shape[-1] != self.global_dim:
            raise ValueError(
                f"{what} returns a global vector of {embedding.shape[-1]}, expected "
                f"{self.global_dim}"
            )
        self.plan = GridPlan(indices, specs, pooled)
        self.grid_specs = dict(specs)
        self._blocks = len(stages)
        self.tap_dim = specs[16].shape[2]
        return self.plan

    @abstractmethod
    def features(
        self, pixels: torch.Tensor, taps: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[int, torch.Tensor]]:
        """Normalised ``(B, 3, S, S)`` -> ``(global (B, D), [maps (B, h, w, C)], {block: tap
        (B, C)})``, the maps in the order of ``plan.indices``, channels-last; one tap per block
        of ``taps`` (see :func:`tap_vector`)."""

    def tap_blocks(self) -> int | None:
        """Single-scale models (a ViT: one tap per block) can tap any block; hierarchical ones
        none."""
        return self._blocks if self.plan.pooled else None

    def _outputs(
        self, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """``(global (B, D), {16: grid, 32: grid}, {block: tap})`` as the model returns them,
        unchecked."""
        embedding, maps, taps = self.features(pixels, self.taps)
        if len(maps) != len(self.plan.indices):
            raise RuntimeError(f"expected {len(self.plan.indices)} feature maps, got {len(maps)}")
        grid16 = maps[0].float().contiguous()
        grid32 = pool_grid(grid16) if self.plan.pooled else maps[1].float().contiguous()
        return embedding.reshape(pixels.shape[0], -1), {16: grid16, 32: grid32}, taps

    def encode(self, pixels: torch.Tensor) -> Features:
        embedding, grids, taps = self._outputs(pixels)
        batch = pixels.shape[0]
        for level, grid in grids.items():
            want = (batch, *self.grid_specs[level].shape)
            if tuple(grid.shape) != want:
                raise RuntimeError(
                    f"grid level {level}: expected {want}, got {tuple(grid.shape)} "
                    f"(input {tuple(pixels.shape[-2:])})"
                )
        embedding = embedding.float()
        if embedding.shape[1] != self.global_dim:
            raise RuntimeError(
                f"expected a global vector of {self.global_dim}, got {embedding.shape[1]}"
            )
        if self.normalize_global:
            embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        return Features(embedding=embedding.contiguous(), grids=grids, taps=taps)
