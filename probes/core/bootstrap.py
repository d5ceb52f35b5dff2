"""The one bootstrap: percentile CIs resampling whole patients, vectorised.

Each resample draws whole patients with replacement; a row's weight is the number of times its
patient was drawn, and the statistic of a block of resamples is computed at once from those
weights. With one image per patient this is the ordinary image bootstrap. Every CI in the
probes comes from here: results.csv (per round), the report (pooled), subgroups, shortcuts,
the paired AUROC bootstrap. Patient codes are taken in sorted order, so a CI does not depend on
the order of the rows.

Hand-rolled rather than calling scikit-learn per resample (about 3 ms a call, so minutes for a
report, and no patient clustering in ``scipy.stats.bootstrap``); ``tests/test_probes_report.py``
checks :func:`weighted_metrics` against scikit-learn with sample weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "CI_METHOD",
    "METRICS",
    "bootstrap_ci",
    "bootstrap_distribution",
    "clustered_ci",
    "clustered_mean_ci",
    "patient_codes",
    "patient_draws",
    "weighted_mean",
    "weighted_metrics",
]

#: What every CI in results tables and reports is, in words (written beside them).
CI_METHOD = "95% percentile bootstrap over patients"

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


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 5656,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic``, resampling whole ``groups`` (patients).

    Args:
        statistic: ``weights (b, n) -> (b,)``, the statistic of each weighting of the rows
            (NaN where a resample leaves it undefined; such resamples are dropped).
        groups: ``(n,)`` patient id of every row.

    Returns ``(low, high)``; NaN when no resample defines the statistic. Deterministic for a
    seed and independent of the row order.
    """
    if len(groups) == 0 or n_boot < 1:
        return float("nan"), float("nan")
    return _percentiles(bootstrap_distribution(statistic, groups, n_boot=n_boot, seed=seed), level)


def bootstrap_distribution(
    statistic: Callable[[np.ndarray], np.ndarray],
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 5656,
) -> np.ndarray:
    """``(n_boot,)`` values of ``statistic`` over resamples of whole ``groups`` (patients), in
    the order drawn (NaN where a resample leaves it undefined): what :func:`bootstrap_ci` takes
    percentiles of, and what a paired test reads its p-value from."""
    codes, n_groups = patient_codes(groups)
    return np.concatenate([statistic(w) for w in patient_draws(codes, n_groups, n_boot, seed)])


def clustered_ci(
    truth: np.ndarray,
    score: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 5656,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of :data:`METRICS` (AUROC, AUPRC, sensitivity and specificity
    at 0.5), resampling whole ``groups`` (patients).

    Args:
        truth, score, groups: ``(n,)`` test rows and their patient ids.

    Returns ``{metric: (low, high)}``; NaN when no resample defines the metric. Deterministic
    for a seed.
    """
    codes, n_groups = patient_codes(groups)
    if len(codes) == 0 or n_boot < 1:
        return dict.fromkeys(METRICS, (float("nan"), float("nan")))
    parts: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for weights in patient_draws(codes, n_groups, n_boot, seed):
        for metric, values in weighted_metrics(truth, score, weights).items():
            parts[metric].append(values)
    return {m: _percentiles(np.concatenate(parts[m]), level) for m in METRICS}


def clustered_mean_ci(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 5656,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of a per-row value (Dice, a 0/1 hit...), resampling
    whole patients; NaN rows (excluded images) are left out of every mean."""
    values = np.asarray(values, dtype=np.float64)
    return bootstrap_ci(
        lambda w: weighted_mean(values, w), groups, n_boot=n_boot, seed=seed, level=level
    )


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(b,)`` weighted means of ``values`` ``(n,)`` under each row of ``weights`` ``(b, n)``,
    NaN values left out; NaN where a weighting keeps no defined value."""
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    w = weights[:, defined]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ values[defined]) / w.sum(axis=1)


def patient_codes(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """``(codes, n_groups)``: each row's patient as ``0 .. n_groups - 1`` in sorted id order."""
    uniques, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return codes.reshape(-1), len(uniques)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


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
