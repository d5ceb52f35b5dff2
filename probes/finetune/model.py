"""Encoder + head as one ``nn.Module``: the probes' heads on a trainable encoder.

- Classification: one linear layer on the global vector (``Features.embedding``), the reference
  linear probe's head, initialised as ``nn.Linear`` under the run's seed.
- Segmentation: the segmentation probe's head (:class:`probes.segmentation.head._LinearGridHead`): a 1x1
  convolution on ``grid16``/``grid32`` (or both, summed at grid16's size), bilinear upsampling
  to the mask resolution. Its feature standardisation stays the identity: statistics of a
  moving encoder would go stale, and the reference fine-tune did not standardise. SegFormer's
  own decode head is the other entry of :data:`SEGMENTATION_HEADS` (the reference's SegFormer
  baseline).

The encoder's own sealed ``forward`` (normalisation, then ``encode``) is called, so pixels enter
exactly as at extraction. Nothing here runs the encoder under ``no_grad``: the reference study's
Ark+ segmentation "fine-tune" did, and never trained its encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from probes.core.grids import grid_names
from probes.segmentation.head import _LinearGridHead

if TYPE_CHECKING:
    from embedcache.encoders.base import Encoder, Features

#: Method an encoder's sub-module offers -> how to switch activation checkpointing on with it.
#: The outermost module offering one gets it (transformers models, timm and open_clip towers).
CHECKPOINTING: Mapping[str, Callable[[nn.Module], None]] = {
    "activation_checkpointing_enable": lambda m: m.activation_checkpointing_enable(
        {"use_reentrant": False}
    ),
    "gradient_checkpointing_enable": lambda m: m.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    ),
    "set_grad_checkpointing": lambda m: m.set_grad_checkpointing(True),
}


class FinetuneModel(nn.Module):
    """An encoder and a head trained together.

    Args:
        encoder: an :class:`embedcache.encoders.base.Encoder` (pixels in ``[0, 1]``).
        head: a module taking the encoder's :class:`~embedcache.encoders.base.Features`
            (:class:`GlobalHead`, :class:`GridHead`, or a head of :data:`SEGMENTATION_HEADS`).
    """

    def __init__(self, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1 | 3, S, S)`` in ``[0, 1]`` -> logits ``(B, k)`` (classification) or scores
        ``(B, 1 | K, H, W)`` at the mask resolution (segmentation; the logit difference for
        two classes, as the probe)."""
        return self.head(self.encoder(pixels))

    def encoder_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.encoder.named_parameters())

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.head.named_parameters())


class GlobalHead(nn.Module):
    """The reference linear probe's head: ``nn.Linear(D, k)`` on the global vector, with its
    default initialisation drawn from ``seed`` (in a forked RNG: the caller's stream is kept)."""

    def __init__(self, in_features: int, n_outputs: int, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.linear = nn.Linear(in_features, n_outputs)

    def forward(self, features: Features) -> torch.Tensor:
        """Global vector ``(B, D)`` -> logits ``(B, k)``."""
        return self.linear(features.embedding)


class GridHead(nn.Module):
    """The segmentation probe's head (:class:`probes.segmentation.head._LinearGridHead`) on the grid
    levels it reads (``(16,)``, ``(32,)`` or ``(16, 32)``)."""

    def __init__(
        self,
        encoder: Encoder,
        grid: str,
        n_classes: int,
        mask_shape: tuple[int, int],
        align_corners: bool,
        seed: int,
    ):
        super().__init__()
        self.levels = tuple(int(name.removeprefix("grid")) for name in grid_names(grid))
        missing = [level for level in self.levels if level not in encoder.grid_specs]
        if missing:
            raise ValueError(
                f"encoder {encoder.preset.name} has grids {sorted(encoder.grid_specs)}, "
                f"not {missing}"
            )
        shapes = [tuple(encoder.grid_specs[level].shape) for level in self.levels]
        generator = torch.Generator().manual_seed(seed)
        self.probe = _LinearGridHead(shapes, n_classes, mask_shape, align_corners, generator)

    def forward(self, features: Features) -> torch.Tensor:
        """Grids ``(B, h, w, C)`` -> scores ``(B, 1 | K, H, W)``."""
        return self.probe([features.grids[level] for level in self.levels])


class SegmentationHeadSpec(NamedTuple):
    """What a segmentation head builder gets: the encoder and the run's head settings."""

    encoder: Encoder
    grid: str
    n_classes: int
    mask_shape: tuple[int, int]
    align_corners: bool
    seed: int


def _grid_head(spec: SegmentationHeadSpec) -> nn.Module:
    return GridHead(*spec)


def _segformer_head(spec: SegmentationHeadSpec) -> nn.Module:
    from probes.finetune.segformer_head import SegformerDecodeHead

    return SegformerDecodeHead(spec.encoder, spec.n_classes, spec.mask_shape, spec.seed)


#: Segmentation head name -> builder. ``linear`` is the probe's head (any encoder); ``segformer``
#: is SegFormer's own all-MLP decode head over its four stages (the reference's baseline).
SEGMENTATION_HEADS: Mapping[str, Callable[[SegmentationHeadSpec], nn.Module]] = {
    "linear": _grid_head,
    "segformer": _segformer_head,
}


def build_model(
    encoder: Encoder,
    task: str,
    *,
    n_outputs: int,
    seed: int,
    grid: str = "grid16",
    mask_shape: tuple[int, int] | None = None,
    align_corners: bool = True,
    seg_head: str = "linear",
) -> FinetuneModel:
    """Encoder + the head for ``task``.

    Args:
        n_outputs: label columns (classification) or classes (segmentation, >= 2).
        mask_shape: segmentation: ``(H, W)`` the scores are upsampled to.
        seg_head: segmentation head, a key of :data:`SEGMENTATION_HEADS`.
    """
    if task == "classification":
        return FinetuneModel(encoder, GlobalHead(encoder.global_dim, n_outputs, seed))
    if task != "segmentation":
        raise ValueError(f"unknown task {task!r}")
    if mask_shape is None:
        raise ValueError("a segmentation model needs mask_shape (H, W)")
    if seg_head not in SEGMENTATION_HEADS:
        raise ValueError(f"segmentation head must be one of {sorted(SEGMENTATION_HEADS)}")
    spec = SegmentationHeadSpec(encoder, grid, n_outputs, tuple(mask_shape), align_corners, seed)
    return FinetuneModel(encoder, SEGMENTATION_HEADS[seg_head](spec))


def enable_gradient_checkpointing(encoder: nn.Module) -> list[str]:
    """Switch activation checkpointing on in every outermost sub-module that offers it (see
    :data:`CHECKPOINTING`); returns their names. Raises ``ValueError`` when none does."""
    enabled: list[str] = []
    for name, module in encoder.named_modules():
        if any(name.startswith(f"{done}.") or done == "" for done in enabled):
            continue  # inside a module already switched on
        for method, switch_on in CHECKPOINTING.items():
            if callable(getattr(module, method, None)):
                switch_on(module)
                enabled.append(name)
                break
    if not enabled:
        raise ValueError(
            f"{type(encoder).__name__} has no sub-module offering activation checkpointing "
            f"({', '.join(CHECKPOINTING)}); run without --grad-checkpointing"
        )
    return enabled
