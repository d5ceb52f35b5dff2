"""Patient-clustered bootstrap of AUROC, AUPRC, sensitivity and specificity over pooled rows.

Each resample draws whole patients with replacement; a row's weight is the number of times its
patient was drawn, and every metric is computed from those weights at once, for a block of
resamples. Hand-rolled rather than calling scikit-learn per resample (about 3 ms a call, so
minutes for a report) or :func:`probes.metrics.bootstrap_ci` (which resamples images, not
patients); ``tests/test_probes_report.py`` checks it against scikit-learn with sample weights.
Used by the report's pooled CIs and by :func:`probes.stats.paired_auroc_bootstrap`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["METRICS", "clustered_ci", "patient_draws", "weighted_metrics"]

METRICS = ("auroc", "auprc", "sens_at_0.5", "spec_at_0.5")
#: Resample x row cells held at once (~8 bytes each, a few arrays of them).
BLOCK_CELLS = 2_000_000


def weighted_metrics(
    truth: np.ndarray, score: np.ndarray, weights: np.ndarray, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """AUROC, AUPRC (average precision, scikit-learn's step definition) and sensitivity /
    specificity at ``score >= threshold``, for each row of ``weights``.

    Args:
        truth: ``(n,)`` 0/1. score: ``(n,)``. weights: ``(B, n)`` non-negative row weights
            (bootstrap counts).

    Returns ``{metric: (B,)}``; NaN where a weighting leaves no positive (or no negative).
    """
    y = np.asarray(truth).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(score, kind="stable")
    y, score, weights = y[order], score[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(score) != 0])  # tie groups, ascending score
    pos = np.add.reduceat(weights * y, starts, axis=1)  # (B, G) weighted positives per group
    neg = np.add.reduceat(weights * ~y, starts, axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    called = score[starts] >= threshold  # the rule is constant within a tie group
    with np.errstate(invalid="ignore", divide="ignore"):
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
        auroc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        tp = np.cumsum(pos[:, ::-1], axis=1)  # descending thresholds
        fp = np.cumsum(neg[:, ::-1], axis=1)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        auprc = (pos[:, ::-1] * precision).sum(axis=1) / n_pos
        sensitivity = pos[:, called].sum(axis=1) / n_pos
        specificity = neg[:, ~called].sum(axis=1) / n_neg
    both = (n_pos > 0) & (n_neg > 0)
    return {
        "auroc": np.where(both, auroc, np.nan),
        "auprc": np.where(both, auprc, np.nan),
        "sens_at_0.5": np.where(n_pos > 0, sensitivity, np.nan),
        "spec_at_0.5": np.where(n_neg > 0, specificity, np.nan),
    }


def clustered_ci(
    truth: np.ndarray,
    score: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 5656,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of :data:`METRICS`, resampling whole ``groups`` (patients).

    Args:
        truth, score, groups: ``(n,)`` pooled test rows and their patient ids.

    Returns ``{metric: (low, high)}``; NaN when no resample defines the metric. Deterministic
    for a seed.
    """
    codes, uniques = pd.factorize(np.asarray(groups))
    n, c = len(codes), len(uniques)
    if n == 0 or n_boot < 1:
        return dict.fromkeys(METRICS, (float("nan"), float("nan")))
    parts: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for weights in patient_draws(codes, c, n_boot, seed):
        for metric, values in weighted_metrics(truth, score, weights).items():
            parts[metric].append(values)
    alpha = (1.0 - level) / 2.0
    out = {}
    for metric in METRICS:
        values = np.concatenate(parts[metric])
        values = values[~np.isnan(values)]
        if values.size == 0:
            out[metric] = (float("nan"), float("nan"))
        else:
            low, high = np.quantile(values, [alpha, 1.0 - alpha])
            out[metric] = (float(low), float(high))
    return out


def patient_draws(codes: np.ndarray, n_groups: int, n_boot: int, seed: int):
    """Blocks of bootstrap row weights ``(b, n)``: each resample draws ``n_groups`` whole groups
    (patients) with replacement and a row's weight is how often its group was drawn.

    Args:
        codes: ``(n,)`` group code of every row, ``0 .. n_groups - 1``.
    """
    rng = np.random.default_rng(seed)
    n = len(codes)
    per_block = max(1, BLOCK_CELLS // max(n, n_groups))
    for b in np.diff(np.r_[np.arange(0, n_boot, per_block), n_boot]):
        drawn = rng.integers(0, n_groups, size=(int(b), n_groups))
        drawn += n_groups * np.arange(int(b))[:, None]
        counts = np.bincount(drawn.ravel(), minlength=int(b) * n_groups)
        yield counts.reshape(int(b), n_groups)[:, codes]
