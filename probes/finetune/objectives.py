"""What each task trains and scores: the loss of a batch, the pooled validation loss, the
per-row outputs predictions are made of, and the validation metric shown while training.

- classification: BCE-with-logits (the reference linear probe's loss), per-row ``score`` =
  sigmoid of the logit per label; metric: validation AUROC (mean over labels).
- segmentation: the segmentation probe's loss (:mod:`probes.segmentation.loss`: class-weighted
  cross-entropy, optional soft Dice), per-row pixel counts ``tp, fp, fn`` of the argmax mask;
  metric: mean per-image Dice (an image empty in truth and prediction counts 1).

Validation losses are pooled over the whole set (sums, combined at the end, summed across
processes), so they do not depend on the batch size or the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from probes.core.metrics import auroc
from probes.segmentation.loss import combine_loss, loss_parts, loss_targets
from probes.segmentation.metrics import confusion_counts, dice_iou_from_counts


class ClassificationObjective:
    """Binary labels ``(b, k)`` against logits ``(b, k)``."""

    metric_name = "auroc"

    def batch_loss(self, out: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        # non_blocking: a blocking host-to-device copy would wait for the GPU every step.
        y = torch.as_tensor(target, dtype=torch.float32).to(out.device, non_blocking=True)
        return F.binary_cross_entropy_with_logits(out.float(), y)

    def eval_parts(
        self, out: torch.Tensor, target: np.ndarray, keep_masks: bool = False
    ) -> tuple[list[float], dict[str, np.ndarray]]:
        """(loss sums ``[BCE sum, terms]``, per-row ``{"score": (b, k) float64}``);
        ``keep_masks`` is for segmentation and ignored here."""
        y = torch.as_tensor(target, dtype=torch.float32, device=out.device)
        logits = out.float()
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        score = torch.sigmoid(logits.double()).cpu().numpy()
        return [float(bce), float(y.numel())], {"score": score}

    def eval_loss(self, sums: Sequence[float]) -> float:
        return sums[0] / sums[1] if sums[1] else float("nan")

    def metric(self, per_row: dict[str, np.ndarray], target: np.ndarray) -> float:
        aurocs = [auroc(target[:, j], per_row["score"][:, j]) for j in range(target.shape[1])]
        return float(np.nanmean(aurocs)) if not np.all(np.isnan(aurocs)) else float("nan")


class SegmentationObjective:
    """Masks ``(b, H, W)`` (class labels) against scores ``(b, 1 | K, H, W)``.

    Args:
        n_classes: classes of the masks (2: background and foreground).
        class_weights: cross-entropy weights, ``None`` = equal.
        dice_weight: weight of the soft-Dice term.
    """

    metric_name = "dice"

    def __init__(
        self, n_classes: int, class_weights: Sequence[float] | None, dice_weight: float
    ) -> None:
        self.n_classes = n_classes
        self.class_weights = None if class_weights is None else tuple(class_weights)
        weights = self.class_weights or (1.0,) * n_classes
        if len(weights) != n_classes:
            raise ValueError(f"class_weights has {len(weights)} entries for {n_classes} classes")
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.dice_weight = dice_weight

    def _parts(self, out: torch.Tensor, target: np.ndarray):
        targets = loss_targets(np.asarray(target), self.n_classes, self.class_weights)
        targets = {k: v.to(out.device, non_blocking=True) for k, v in targets.items()}
        nll, inter, denom = loss_parts(
            out, targets, self.n_classes, self.class_weights, self.dice_weight
        )
        wsum = targets["counts"] @ self.weights.to(out.device, non_blocking=True)
        return nll, wsum, inter, denom

    def batch_loss(self, out: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        return combine_loss(*self._parts(out, target), self.dice_weight)

    def eval_parts(
        self, out: torch.Tensor, target: np.ndarray, keep_masks: bool = False
    ) -> tuple[list[float], dict[str, np.ndarray]]:
        """(loss sums ``[nll, weight, Dice intersections..., Dice denominators...]``, per-row
        ``{"tp", "fp", "fn"}`` pixel counts of the foreground (labels > 0), and with
        ``keep_masks`` ``"pred_rle"``, each predicted mask as SIIM RLE at the mask size)."""
        nll, wsum, inter, denom = self._parts(out, target)
        sums = [float(nll), float(wsum)]
        if self.dice_weight:
            sums += inter.tolist() + denom.tolist()
        labels = out[:, 0] > 0 if out.shape[1] == 1 else out.argmax(1) > 0
        predicted = labels.cpu().numpy()
        tp, fp, fn = confusion_counts(predicted, np.asarray(target) > 0)
        per_row = {"tp": tp, "fp": fp, "fn": fn}
        if keep_masks:
            from embedcache.intake.masks import siim_rle_encode

            per_row["pred_rle"] = np.array([siim_rle_encode(m) for m in predicted], dtype=object)
        return sums, per_row

    def eval_loss(self, sums: Sequence[float]) -> float:
        if not sums[1]:
            return float("nan")
        inter = denom = 0.0
        if self.dice_weight:
            k = (len(sums) - 2) // 2
            inter, denom = torch.tensor(sums[2 : 2 + k]), torch.tensor(sums[2 + k :])
        loss = combine_loss(
            torch.tensor(sums[0]), torch.tensor(sums[1]), inter, denom, self.dice_weight
        )
        return float(loss)

    def metric(self, per_row: dict[str, np.ndarray], target: np.ndarray) -> float:
        dice, _ = dice_iou_from_counts(per_row["tp"], per_row["fp"], per_row["fn"], "one")
        return float(np.nanmean(dice)) if len(dice) else float("nan")
