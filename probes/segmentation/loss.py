"""The segmentation probe's loss: class-weighted cross-entropy with an optional soft-Dice term.

Targets are prepared once per minibatch in the reading thread (:func:`loss_targets`); the loss is
accumulated as parts (weighted NLL, Dice intersections and denominators) so that a validation
pass over many minibatches gives exactly the loss of the whole set (:func:`combine_loss`).

With two classes the softmax depends only on the logit difference ``d = z1 - z0``: the loss is
``w_y * softplus((1 - 2y) d)``, the numbers of ``F.cross_entropy`` on the two logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(x))`` as ``max(x, 0) - log(sigmoid(|x|))``: exact to float32 rounding,
    several times faster on CPU than ``F.softplus``/``log1p(exp(-|x|))``, whose ``exp`` of
    large negative values produces denormals (measured 6 ms vs 1.6 ms for 32 x 128 x 128)."""
    return x.clamp(min=0) - torch.log(torch.sigmoid(x.abs()))


def loss_targets(
    labels: np.ndarray,
    n_classes: int,
    class_weights: Sequence[float] | None,
    compact: bool = False,
) -> dict[str, torch.Tensor]:
    """Loss inputs from ``(b, H, W)`` labels: per-class pixel counts (the weighted mean's
    denominator) and, for two classes, the sign ``1 - 2y`` and the class weight of every pixel;
    else int64 labels.

    With ``compact`` (two classes; what the fused CPU step takes), the labels themselves as a
    uint8 ``mask`` (no copy of bool labels) and the two ``class_weights`` instead of sign and
    weight: at 512 x 512 the two float32 maps cost more than the step's own loss (issue 12)."""
    if labels.dtype == bool:
        labels = np.ascontiguousarray(labels).view(np.uint8)
    if n_classes == 2:
        if labels.size and (labels.min() < 0 or labels.max() > 1):
            raise ValueError(f"mask labels outside 0..{n_classes - 1}")
        positives = int(np.count_nonzero(labels))
        counts = np.array([labels.size - positives, positives], dtype=np.float32)
        w0, w1 = (float(v) for v in (class_weights or (1.0, 1.0)))
        if compact:
            mask = np.ascontiguousarray(labels, dtype=np.uint8)
            return {
                "counts": torch.from_numpy(counts),
                "mask": torch.from_numpy(mask),
                "class_weights": torch.tensor([w0, w1]),
            }
        # Arithmetic, not a lookup table (weights[labels] is 10x slower): 0.2 ms a minibatch.
        y = labels.astype(np.float32)
        return {
            "counts": torch.from_numpy(counts),
            "sign": torch.from_numpy(1 - 2 * y),
            "weight": torch.from_numpy(y * (w1 - w0) + w0),
        }
    counts = np.bincount(labels.reshape(-1), minlength=n_classes)
    if len(counts) > n_classes or labels.min(initial=0) < 0:
        raise ValueError(f"mask labels outside 0..{n_classes - 1}")
    return {
        "counts": torch.from_numpy(counts.astype(np.float32)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
    }


def loss_parts(
    scores: torch.Tensor,
    targets: dict[str, torch.Tensor],
    n_classes: int,
    class_weights: Sequence[float] | None,
    dice_weight: float,
):
    """(class-weighted NLL summed over pixels, soft-Dice intersections, Dice denominators); the
    Dice parts are ``None`` without a Dice term.

    Args:
        scores: ``(B, 1, H, W)`` logit differences (two classes) or ``(B, K, H, W)`` logits.
        targets: from :func:`loss_targets`.
    """
    if "sign" in targets:
        d = scores[:, 0]
        nll = (softplus(targets["sign"] * d) * targets["weight"]).sum()
        if not dice_weight:
            return nll, None, None
        prob, onehot = torch.sigmoid(d)[:, None], (1 - targets["sign"])[:, None] / 2
    else:
        weights = torch.as_tensor(class_weights or [1.0] * n_classes, device=scores.device)
        nll = F.cross_entropy(scores, targets["labels"], weight=weights.float(), reduction="sum")
        if not dice_weight:
            return nll, None, None
        prob = scores.softmax(1)[:, 1:]
        onehot = F.one_hot(targets["labels"], n_classes).permute(0, 3, 1, 2)[:, 1:]
        onehot = onehot.to(prob.dtype)
    return nll, (prob * onehot).sum((0, 2, 3)), (prob + onehot).sum((0, 2, 3))


def combine_loss(nll, total_weight, inter, denom, dice_weight: float) -> torch.Tensor:
    """Weighted mean NLL (``nll / total_weight``) plus ``dice_weight * (1 - mean soft Dice)``."""
    loss = nll / total_weight.clamp_min(1e-12)
    if dice_weight:
        loss = loss + dice_weight * (1 - ((2 * inter + 1) / (denom + 1)).mean())
    return loss
