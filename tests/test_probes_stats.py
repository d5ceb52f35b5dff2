"""probes.stats: Friedman/Nemenyi/CD against scipy and scikit-posthocs, DeLong against the
O(n_pos x n_neg) structural-components definition, Wilcoxon-Holm against scipy and the Holm
definition, paired bootstrap / permutation on planted data, run-table checks, the CD diagram."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs
from scipy import stats as ss
from sklearn.metrics import roc_auc_score

from probes.linear import LinearProbe
from probes.results import cross_predict, results_table
from probes.splits import patient_split
from probes.stats import (
    check_same_folds,
    critical_difference,
    delong_test,
    delong_variance,
    fold_scores,
    friedman_nemenyi,
    paired_auroc_bootstrap,
    paired_bootstrap,
    paired_image_tests,
    paired_permutation,
    plot_critical_difference,
    wilcoxon_holm,
)


def score_matrices():
    """Random (blocks x runs) matrices, some with ties within blocks."""
    rng = np.random.default_rng(1)
    out = []
    for n, k in ((5, 3), (5, 9), (12, 4), (30, 6)):
        out.append(rng.random((n, k)))
        out.append(rng.integers(0, 3, size=(n, k)).astype(float))  # many ties
    return [pd.DataFrame(m, columns=[f"run{j}" for j in range(m.shape[1])]) for m in out]


# --- Friedman, Nemenyi, critical difference -----------------------------------------------


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_friedman_nemenyi_match_scipy_and_scikit_posthocs(higher_is_better):
    for scores in score_matrices():
        values = scores.to_numpy()
        n, k = values.shape
        result = friedman_nemenyi(scores, higher_is_better=higher_is_better)
        expected = ss.friedmanchisquare(*[values[:, j] for j in range(k)])
        assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
        assert result.pvalue == pytest.approx(expected.pvalue, rel=1e-12)
        assert result.n_blocks == n
        nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(values)
        np.testing.assert_allclose(result.nemenyi.to_numpy(), nemenyi.to_numpy(), atol=1e-12)
        assert list(result.nemenyi.columns) == list(scores.columns)
        # ranks: 1 = best, ties averaged, rank by rank from scipy.stats.rankdata
        signed = -values if higher_is_better else values
        ranks = np.mean([ss.rankdata(row) for row in signed], axis=0)
        np.testing.assert_allclose(result.ranks.to_numpy(), ranks, atol=1e-12)
        assert list(result.ranks.index) == list(scores.columns)
        q = ss.studentized_range.ppf(0.95, k, np.inf) / np.sqrt(2)
        assert result.critical_difference == pytest.approx(q * np.sqrt(k * (k + 1) / (6 * n)))


def test_critical_difference_matches_demsar_table():
    # Demsar (2006), Table 5(a): q_0.05 = 2.343 (k = 3), 2.569 (k = 4), 3.102 (k = 9)
    for k, q in ((3, 2.343), (4, 2.569), (9, 3.102)):
        for n in (5, 20):
            cd = critical_difference(k, n, 0.05)
            assert cd / np.sqrt(k * (k + 1) / (6 * n)) == pytest.approx(q, abs=1e-3)
    # q_0.10 = 2.291 for k = 4 (Table 5(b))
    assert critical_difference(4, 5, 0.10) / np.sqrt(4 * 5 / 30) == pytest.approx(2.291, abs=1e-3)


def test_friedman_ranks_direction_and_errors():
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(rng.random((6, 4)), columns=["a", "b", "c", "d"])
    scores["c"] += 1.0  # best in every block
    assert friedman_nemenyi(scores).ranks["c"] == 1.0
    assert friedman_nemenyi(scores, higher_is_better=False).ranks["c"] == 4.0
    with pytest.raises(ValueError, match="at least 3 runs"):
        friedman_nemenyi(scores[["a", "b"]])
    with pytest.raises(ValueError, match="at least 2 blocks"):
        friedman_nemenyi(scores.iloc[:1])
    scores.iloc[2, 1] = np.nan
    with pytest.raises(ValueError, match="'b' at 2"):
        friedman_nemenyi(scores)


# --- Wilcoxon-Holm ------------------------------------------------------------------------


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment, from its definition."""
    m = len(pvalues)
    order = np.argsort(pvalues)
    adjusted = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, (m - i) * pvalues[j])
        adjusted[j] = min(1.0, running)
    return adjusted


def test_wilcoxon_holm_matches_scipy_and_holm_definition():
    rng = np.random.default_rng(3)
    for n, k in ((5, 3), (10, 5), (15, 4)):
        scores = pd.DataFrame(rng.random((n, k)), columns=[f"r{j}" for j in range(k)])
        scores["r0"] += 0.3  # some pairs differ
        table = wilcoxon_holm(scores, alpha=0.05)
        pairs = list(itertools.combinations(scores.columns, 2))
        assert list(zip(table["a"], table["b"], strict=True)) == pairs
        for row, (a, b) in zip(table.itertuples(), pairs, strict=True):
            expected = ss.wilcoxon(scores[a], scores[b])
            assert row.pvalue == pytest.approx(expected.pvalue, rel=1e-12)
            assert row.statistic == pytest.approx(expected.statistic)
            assert row.median_difference == pytest.approx(np.median(scores[a] - scores[b]))
            assert row.n == n
        adjusted = holm(table["pvalue"].to_numpy())
        np.testing.assert_allclose(table["pvalue_holm"], adjusted, rtol=1e-12)
        np.testing.assert_array_equal(table["reject"], adjusted <= 0.05)
    # five blocks can never reach p < 0.0625: the weakness docs/statistics.md names
    five = pd.DataFrame({"a": np.arange(5) + 10.0, "b": np.arange(5.0), "c": np.zeros(5)})
    assert wilcoxon_holm(five)["pvalue"].min() == pytest.approx(0.0625)


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


# --- run tables ---------------------------------------------------------------------------


def classification_runs(n=90, shift_folds=False):
    """Two real ``cross_predict`` predictions tables (two feature sets, same labels)."""
    rng = np.random.default_rng(12)
    patients = np.repeat([f"p{i}" for i in range(n // 2)], 2)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    Y = np.stack([y, rng.integers(0, 2, n)], axis=1)
    good = Y + rng.normal(0, 0.7, Y.shape)
    weak = Y + rng.normal(0, 1.5, Y.shape)
    X1 = np.hstack([good, rng.normal(size=(n, 3))])
    X2 = np.hstack([weak, rng.normal(size=(n, 3))])
    ids = [f"img{i}" for i in range(n)]
    split = patient_split(Y[:, 0], patients, n_splits=3, seed=1)
    split2 = patient_split(Y[:, 0], patients, n_splits=3, seed=2) if shift_folds else split
    kwargs = dict(ids=ids, patient_ids=patients, label_names=["ptx", "cardio"])
    probe = LinearProbe(C=0.1, backend="numpy")
    a = cross_predict(probe, X1, Y, split, encoder="good", **kwargs)
    b = cross_predict(probe, X2, Y, split2, encoder="weak", **kwargs)
    return a, b


def test_check_same_folds_names_runs_and_round():
    a, b = classification_runs()
    check_same_folds({"good": a, "weak": b})
    _, shifted = classification_runs(shift_folds=True)
    with pytest.raises(ValueError, match=r"runs 'good' and 'shifted' .* in round 0"):
        check_same_folds({"good": a, "shifted": shifted})
    fewer = b[b["round"] != 2]
    with pytest.raises(ValueError, match=r"'good' and 'fewer' have different rounds"):
        check_same_folds({"good": a, "fewer": fewer})
    with pytest.raises(ValueError, match="run 'bare': predictions table lacks columns"):
        check_same_folds({"good": a, "bare": b.drop(columns="split")})


def test_fold_scores_classification_and_segmentation_blocks():
    a, b = classification_runs()
    ra, rb = results_table(a, n_boot=10), results_table(b, n_boot=10)
    scores = fold_scores({"good": ra, "weak": rb}, "auroc")
    assert scores.index.names == ["label", "round"] and list(scores.columns) == ["good", "weak"]
    expected = rb.loc[(rb["label"] == "ptx") & (rb["round"] == 1), "auroc"].item()
    assert scores.loc[("ptx", 1), "weak"] == expected
    assert (scores["good"] > scores["weak"]).mean() > 0.5
    with pytest.raises(ValueError, match="run 'short' has blocks that differ"):
        fold_scores({"good": ra, "short": rb.iloc[1:]}, "auroc")
    with pytest.raises(ValueError, match="run 'good' has no 'dice' column"):
        fold_scores({"good": ra}, "dice")
    seg = {
        name: pd.DataFrame({"round": [2, 0, 1], "dice": [0.5 + s, 0.4 + s, 0.45 + s]})
        for name, s in (("x", 0.0), ("y", 0.1), ("z", 0.05))
    }
    table = fold_scores(seg, "dice")
    assert list(table.index) == [0, 1, 2] and table.loc[2, "y"] == pytest.approx(0.6)
    assert friedman_nemenyi(table).ranks.to_dict() == {"x": 3.0, "y": 1.0, "z": 2.0}


def test_paired_image_tests_classification_uses_delong_on_matched_rows():
    a, b = classification_runs()
    shuffled = b.sample(frac=1.0, random_state=0)  # rows are matched by key, not by order
    table = paired_image_tests(a, shuffled, names=("good", "weak"))
    assert set(table["label"]) == {"ptx", "cardio"}
    # two images per patient here: DeLong per round and pooled, plus the pooled bootstrap
    # over patients (tested below)
    assert set(table["test"]) == {"delong", "bootstrap"}
    table = table[table["test"] == "delong"]
    assert sorted(table["round"].unique()) == [-1, 0, 1, 2]
    key = ["round", "image_id", "label"]
    ta = a[a["split"] == "test"].sort_values(key)
    tb = b[b["split"] == "test"].sort_values(key)
    for label, round_ in (("ptx", -1), ("cardio", 1)):
        pick = (ta["label"] == label) & ((ta["round"] == round_) | (round_ == -1))
        pick_b = (tb["label"] == label) & ((tb["round"] == round_) | (round_ == -1))
        ref = delong_test(ta.loc[pick, "truth"], ta.loc[pick, "score"], tb.loc[pick_b, "score"])
        row = table[(table["label"] == label) & (table["round"] == round_)].iloc[0]
        assert row["difference"] == pytest.approx(ref.difference, abs=1e-12)
        assert row["pvalue"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert row["n"] == pick.sum() and row["estimate_a"] == pytest.approx(ref.auroc_a)
    pooled = table[(table["label"] == "ptx") & (table["round"] == -1)].iloc[0]
    assert pooled["n"] == 90 and pooled["difference"] > 0 and pooled["pvalue"] < 0.05
    _, shifted = classification_runs(shift_folds=True)
    with pytest.raises(ValueError, match="tested different images in round"):
        paired_image_tests(a, shifted)


def segmentation_predictions(dice, patients, rounds, encoder):
    n = len(dice)
    return pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "patient_id": patients,
            "round": rounds,
            "fold": rounds,
            "split": "test",
            "dice": dice,
            "iou": dice / (2 - dice),
            "encoder": encoder,
        }
    )


def test_paired_image_tests_segmentation_bootstraps_dice_by_patient():
    rng = np.random.default_rng(13)
    patients = np.repeat([f"p{i}" for i in range(40)], 3)
    rounds = np.repeat(np.arange(4), 30)
    dice_a = rng.uniform(0.3, 0.9, 120)
    dice_b = dice_a - 0.04 + rng.normal(0, 0.05, 120)
    dice_a[[5, 17]] = np.nan  # both masks empty, excluded
    a = segmentation_predictions(dice_a, patients, rounds, "a")
    b = segmentation_predictions(dice_b, patients, rounds, "b")
    val = a.assign(split="val", round=(a["round"] + 1) % 4)  # val rows are ignored
    table = paired_image_tests(pd.concat([a, val]), b.iloc[::-1], n_boot=500, seed=3)
    assert list(table["round"]) == [-1, 0, 1, 2, 3] and set(table["label"]) == {""}
    assert set(table["test"]) == {"bootstrap"} and set(table["metric"]) == {"dice"}
    ref = paired_bootstrap(dice_a, dice_b, groups=patients, n_boot=500, seed=3)
    pooled = table.iloc[0]
    assert pooled["n"] == 118 and pooled["difference"] == pytest.approx(ref.difference)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((ref.ci_low, ref.ci_high))
    assert pooled["ci_low"] > 0 and pooled["pvalue"] < 0.01
    with pytest.raises(ValueError, match="without a partner|tested different images"):
        paired_image_tests(a, b.iloc[1:])


# --- the diagram --------------------------------------------------------------------------


def test_plot_critical_difference_png(tmp_path):
    import matplotlib.image
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(14)
    names = ["RAD-DINO", "MedSigLIP", "DINOv2", "BiomedCLIP", "CheXagent", "Ark+"]
    scores = pd.DataFrame(rng.random((10, 6)) + np.linspace(0.5, 0, 6), columns=names)
    result = friedman_nemenyi(scores)
    fig = plot_critical_difference(result, title="pneumothorax AUROC")
    assert plt.get_fignums() == []  # no pyplot state
    path = tmp_path / "cd.png"
    fig.savefig(path, dpi=100)
    assert path.stat().st_size > 5_000
    pixels = matplotlib.image.imread(path)[..., :3].reshape(-1, 3)
    assert len(np.unique(np.round(pixels * 255).astype(int), axis=0)) > 2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"CD = {result.critical_difference:.2f}" in texts
    assert any(t.startswith("RAD-DINO") or t.endswith("RAD-DINO") for t in texts)


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


def test_paired_image_tests_add_a_patient_bootstrap_when_patients_repeat():
    a2, b2 = classification_runs(n=90)  # two images per patient
    one_each = [t.assign(patient_id=t["image_id"]) for t in (a2, b2)]
    assert set(paired_image_tests(*one_each)["test"]) == {"delong"}
    table = paired_image_tests(a2, b2, n_boot=300)
    boot = table[table["test"] == "bootstrap"]
    assert set(boot["label"]) == {"ptx", "cardio"} and set(boot["round"]) == {-1}
    pooled = table[(table["test"] == "delong") & (table["round"] == -1)]
    for label in ("ptx", "cardio"):
        d = pooled[pooled["label"] == label].iloc[0]
        r = boot[boot["label"] == label].iloc[0]
        assert r["difference"] == pytest.approx(d["difference"], abs=1e-12)
