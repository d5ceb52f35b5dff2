"""probes.analysis.stats: Friedman/Nemenyi/CD against scipy and scikit-posthocs, Wilcoxon-Holm against
scipy and the Holm definition, run-table checks and paired image tests of two runs, the CD
diagram. The per-image tests on arrays: tests/test_probes_paired.py."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs
from scipy import stats as ss

from probes.analysis.stats import (
    check_same_folds,
    critical_difference,
    delong_test,
    fold_scores,
    friedman_nemenyi,
    paired_bootstrap,
    paired_image_tests,
    plot_critical_difference,
    wilcoxon_holm,
)
from probes.core.results import cross_predict, results_table
from probes.core.splits import patient_split
from probes.linear.probe import LinearProbe


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


# --- paired AUROC over patients in run tables ------------------------------------------


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
