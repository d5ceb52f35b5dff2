"""Classification metrics from per-row predictions, fold summaries and bootstrap CIs.

All functions take truths ``y`` in {0, 1} and scores (probabilities, or any monotone score for
the rank metrics) of the same rows. Thresholded metrics use probabilities: 0.5, or the
threshold that maximises Youden's J on the round's validation rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "auprc",
    "auroc",
    "bootstrap_ci",
    "classification_metrics",
    "format_mean_sd",
    "format_median_range",
    "sensitivity_specificity",
    "summarize",
    "youden_threshold",
]

#: Resample x row cells processed at once by :func:`bootstrap_ci` (memory ~ 40 bytes each).
BOOT_BLOCK = 2_000_000


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


def bootstrap_ci(
    y: np.ndarray,
    score: np.ndarray,
    metric: str = "auroc",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of AUROC or AUPRC over images, resampled within this set.

    Vectorised: each resample is a vector of counts over the rows (sorted by score once), and
    the metric of every resample is computed at once from per-tie-group count sums. Resamples
    with one class only are dropped. Deterministic for a seed.

    Returns ``(low, high)``; NaN when fewer than two classes are present.
    """
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if metric not in ("auroc", "auprc"):
        raise ValueError(f"metric must be 'auroc' or 'auprc', got {metric!r}")
    if len(np.unique(y)) < 2 or n_boot < 1:
        return float("nan"), float("nan")
    n = len(y)
    order = np.argsort(score, kind="stable")
    y, score = y[order], score[order]
    group = np.concatenate([[0], np.cumsum(np.diff(score) != 0)])  # tie groups, ascending
    rng = np.random.default_rng(seed)
    per_block = max(1, BOOT_BLOCK // n)  # resamples per block: bounds memory to ~BOOT_BLOCK
    values = np.concatenate(
        [
            _resampled_metric(rng.integers(0, n, size=(b, n)), y, group, metric)
            for b in np.diff(np.r_[np.arange(0, n_boot, per_block), n_boot])
        ]
    )
    values = values[~np.isnan(values)]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _resampled_metric(draws: np.ndarray, y: np.ndarray, group: np.ndarray, metric: str):
    """Metric of each resample; ``draws`` (B, n) row indices into score-sorted rows."""
    b, n = draws.shape
    flat = (draws + n * np.arange(b)[:, None]).ravel()
    counts = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
    pos = _group_sums(counts * y, group)  # (B, G) resampled positives per tie group
    neg = _group_sums(counts * ~y, group)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "auroc":
            below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
            values = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        else:  # average precision over descending thresholds
            tp = np.cumsum(pos[:, ::-1], axis=1)
            fp = np.cumsum(neg[:, ::-1], axis=1)
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            values = (pos[:, ::-1] * precision).sum(axis=1) / n_pos
    values[(n_pos == 0) | (n_neg == 0)] = np.nan
    return values


def _group_sums(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Sum columns of ``values`` (B, n) within consecutive groups -> (B, G)."""
    starts = np.flatnonzero(np.diff(group, prepend=-1))
    return np.add.reduceat(values, starts, axis=1)


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
