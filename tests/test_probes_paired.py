"""probes.analysis.paired: DeLong against the O(n_pos x n_neg) structural-components definition and
for calibration, the paired AUROC bootstrap over patients, paired bootstrap / permutation tests
of a per-image mean on planted data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as ss
from sklearn.metrics import roc_auc_score

from probes.analysis.paired import (
    delong_test,
    delong_variance,
    paired_auroc_bootstrap,
    paired_bootstrap,
    paired_permutation,
)

# --- DeLong -------------------------------------------------------------------------------


def delong_by_definition(truth, scores):
    """AUROCs and covariance from DeLong, DeLong & Clarke-Pearson (1988), O(m n) kernel."""
    truth = np.asarray(truth).astype(bool)
    aucs, v10s, v01s = [], [], []
    for s in scores:
        x, y = s[truth], s[~truth]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))  # one per positive
        v01s.append(psi.mean(axis=0))  # one per negative
    aucs, v10, v01 = np.array(aucs), np.array(v10s), np.array(v01s)
    m, n = v10.shape[1], v01.shape[1]
    s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
    s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
    return aucs, s10 / m + s01 / n


def test_delong_matches_structural_components_definition():
    rng = np.random.default_rng(7)
    for n, decimals in ((40, 1), (150, 2), (301, 8)):
        truth = rng.integers(0, 2, n)
        a = np.round(truth * 0.8 + rng.normal(size=n), decimals)  # rounding makes ties
        b = np.round(truth * 0.4 + 0.5 * a + rng.normal(size=n), decimals)
        aucs, cov = delong_by_definition(truth, np.stack([a, b]))
        auc_a, var_a = delong_variance(truth, a)
        assert auc_a == pytest.approx(aucs[0], abs=1e-10)
        assert auc_a == pytest.approx(roc_auc_score(truth, a), abs=1e-12)
        assert var_a == pytest.approx(cov[0, 0], abs=1e-10)
        res = delong_test(truth, a, b, alpha=0.1)
        assert res.auroc_a == pytest.approx(aucs[0], abs=1e-10)
        assert res.auroc_b == pytest.approx(roc_auc_score(truth, b), abs=1e-12)
        se = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        assert res.se == pytest.approx(se, abs=1e-10)
        z = (aucs[0] - aucs[1]) / se
        assert res.z == pytest.approx(z, rel=1e-9)
        assert res.pvalue == pytest.approx(2 * ss.norm.sf(abs(z)), rel=1e-9)
        assert res.ci_low == pytest.approx(aucs[0] - aucs[1] - ss.norm.ppf(0.95) * se, abs=1e-10)
        assert (res.n_positive, res.n_negative) == (truth.sum(), n - truth.sum())


def test_delong_is_calibrated_under_the_null_and_has_power():
    rng = np.random.default_rng(11)
    null, planted = [], []
    for _ in range(200):
        truth = rng.integers(0, 2, 200)
        signal = truth * 1.0 + rng.normal(size=200)
        a, b = signal + rng.normal(size=200), signal + rng.normal(size=200)
        null.append(delong_test(truth, a, b).pvalue)
        # AUROC about 0.75 vs 0.63: DeLong should find it in most datasets
        better, worse = signal + 0.2 * rng.normal(size=200), signal + 2.0 * rng.normal(size=200)
        planted.append(delong_test(truth, better, worse).pvalue)
    null = np.array(null)
    assert 0.01 <= np.mean(null < 0.05) <= 0.10
    assert 0.40 <= np.mean(null < 0.5) <= 0.60  # roughly uniform in the middle too
    assert np.mean(np.array(planted) < 0.05) > 0.8


def test_delong_edge_cases():
    truth = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    same = delong_test(truth, score, score)
    assert (same.difference, same.se, same.z, same.pvalue) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="2 positives"):
        delong_test([0, 0, 0, 1], score[:4], score[:4])
    with pytest.raises(ValueError, match="0/1"):
        delong_variance([0, 2, 1, 1], score[:4])


# --- paired bootstrap and permutation -----------------------------------------------------


def test_paired_bootstrap_covers_the_planted_difference():
    rng = np.random.default_rng(5)
    covered = 0
    for seed in range(40):
        a = rng.normal(0.7, 0.1, 300)
        b = a - 0.05 + rng.normal(0, 0.08, 300)  # true mean difference a - b = 0.05
        res = paired_bootstrap(a, b, n_boot=1000, seed=seed)
        covered += res.ci_low <= 0.05 <= res.ci_high
        assert res.difference == pytest.approx(np.mean(a - b))
        assert res.estimate_a - res.estimate_b == pytest.approx(res.difference)
    assert covered >= 34  # nominal 95% of 40 = 38
    assert res.pvalue < 0.01 and res.n == 300 and res.method == "bootstrap over images"


def test_paired_bootstrap_clustered_by_patient_is_wider():
    rng = np.random.default_rng(6)
    patients = np.repeat(np.arange(60), 5)  # 5 images per patient
    shift = rng.normal(0, 0.1, 60)[patients]  # the patient effect is shared by its images
    a = rng.normal(0.6, 0.1, 300)
    b = a - 0.02 - shift + rng.normal(0, 0.02, 300)
    plain = paired_bootstrap(a, b, n_boot=2000, seed=0)
    clustered = paired_bootstrap(a, b, groups=patients.astype(str), n_boot=2000, seed=0)
    assert clustered.difference == plain.difference
    assert (clustered.ci_high - clustered.ci_low) > 1.5 * (plain.ci_high - plain.ci_low)
    assert clustered.method == "bootstrap over patients"


def test_paired_tests_drop_nan_pairs():
    rng = np.random.default_rng(8)
    a, b = rng.random(100), rng.random(100)
    groups = np.repeat(np.arange(50), 2)
    a[[3, 10]], b[[10, 40, 41]] = np.nan, np.nan  # both-empty Dice excluded, say
    keep = ~(np.isnan(a) | np.isnan(b))
    res = paired_bootstrap(a, b, groups=groups, n_boot=500, seed=2)
    assert res.n == keep.sum() == 96
    assert res.difference == pytest.approx(np.mean(a[keep] - b[keep]))
    assert res == paired_bootstrap(a[keep], b[keep], groups=groups[keep], n_boot=500, seed=2)
    perm = paired_permutation(a, b, n_perm=500)
    same = paired_permutation(a[keep], b[keep], n_perm=500)
    assert perm.n == 96 and (perm.difference, perm.pvalue) == (same.difference, same.pvalue)
    with pytest.raises(ValueError, match="no pair without NaN"):
        paired_bootstrap([np.nan, 1.0], [1.0, np.nan])


def test_paired_permutation_planted_and_null():
    rng = np.random.default_rng(9)
    a = rng.normal(0.5, 0.1, 200)
    planted = paired_permutation(a, a - 0.03 + rng.normal(0, 0.05, 200), seed=0)
    assert planted.pvalue < 0.01
    null = paired_permutation(a, a + rng.normal(0, 0.05, 200), seed=0)
    assert null.pvalue > 0.05
    assert np.isnan(null.ci_low) and null.method == "sign-flip permutation over images"


def test_paired_permutation_matches_exact_enumeration():
    rng = np.random.default_rng(10)
    d = rng.normal(0.3, 1.0, 10)
    flips = np.array(list(itertools.product([-1, 1], repeat=10)))
    exact = np.mean(np.abs(flips @ d) >= abs(d.sum()) - 1e-12)
    res = paired_permutation(d, np.zeros(10), n_perm=20000, seed=1)
    assert res.pvalue == pytest.approx(exact, abs=0.01)
    # one sign per patient: 8 patients of 1-3 images
    groups = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 7])
    d = rng.normal(0.4, 1.0, 12)
    sums = np.bincount(groups, weights=d)
    flips = np.array(list(itertools.product([-1, 1], repeat=8)))
    exact = np.mean(np.abs(flips @ sums) >= abs(sums.sum()) - 1e-12)
    res = paired_permutation(d, np.zeros(12), n_perm=20000, seed=1, groups=groups)
    assert res.pvalue == pytest.approx(exact, abs=0.01)
    assert res.method == "sign-flip permutation over patients"


# --- paired AUROC clustered by patient -----------------------------------------------------


def _two_scores(n, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    signal = truth + rng.normal(0, 1.2, n)
    return truth, signal + rng.normal(0, 0.5, n), signal + rng.normal(0, 0.9, n)


def test_paired_auroc_bootstrap_agrees_with_delong_for_one_image_per_patient():
    truth, a, b = _two_scores(600)
    boot = paired_auroc_bootstrap(truth, a, b, groups=np.arange(600), n_boot=2000, seed=1)
    ref = delong_test(truth, a, b)
    assert boot.estimate_a == pytest.approx(roc_auc_score(truth, a), abs=1e-12)
    assert boot.difference == pytest.approx(ref.difference, abs=1e-12)
    ratio = (boot.ci_high - boot.ci_low) / (ref.ci_high - ref.ci_low)
    assert 0.8 < ratio < 1.25


def test_paired_auroc_bootstrap_is_not_fooled_by_repeated_images_of_a_patient():
    """Three identical images per patient: DeLong's interval shrinks by about sqrt(3), as if
    there were three times the patients; resampling patients keeps the honest width."""
    truth, a, b = _two_scores(300, seed=2)
    patients = np.arange(300)
    once = paired_auroc_bootstrap(truth, a, b, groups=patients, n_boot=2000, seed=3)
    thrice = paired_auroc_bootstrap(
        np.tile(truth, 3), np.tile(a, 3), np.tile(b, 3), groups=np.tile(patients, 3), seed=3
    )
    width = lambda r: r.ci_high - r.ci_low  # noqa: E731
    assert width(thrice) == pytest.approx(width(once), rel=0.15)
    naive = delong_test(np.tile(truth, 3), np.tile(a, 3), np.tile(b, 3))
    honest = delong_test(truth, a, b)
    assert width(naive) < 0.65 * width(honest)
