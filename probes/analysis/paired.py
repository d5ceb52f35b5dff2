"""Per-image paired tests of two sets of predictions on the same images: DeLong's test of two
correlated AUROCs, a paired AUROC bootstrap over patients, and paired bootstrap / sign-flip
permutation tests of a per-image metric such as Dice. :func:`probes.analysis.stats.paired_image_tests`
runs them on two runs' predictions tables; this module works on arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as ss

__all__ = [
    "DeLongResult",
    "PairedResult",
    "delong_test",
    "delong_variance",
    "paired_auroc_bootstrap",
    "paired_bootstrap",
    "paired_permutation",
]

#: Resample x cluster cells drawn at once by the bootstrap and permutation tests (~8 bytes each).
RESAMPLE_BLOCK = 2_000_000


# --- per image: DeLong --------------------------------------------------------------------


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong test of AUROC a vs b; ``difference = auroc_a - auroc_b``, ``se`` its
    standard error, ``[ci_low, ci_high]`` its normal (1 - alpha) interval."""

    auroc_a: float
    auroc_b: float
    difference: float
    se: float
    z: float
    pvalue: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int


def _delong_covariance(truth, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """AUROCs ``(k,)`` and their DeLong covariance ``(k, k)`` for ``scores`` ``(k, n)``.

    Sun & Xu (2014): the structural components come from midranks (O(n log n)) instead of the
    (n_pos x n_neg) kernel matrix of DeLong et al. (1988): V10_i = (rank of positive i among
    all - its rank among positives) / n_neg, V01_j = 1 - (rank of negative j among all - its
    rank among negatives) / n_pos. Covariances use ddof = 1, as DeLong et al.
    """
    truth = np.asarray(truth)
    if truth.ndim != 1 or truth.shape[0] != scores.shape[1]:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape[1:]} differ in length")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError(f"truth must be 0/1, got values {np.unique(truth)[:5].tolist()}")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} NaN scores")
    positive = truth.astype(bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs >= 2 positives and >= 2 negatives, got {m} and {n}")
    x, y = scores[:, positive], scores[:, ~positive]
    tx = ss.rankdata(x, axis=1)
    ty = ss.rankdata(y, axis=1)
    tz = ss.rankdata(np.concatenate([x, y], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auc, cov, m, n


def delong_variance(truth, score) -> tuple[float, float]:
    """``(auroc, variance)`` of one score's AUROC by DeLong's method.

    Args:
        truth: ``(n,)`` 0/1 labels (>= 2 of each). score: ``(n,)`` scores, higher = positive.
    """
    auc, cov, _, _ = _delong_covariance(truth, np.asarray(score, np.float64)[None])
    return float(auc[0]), float(cov[0, 0])


def delong_test(truth, score_a, score_b, *, alpha: float = 0.05) -> DeLongResult:
    """Paired DeLong test of two correlated AUROCs on the same images (two-sided).

    Args:
        truth: ``(n,)`` 0/1 labels; score_a, score_b: ``(n,)`` scores of the same images.

    When the difference has zero variance (identical rankings) ``z`` is 0 and p = 1 if the
    AUROCs are equal.
    """
    scores = np.stack([np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)])
    auc, cov, m, n = _delong_covariance(truth, scores)
    difference = float(auc[0] - auc[1])
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    if se > 0:
        z = difference / se
    else:
        z = 0.0 if difference == 0 else float(np.sign(difference) * np.inf)
    half = ss.norm.ppf(1 - alpha / 2) * se
    return DeLongResult(
        auroc_a=float(auc[0]),
        auroc_b=float(auc[1]),
        difference=difference,
        se=se,
        z=float(z),
        pvalue=float(2 * ss.norm.sf(abs(z))),
        ci_low=float(difference - half),
        ci_high=float(difference + half),
        n_positive=m,
        n_negative=n,
    )


# --- per image: bootstrap and permutation of a mean difference ----------------------------


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of a per-image statistic: ``difference = estimate_a - estimate_b``,
    its (1 - alpha) interval, a two-sided p-value, ``n`` images used and the ``method``."""

    statistic: str
    estimate_a: float
    estimate_b: float
    difference: float
    ci_low: float
    ci_high: float
    pvalue: float
    n: int
    method: str


def _paired(values_a, values_b, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop pairs with a NaN; return ``a, b`` and cluster codes (one per image if no groups)."""
    a, b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"values_a {a.shape} and values_b {b.shape} must be equal 1-d shapes")
    keep = ~(np.isnan(a) | np.isnan(b))
    if not keep.any():
        raise ValueError(f"no pair without NaN among {len(a)}")
    if groups is None:
        codes = np.arange(int(keep.sum()))
    else:
        groups = np.asarray(groups)
        if groups.shape != a.shape:
            raise ValueError(f"groups {groups.shape} and values {a.shape} differ in shape")
        codes = pd.factorize(groups[keep], sort=True)[0]  # row order does not matter
        if (codes < 0).any():
            raise ValueError(f"{int((codes < 0).sum())} images without a group (patient id)")
    return a[keep], b[keep], codes


def _sign_flipped_means(d: np.ndarray, codes: np.ndarray, n: int, rng) -> np.ndarray:
    """Mean difference under ``n`` random sign flips, one sign per cluster (patient), in
    blocks to bound memory. (Bootstraps go through :mod:`probes.core.bootstrap`.)"""
    sums, sizes = np.bincount(codes, weights=d), np.bincount(codes).astype(np.float64)
    c = len(sums)
    per_block = max(1, RESAMPLE_BLOCK // c)
    out = []
    for b in np.diff(np.r_[np.arange(0, n, per_block), n]):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(int(b), c))
        out.append(signs @ sums / sizes.sum())
    return np.concatenate(out)


def paired_bootstrap(
    values_a,
    values_b,
    *,
    groups=None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedResult:
    """Paired percentile bootstrap of the mean difference of a per-image value (Dice, loss...).

    Args:
        values_a, values_b: ``(n,)`` values of the same images; a pair with a NaN on either side
            is dropped (e.g. Dice with both masks empty under ``both_empty="exclude"``).
        groups: optional ``(n,)`` cluster ids (patient ids): whole patients are resampled, so
            correlated images of one patient do not narrow the interval falsely.

    The p-value is two-sided from the bootstrap distribution: twice the smaller tail share on
    either side of 0 (with the +1 correction), i.e. the largest alpha whose interval holds 0.
    """
    from probes.core.bootstrap import bootstrap_distribution, weighted_mean

    a, b, codes = _paired(values_a, values_b, groups)
    d = a - b
    boot = bootstrap_distribution(lambda w: weighted_mean(d, w), codes, n_boot=n_boot, seed=seed)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    below, above = (np.sum(boot <= 0) + 1) / (n_boot + 1), (np.sum(boot >= 0) + 1) / (n_boot + 1)
    method = "bootstrap over " + ("patients" if groups is not None else "images")
    return PairedResult(
        statistic="mean",
        estimate_a=float(a.mean()),
        estimate_b=float(b.mean()),
        difference=float((a - b).mean()),
        ci_low=float(low),
        ci_high=float(high),
        pvalue=float(min(1.0, 2 * min(below, above))),
        n=len(a),
        method=method,
    )


def paired_auroc_bootstrap(
    truth,
    score_a,
    score_b,
    *,
    groups,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedResult:
    """Paired AUROC difference with a percentile interval and p-value from resampling whole
    patients (the same draws for both scores).

    DeLong's variance treats images as independent; with several images per patient (MIMIC,
    CheXpert) its interval is too narrow. This one resamples the unit that is independent.
    ``groups``: ``(n,)`` patient ids. p-value as :func:`paired_bootstrap`.
    """
    from probes.core.bootstrap import patient_draws, weighted_metrics

    truth = np.asarray(truth).astype(np.int64)
    codes, uniques = pd.factorize(np.asarray(groups), sort=True)
    ones = np.ones((1, len(truth)))
    auroc_a = float(weighted_metrics(truth, score_a, ones)["auroc"][0])
    auroc_b = float(weighted_metrics(truth, score_b, ones)["auroc"][0])
    diffs = [
        weighted_metrics(truth, score_a, w)["auroc"] - weighted_metrics(truth, score_b, w)["auroc"]
        for w in patient_draws(codes, len(uniques), n_boot, seed)
    ]
    boot = np.concatenate(diffs)
    boot = boot[~np.isnan(boot)]  # a resample with no positive or no negative
    if not boot.size:
        raise ValueError("no bootstrap resample has both classes")
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    k = len(boot)
    below, above = (np.sum(boot <= 0) + 1) / (k + 1), (np.sum(boot >= 0) + 1) / (k + 1)
    return PairedResult(
        statistic="auroc",
        estimate_a=auroc_a,
        estimate_b=auroc_b,
        difference=auroc_a - auroc_b,
        ci_low=float(low),
        ci_high=float(high),
        pvalue=float(min(1.0, 2 * min(below, above))),
        n=len(truth),
        method="bootstrap over patients",
    )


def paired_permutation(
    values_a, values_b, *, n_perm: int = 10000, seed: int = 0, groups=None
) -> PairedResult:
    """Sign-flip permutation test of the mean paired difference (two-sided).

    Under the null a and b are exchangeable within each image, so each difference's sign is
    flipped at random (with ``groups``, one sign per patient). p = (1 + #{|mean*| >= |mean|}) /
    (n_perm + 1). NaN pairs are dropped. No interval (``ci_low``/``ci_high`` NaN): use
    :func:`paired_bootstrap` for one.
    """
    a, b, codes = _paired(values_a, values_b, groups)
    d = a - b
    rng = np.random.default_rng(seed)
    flips = _sign_flipped_means(d, codes, n_perm, rng)
    observed = abs(d.mean())
    hits = np.sum(np.abs(flips) >= observed * (1 - 1e-12))  # float ties count as extreme
    return PairedResult(
        statistic="mean",
        estimate_a=float(a.mean()),
        estimate_b=float(b.mean()),
        difference=float(d.mean()),
        ci_low=float("nan"),
        ci_high=float("nan"),
        pvalue=float((1 + hits) / (n_perm + 1)),
        n=len(d),
        method="sign-flip permutation over " + ("patients" if groups is not None else "images"),
    )
