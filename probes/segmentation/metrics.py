"""Segmentation metrics: per-image Dice and IoU from pixel counts, pooled Dice.

Everything is computed from per-image pixel counts (true positives, false positives, false
negatives), so predictions can be scored batch by batch and never held all at once.

Empty masks: when both the prediction and the truth of an image are empty, Dice and IoU are 0/0.
``both_empty="one"`` scores such an image 1 (a correct "nothing here", the usual convention for
SIIM-ACR), ``"exclude"`` leaves it out (NaN, skipped by the averages). An empty truth with a
non-empty prediction (or the reverse) always scores 0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "BothEmpty",
    "confusion_counts",
    "dice_iou",
    "dice_iou_from_counts",
    "pooled_dice",
    "segmentation_scores",
]

BothEmpty = Literal["one", "exclude"]


def confusion_counts(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-image ``(tp, fp, fn)`` pixel counts, each ``(n,)`` int64.

    Args:
        pred, true: ``(n, H, W)`` (or ``(H, W)`` for one image) masks, nonzero = foreground.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    true = np.asarray(true).astype(bool, copy=False)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    if pred.ndim == 2:
        pred, true = pred[None], true[None]
    flat_p, flat_t = pred.reshape(len(pred), -1), true.reshape(len(true), -1)
    tp = np.count_nonzero(flat_p & flat_t, axis=1).astype(np.int64)
    fp = np.count_nonzero(flat_p, axis=1) - tp
    fn = np.count_nonzero(flat_t, axis=1) - tp
    return tp, fp, fn


def dice_iou_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, both_empty: BothEmpty = "one"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice ``2tp / (2tp + fp + fn)`` and IoU ``tp / (tp + fp + fn)``, float64.

    Images with nothing predicted and nothing true get 1.0 (``both_empty="one"``) or NaN
    (``"exclude"``).
    """
    if both_empty not in ("one", "exclude"):
        raise ValueError(f"both_empty must be 'one' or 'exclude', got {both_empty!r}")
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    union = tp + fp + fn
    empty = union == 0
    fill = 1.0 if both_empty == "one" else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(empty, fill, 2 * tp / (2 * tp + fp + fn))
        iou = np.where(empty, fill, tp / union)
    return dice, iou


def segmentation_scores(
    tp: np.ndarray,
    fp: np.ndarray,
    fn: np.ndarray,
    mask_area: np.ndarray,
    pixels: float,
    both_empty: BothEmpty = "one",
) -> dict[str, np.ndarray]:
    """The per-image columns of a segmentation predictions table: ``dice``, ``iou``, ``tp``,
    ``fp``, ``fn``, ``mask_area`` (true foreground fraction) and ``pred_area`` (predicted
    foreground fraction, ``(tp + fp) / pixels``)."""
    tp, fp, fn = (np.asarray(v, dtype=np.int64) for v in (tp, fp, fn))
    dice, iou = dice_iou_from_counts(tp, fp, fn, both_empty)
    return {
        "dice": dice,
        "iou": iou,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "mask_area": mask_area,
        "pred_area": (tp + fp) / pixels,
    }


def dice_iou(
    pred: np.ndarray, true: np.ndarray, both_empty: BothEmpty = "one"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of ``(n, H, W)`` masks (see :func:`dice_iou_from_counts`)."""
    return dice_iou_from_counts(*confusion_counts(pred, true), both_empty=both_empty)


def pooled_dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """Aggregate Dice: all images' pixels pooled, ``2 sum(tp) / (2 sum(tp) + sum(fp) + sum(fn))``.

    Large masks weigh more; empty images add nothing. NaN when every image is empty on both
    sides.
    """
    tp, fp, fn = (float(np.sum(v)) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else float("nan")
