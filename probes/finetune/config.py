"""Settings of a fine-tune, and the encoder learning rates each encoder family starts from.

The reference study fine-tuned with the probes' heads and two AdamW parameter groups: encoder
1e-7, head 1e-4, weight decay 1e-2, gradient norm clipped to 1.0, early stopping on the
validation loss (patience 5, min delta 1e-4), the best validation epoch kept for test, bf16
autocast. Its SegFormer baseline trained its encoder faster: 1e-6 for classification, 1e-5 for
segmentation. Those are the defaults here; ``encoder_lr`` overrides them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Task = Literal["classification", "segmentation"]
TASKS = ("classification", "segmentation")
SCHEDULES = ("constant", "cosine")

#: The reference study's encoder learning rate for the foundation models, per task.
REFERENCE_ENCODER_LR: Mapping[str, float] = {"classification": 1e-7, "segmentation": 1e-7}
#: Encoder family (``EncoderPreset.family``) -> its own encoder learning rate per task.
FAMILY_ENCODER_LR: Mapping[str, Mapping[str, float]] = {
    "hf-segformer": {"classification": 1e-6, "segmentation": 1e-5},
}
#: Encoder family -> its default segmentation head; every other family gets the probe's
#: ``linear`` head. SegFormer's baseline in the reference used its own decode head.
FAMILY_SEGMENTATION_HEAD: Mapping[str, str] = {"hf-segformer": "segformer"}


def default_encoder_lr(family: str, task: Task) -> float:
    """The encoder learning rate a fine-tune of ``family`` uses unless told otherwise."""
    return FAMILY_ENCODER_LR.get(family, REFERENCE_ENCODER_LR)[task]


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that shapes the numbers of a fine-tune (recorded in ``run.json`` and in the
    ``params`` column of every prediction row).

    Attributes:
        task: ``classification`` (linear head on the global vector, BCE-with-logits) or
            ``segmentation`` (1x1 convolution on a patch grid + bilinear upsampling,
            class-weighted cross-entropy).
        encoder_lr: AdamW learning rate of the encoder; ``None`` = the family default
            (:func:`default_encoder_lr`). ``0`` freezes the encoder (a probe trained end to end).
        head_lr: AdamW learning rate of the head.
        weight_decay: AdamW weight decay of both groups.
        layer_decay: layer-wise learning-rate decay: encoder depth ``d`` of ``D`` trains at
            ``encoder_lr * layer_decay ** (D - d)``; ``None`` = one encoder group.
        batch_size: images per optimiser step (per process under DDP).
        max_epochs: most passes over the training rows.
        patience, min_delta: early stopping on the validation loss (Lightning's semantics).
        grad_clip: gradient norm clip over all trained parameters (``0`` = none).
        schedule: ``constant`` (the reference) or ``cosine`` (to 0 over ``max_epochs``),
            stepped once per epoch, after ``warmup_epochs`` of linear warm-up.
        amp: bf16 autocast, on CUDA only.
        grad_checkpointing: recompute encoder activations in the backward pass.
        augment: random small affine transform and brightness/contrast jitter of the training
            images (masks follow the geometry). Off by default, as in the reference.
        seg_head: segmentation: ``linear`` (the probe's 1x1 convolution + upsampling on
            ``grid``) or ``segformer`` (SegFormer's decode head, SegFormer encoders only);
            ``None`` = the family default (``segformer`` for SegFormer, else ``linear``).
        grid: segmentation, linear head: ``grid16``, ``grid32`` or ``grid16+grid32``.
        mask_size: segmentation: training/scoring resolution ``(h, w)``; ``None`` = 4x grid16.
        class_weights: segmentation: cross-entropy class weights (reference ``(1, 5)`` for
            pneumothorax); ``None`` = equal.
        dice_weight: segmentation: weight of a soft-Dice term (0 = off).
        align_corners: segmentation: bilinear upsampling convention (reference: True).
        seed: initialisation, data order, dropout and augmentation.
    """

    task: Task = "classification"
    encoder_lr: float | None = None
    head_lr: float = 1e-4
    weight_decay: float = 1e-2
    layer_decay: float | None = None
    batch_size: int = 16
    max_epochs: int = 50
    patience: int = 5
    min_delta: float = 1e-4
    grad_clip: float = 1.0
    schedule: str = "constant"
    warmup_epochs: int = 0
    amp: bool = True
    grad_checkpointing: bool = False
    augment: bool = False
    seg_head: str | None = None
    grid: str = "grid16"
    mask_size: tuple[int, int] | None = None
    class_weights: tuple[float, ...] | None = None
    dice_weight: float = 0.0
    align_corners: bool = True
    seed: int = 5656

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("head_lr", "weight_decay", "min_delta", "grad_clip", "dice_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.encoder_lr is not None and self.encoder_lr < 0:
            raise ValueError(f"encoder_lr must be >= 0, got {self.encoder_lr}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        for name in ("batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    def resolved(self, family: str) -> FinetuneConfig:
        """This config with ``encoder_lr`` and ``seg_head`` filled in from the encoder
        family's defaults."""
        encoder_lr = self.encoder_lr
        if encoder_lr is None:
            encoder_lr = default_encoder_lr(family, self.task)
        seg_head = self.seg_head or FAMILY_SEGMENTATION_HEAD.get(family, "linear")
        return dataclasses.replace(self, encoder_lr=encoder_lr, seg_head=seg_head)

    def get_params(self) -> dict[str, Any]:
        """JSON-able settings (scikit-learn's name, so :func:`probes.cli.common.write_run` records
        them as a probe's parameters)."""
        params = dataclasses.asdict(self)
        for name in ("mask_size", "class_weights"):
            if params[name] is not None:
                params[name] = list(params[name])
        return params
