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

Every batch is checked against the plan: a grid of another shape is an error.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

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
        reduction: pixel stride of its feature map.
        channels: C of its feature map.
        side: its spatial side for the preset's input, if known exactly (else input // stride).
    """

    index: int
    reduction: int
    channels: int
    side: int | None = None


@dataclass(frozen=True)
class GridPlan:
    """Which taps become grid levels 16 and 32, and their shapes.

    Attributes:
        indices: the taps to request, level 16's first (one tap when ``pooled``).
        specs: ``{16: GridSpec, 32: GridSpec}``.
        pooled: level 32 is the 2x2 average pool of level 16 (single-scale models).
    """

    indices: tuple[int, ...]
    specs: dict[int, GridSpec]
    pooled: bool


def plan_grids(stages: Sequence[Stage], input_size: int, what: str) -> GridPlan:
    """The :class:`GridPlan` of a model with these taps at a square input of ``input_size``."""
    if not stages:
        raise ValueError(f"{what} reports no feature stages")
    reductions = sorted({s.reduction for s in stages})

    def side_of(stage: Stage) -> int:
        side = stage.side if stage.side is not None else input_size // stage.reduction
        if side < 2:
            raise ValueError(
                f"{what}: input {input_size} px gives a {side}x{side} map at stride "
                f"{stage.reduction}; at least 2x2 is needed"
            )
        return side

    if len(reductions) == 1:
        last = stages[-1]
        side = side_of(last)
        specs = {
            16: GridSpec(last.reduction, (side, side, last.channels)),
            32: GridSpec(2 * last.reduction, (side // 2, side // 2, last.channels)),
        }
        if side // 2 < 1:
            raise ValueError(f"{what}: a {side}x{side} token grid cannot be pooled 2x2")
        return GridPlan((last.index,), specs, pooled=True)
    picked: dict[int, Stage] = {}
    for level in GRID_LEVELS:
        at_level = [s for s in stages if s.reduction == level]
        if not at_level:
            raise ValueError(
                f"{what} has feature strides {reductions}: no stride-{level} stage for grid "
                f"level {level}"
            )
        picked[level] = at_level[-1]
    specs = {
        level: GridSpec(s.reduction, (side_of(s), side_of(s), s.channels))
        for level, s in picked.items()
    }
    return GridPlan((picked[16].index, picked[32].index), specs, pooled=False)


def channels_last(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> contiguous float32 ``(B, h, w, C)``."""
    return feature_map.permute(0, 2, 3, 1).float().contiguous()


class MultiScaleEncoder(Encoder):
    """An encoder whose subclass returns the global vector and the planned maps in one pass.

    Args:
        preset: the preset; ``options["normalize_global"]`` divides the global vector by its L2
            norm (what MedImageInsight's ``encode_image`` and the reference study did).
        weights_id: identity of the weights (store key).
        plan: the :class:`GridPlan`.
        global_dim: D of the global vector.
    """

    adapter_version = "1"

    def __init__(
        self,
        preset: EncoderPreset,
        weights_id: dict[str, Any],
        plan: GridPlan,
        global_dim: int,
    ) -> None:
        super().__init__()
        self.preset = preset
        self.weights_id = weights_id
        self.plan = plan
        self.grid_specs = dict(plan.specs)
        self.global_dim = int(global_dim)
        self.normalize_global = bool(preset.options.get("normalize_global", False))

    @abstractmethod
    def features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised ``(B, 3, S, S)`` -> ``(global (B, D), [maps (B, h, w, C)])``, the maps in
        the order of ``plan.indices``, channels-last."""

    def encode(self, pixels: torch.Tensor) -> Features:
        embedding, maps = self.features(pixels)
        if len(maps) != len(self.plan.indices):
            raise RuntimeError(f"expected {len(self.plan.indices)} feature maps, got {len(maps)}")
        grid16 = maps[0].float().contiguous()
        grid32 = pool_grid(grid16) if self.plan.pooled else maps[1].float().contiguous()
        batch = pixels.shape[0]
        for level, grid in ((16, grid16), (32, grid32)):
            want = (batch, *self.grid_specs[level].shape)
            if tuple(grid.shape) != want:
                raise RuntimeError(
                    f"grid level {level}: expected {want}, got {tuple(grid.shape)} "
                    f"(input {tuple(pixels.shape[-2:])})"
                )
        embedding = embedding.reshape(batch, -1).float()
        if embedding.shape[1] != self.global_dim:
            raise RuntimeError(
                f"expected a global vector of {self.global_dim}, got {embedding.shape[1]}"
            )
        if self.normalize_global:
            embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        return Features(embedding=embedding.contiguous(), grids={16: grid16, 32: grid32})
