"""Metrics from per-row predictions: AUROC, AUPRC, sensitivity/specificity, fold summaries.

All functions take truths ``y`` in {0, 1} and scores (probabilities, or any monotone score for
the rank metrics) of the same rows. Thresholded metrics use probabilities: 0.5, or the
threshold that maximises Youden's J on the round's validation rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "auprc",
    "auroc",
    "classification_metrics",
    "format_mean_sd",
    "format_median_range",
    "segmentation_summary",
    "sensitivity_specificity",
    "summarize",
    "summarize_folds",
    "youden_threshold",
]


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); NaN when only one class is present."""
    y = np.asarray(y)
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def auprc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (scikit-learn's AUPRC); NaN without positives."""
    y = np.asarray(y)
    return float(average_precision_score(y, score)) if y.any() else float("nan")


def sensitivity_specificity(
    y: np.ndarray, prob: np.ndarray, threshold: float = 0.5
) -> tuple[float, float]:
    """``(sensitivity, specificity)`` of the rule ``prob >= threshold``."""
    y = np.asarray(y).astype(bool)
    positive = np.asarray(prob) >= threshold
    sens = float(positive[y].mean()) if y.any() else float("nan")
    spec = float((~positive[~y]).mean()) if (~y).any() else float("nan")
    return sens, spec


def youden_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (first of ties: the highest).

    Choose it on validation rows and apply it to test rows.
    """
    fpr, tpr, thresholds = roc_curve(y, prob)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def classification_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    y_val: np.ndarray | None = None,
    prob_val: np.ndarray | None = None,
) -> dict[str, float]:
    """AUROC, AUPRC, prevalence and sensitivity/specificity at 0.5 and at the Youden threshold.

    The Youden threshold comes from ``(y_val, prob_val)`` when given (else NaN columns).
    """
    y = np.asarray(y)
    sens, spec = sensitivity_specificity(y, prob, 0.5)
    out = {
        "n": int(len(y)),
        "n_pos": int(np.sum(y)),
        "auroc": auroc(y, prob),
        "auprc": auprc(y, prob),
        "sens_at_0.5": sens,
        "spec_at_0.5": spec,
        "youden_threshold": float("nan"),
        "sens_at_youden": float("nan"),
        "spec_at_youden": float("nan"),
    }
    if y_val is not None and len(np.unique(y_val)) == 2:
        threshold = youden_threshold(y_val, prob_val)
        sens, spec = sensitivity_specificity(y, prob, threshold)
        out.update(youden_threshold=threshold, sens_at_youden=sens, spec_at_youden=spec)
    return out


def summarize(values) -> dict[str, float]:
    """Mean, sd (ddof=1), median, min and max of fold scores (NaNs ignored)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return dict.fromkeys(("mean", "sd", "median", "min", "max"), float("nan"))
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def format_median_range(values, digits: int = 3) -> str:
    """``median [min, max]``, the reference study's style."""
    s = summarize(values)
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def format_mean_sd(values, digits: int = 3) -> str:
    """``mean ± sd``."""
    s = summarize(values)
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def summarize_folds(
    rows: pd.DataFrame,
    metric: str = "dice",
    *,
    fold: str = "fold",
    by: Sequence[str] = (),
) -> pd.DataFrame:
    """Per-fold means of a per-image metric, and their summary across folds.

    Args:
        rows: per-image results (one row per test image), with ``fold`` and ``metric`` columns.
        by: extra grouping columns (encoder key, grid, ...): one summary row per combination.

    Returns:
        One row per ``by`` group: ``n_folds``, ``n_images``, ``median``, ``min``, ``max`` (the
        reference study's "median [min-max]"), ``mean``, ``sd`` (ddof 1) of the fold scores,
        and ``folds``, the fold scores in fold order.
    """
    keys = list(by)
    per_fold = rows.groupby([*keys, fold], sort=True)[metric].agg(["mean", "count"]).reset_index()
    out = []
    for group_key, part in per_fold.groupby(keys, sort=True) if keys else [((), per_fold)]:
        scores = part["mean"].to_numpy(dtype=float)
        record = dict(
            zip(keys, group_key if isinstance(group_key, tuple) else (group_key,), strict=True)
        )
        record.update(
            n_folds=len(scores),
            n_images=int(part["count"].sum()),
            median=float(np.nanmedian(scores)),
            min=float(np.nanmin(scores)),
            max=float(np.nanmax(scores)),
            mean=float(np.nanmean(scores)),
            sd=float(np.nanstd(scores, ddof=1)) if len(scores) > 1 else float("nan"),
            folds=[round(float(s), 6) for s in scores],
        )
        out.append(record)
    return pd.DataFrame(out)


def segmentation_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """The summary of a segmentation run: Dice and IoU per round (test images) summarised over
    rounds, one row per metric (:func:`summarize_folds`); with budgets, one row per metric x
    budget, over its rounds x draws."""
    test = predictions[predictions["split"] == "test"]
    if "budget" in test.columns:
        test = test.assign(fold_draw=test["round"].astype(str) + "/" + test["draw"].astype(str))
        return pd.concat(
            [
                summarize_folds(test, m, fold="fold_draw", by=["budget"]).assign(metric=m)
                for m in ("dice", "iou")
            ],
            ignore_index=True,
        )
    return pd.concat(
        [summarize_folds(test, m, fold="round").assign(metric=m) for m in ("dice", "iou")],
        ignore_index=True,
    )
