"""Subgroup tables and the sensitivity gap: values against direct computation on the subsets,
joins by image id, size quantile bins, patient-clustered CIs, a planted gap recovered."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from probes.analysis.subgroups import ALL, NO_LESION, sensitivity_gap, subgroup_table
from probes.core.bootstrap import weighted_metrics
from probes.core.metrics import youden_threshold


def _cohort(seed: int = 0, n_patients: int = 90, rounds: int = 3, p_hit=None):
    """Synthetic CV predictions + metadata: 1-3 images per patient, patient-level folds.

    ``p_hit``: optional ``(tube) -> P(score >= 0.5 | positive)`` to plant a sensitivity.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, n_patients)
    patient = np.repeat([f"P{i:03d}" for i in range(n_patients)], counts)
    n = len(patient)
    image = np.array([f"{p}_{k}" for p, k in zip(patient, np.arange(n), strict=True)])
    fold = np.repeat(np.arange(n_patients) % rounds, counts)
    truth = np.repeat(rng.random(n_patients) < 0.5, counts).astype(int)
    tube = (rng.random(n) < np.where(truth == 1, 0.7, 0.15)).astype(int)
    meta = pd.DataFrame(
        {
            "image_id": image,
            "patient_id": patient,
            "chest_tube": tube,
            "sex": np.repeat(rng.choice(["F", "M"], n_patients), counts),
            "ptx_area_pct": np.where(truth == 1, rng.lognormal(0, 1, n).round(4), 0.0),
        }
    )
    frames = []
    for k in range(rounds):
        for part, fold_id in (("val", (k + 1) % rounds), ("test", k)):
            rows = np.flatnonzero(fold == fold_id)
            if p_hit is None:
                score = 1 / (1 + np.exp(-(1.5 * truth[rows] - 0.75 + rng.normal(0, 1, rows.size))))
            else:
                p = np.where(truth[rows] == 1, p_hit(tube[rows]), 0.2)
                hit = rng.random(rows.size) < p
                score = np.where(
                    hit, 0.5 + 0.5 * rng.random(rows.size), 0.5 * rng.random(rows.size)
                )
            frames.append(
                pd.DataFrame(
                    {
                        "image_id": image[rows],
                        "patient_id": patient[rows],
                        "round": k,
                        "fold": fold[rows],
                        "split": part,
                        "label": "pneumothorax",
                        "truth": truth[rows],
                        "score": score,
                        "encoder": "enc-123",
                        "probe": "LinearProbe",
                    }
                )
            )
    return pd.concat(frames, ignore_index=True), meta


def _direct(rows: pd.DataFrame, threshold: float = 0.5) -> dict:
    truth, score = rows["truth"].to_numpy(), rows["score"].to_numpy()
    hit = score >= threshold
    return {
        "n": len(rows),
        "patients": rows["patient_id"].nunique(),
        "positives": int(truth.sum()),
        "negatives": int((1 - truth).sum()),
        "sensitivity": hit[truth == 1].mean() if truth.any() else np.nan,
        "specificity": (~hit[truth == 0]).mean() if (truth == 0).any() else np.nan,
        "auroc": roc_auc_score(truth, score) if len(set(truth)) == 2 else np.nan,
    }


def test_metrics_per_subgroup_equal_direct_computation_on_the_subset():
    predictions, meta = _cohort()
    table = subgroup_table(predictions, meta, by=["chest_tube", "sex"], n_boot=50)
    test = predictions[predictions["split"] == "test"].merge(meta, on=["image_id", "patient_id"])
    assert len(test) == len(meta)  # pooled test rows of all rounds: every image once
    combos = test.groupby(["chest_tube", "sex"]).ngroups
    assert len(table) == 1 + combos
    assert (table["size_bin"] == ALL).all() and (table["label"] == "pneumothorax").all()
    for _, row in table.iterrows():
        subset = test
        for column in ("chest_tube", "sex"):
            if row[column] != ALL:
                subset = subset[subset[column].astype(str) == row[column]]
        expected = _direct(subset)
        for key, value in expected.items():
            np.testing.assert_allclose(row[key], value, err_msg=f"{key} of {dict(row)}")
        for metric in ("sensitivity", "specificity", "auroc"):
            if not np.isnan(row[metric]):
                assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"]
    everything = table.iloc[0]
    assert everything["chest_tube"] == ALL and everything["sex"] == ALL
    assert everything["n"] == len(meta)


def test_join_is_by_image_id_not_by_position():
    predictions, meta = _cohort(seed=1)
    table = subgroup_table(predictions, meta, by=["chest_tube"], n_boot=30)
    extra = pd.DataFrame({"image_id": ["Z1"], "patient_id": ["Z"], "chest_tube": [1]})
    shuffled = pd.concat([meta, extra]).sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert not shuffled["image_id"].equals(meta["image_id"])
    pd.testing.assert_frame_equal(
        subgroup_table(predictions, shuffled, by=["chest_tube"], n_boot=30), table
    )
    # a by-column also present in the predictions is taken from the metadata
    clashing = predictions.assign(chest_tube=9)
    pd.testing.assert_frame_equal(
        subgroup_table(clashing, shuffled, by=["chest_tube"], n_boot=30), table
    )


def test_unknown_ids_and_missing_columns_are_named():
    predictions, meta = _cohort(seed=2)
    dropped = meta["image_id"].iloc[[3, 7]].tolist()
    with pytest.raises(ValueError, match="not in the metadata") as err:
        subgroup_table(predictions, meta.drop(index=[3, 7]), by=["sex"], n_boot=10)
    assert all(image in str(err.value) for image in dropped)
    with pytest.raises(ValueError, match="'tube_size'"):
        subgroup_table(predictions, meta, by=["tube_size"], n_boot=10)
    with pytest.raises(ValueError, match="repeats image ids"):
        subgroup_table(predictions, pd.concat([meta, meta.iloc[:1]]), by=["sex"], n_boot=10)
    with pytest.raises(ValueError, match="'encoder'"):
        mixed = predictions.assign(encoder=np.where(predictions.index % 2, "a", "b"))
        subgroup_table(mixed, meta, by=["sex"], n_boot=10)
    with pytest.raises(ValueError, match="size_bins"):
        subgroup_table(predictions, meta, size_column="ptx_area_pct", n_boot=10)


def test_size_quantile_bins_have_the_documented_edges():
    predictions, meta = _cohort(seed=4)
    table = subgroup_table(
        predictions, meta, by=["chest_tube"], size_column="ptx_area_pct", size_bins=4, n_boot=20
    )
    sizes = meta.loc[meta["ptx_area_pct"] > 0, "ptx_area_pct"].to_numpy()
    edges = np.quantile(sizes, np.linspace(0, 1, 5))  # each positive image once
    bins = table[(table["chest_tube"] == ALL) & (table["size_bin"] != ALL)]
    assert bins["size_bin"].tolist() == [NO_LESION, "Q1", "Q2", "Q3", "Q4"]
    quartiles = bins.iloc[1:]
    np.testing.assert_allclose(quartiles["size_low"], edges[:-1])
    np.testing.assert_allclose(quartiles["size_high"], edges[1:])
    test = predictions[predictions["split"] == "test"].merge(meta, on=["image_id", "patient_id"])
    positives = test[test["truth"] == 1]
    for i, (_, row) in enumerate(quartiles.iterrows()):
        # right-closed bins, the first also closed on the left
        inside = (positives["ptx_area_pct"] > edges[i]) | (
            (i == 0) & (positives["ptx_area_pct"] == edges[0])
        )
        inside &= positives["ptx_area_pct"] <= edges[i + 1]
        subset = positives[inside]
        assert row["n"] == row["positives"] == len(subset) and row["negatives"] == 0
        assert row["sensitivity"] == pytest.approx((subset["score"] >= 0.5).mean())
    assert quartiles["n"].sum() == len(positives)
    no_lesion = bins.iloc[0]
    assert no_lesion["n"] == no_lesion["negatives"] == (test["truth"] == 0).sum()
    # cross cells: tube x bin add up to each bin
    cells = table[(table["chest_tube"] != ALL) & (table["size_bin"] != ALL)]
    assert (
        cells.groupby("size_bin")["n"].sum().to_dict() == bins.set_index("size_bin")["n"].to_dict()
    )


def test_a_planted_sensitivity_gap_is_recovered_within_its_ci():
    """Positives are detected with probability 0.9 with a tube and 0.45 without. Over ten
    cohorts the 95% CIs hold the planted values (a 95% CI may miss once in twenty: at least
    8 of 10 per quantity), the gap is always detected, and the table agrees with the gap."""
    planted = {"1": 0.9, "0": 0.45}
    covered = {"gap": 0, "1": 0, "0": 0}
    for seed in range(10):
        predictions, meta = _cohort(
            seed=seed, n_patients=400, p_hit=lambda t: np.where(t == 1, 0.9, 0.45)
        )
        gap = sensitivity_gap(predictions, meta, "chest_tube", n_boot=200, seed=seed)
        covered["gap"] += gap["gap_ci_low"] <= planted["1"] - planted["0"] <= gap["gap_ci_high"]
        assert gap["gap_ci_low"] > 0.2
        assert gap["gap"] == pytest.approx(gap["sensitivity_with"] - gap["sensitivity_without"])
        table = subgroup_table(predictions, meta, by=["chest_tube"], n_boot=200, seed=seed)
        rows = {tube: table[table["chest_tube"] == tube].iloc[0] for tube in planted}
        for tube, sensitivity in planted.items():
            covered[tube] += (
                rows[tube]["sensitivity_ci_low"] <= sensitivity <= rows[tube]["sensitivity_ci_high"]
            )
        assert rows["1"]["sensitivity"] == pytest.approx(gap["sensitivity_with"])
        assert rows["0"]["sensitivity"] == pytest.approx(gap["sensitivity_without"])
        assert rows["1"]["sensitivity_ci_low"] > rows["0"]["sensitivity_ci_high"]
        test = predictions[predictions["split"] == "test"].merge(meta, on=["image_id"])
        positives = test[test["truth"] == 1]
        assert gap["n_with"] == rows["1"]["positives"] == (positives["chest_tube"] == 1).sum()
        assert gap["n_without"] == rows["0"]["positives"] == (positives["chest_tube"] == 0).sum()
    assert min(covered.values()) >= 8, covered


def test_youden_threshold_is_each_rounds_own_validation_point():
    predictions, meta = _cohort(seed=6)
    table = subgroup_table(predictions, meta, threshold="youden", n_boot=10)
    hits, positives = 0, 0
    for _, part in predictions.groupby("round"):
        val, test = part[part["split"] == "val"], part[part["split"] == "test"]
        threshold = youden_threshold(val["truth"].to_numpy(), val["score"].to_numpy())
        hits += (test.loc[test["truth"] == 1, "score"] >= threshold).sum()
        positives += (test["truth"] == 1).sum()
    assert table.iloc[0]["sensitivity"] == pytest.approx(hits / positives)
    with pytest.raises(ValueError, match="validation rows"):
        no_val = predictions[predictions["split"] == "test"]
        subgroup_table(no_val, meta, threshold="youden", n_boot=10)


def test_cis_resample_patients_not_images():
    """Giving every patient three identical copies of each of its images leaves every
    patient-clustered CI unchanged (an image-level bootstrap would narrow it ~sqrt(3)x)."""
    predictions, meta = _cohort(seed=7)
    copies = pd.concat(
        [predictions.assign(image_id=predictions["image_id"] + f"#{k}") for k in range(3)]
    )
    meta3 = pd.concat([meta.assign(image_id=meta["image_id"] + f"#{k}") for k in range(3)])
    one = subgroup_table(predictions, meta, by=["sex"], n_boot=200)
    three = subgroup_table(copies, meta3, by=["sex"], n_boot=200)
    assert (three["n"] == 3 * one["n"]).all() and (three["patients"] == one["patients"]).all()
    for column in ("sensitivity", "specificity", "auroc"):
        for end in ("", "_ci_low", "_ci_high"):
            np.testing.assert_allclose(three[column + end], one[column + end], atol=1e-12)


def test_segmentation_rows_give_dice_per_subgroup_and_mask_area_bins():
    rng = np.random.default_rng(8)
    n = 80
    meta = pd.DataFrame(
        {
            "image_id": [f"I{i}" for i in range(n)],
            "patient_id": [f"P{i // 2}" for i in range(n)],
            "sex": rng.choice(["F", "M"], n),
        }
    )
    area = np.where(rng.random(n) < 0.8, rng.uniform(0.001, 0.1, n), 0.0)
    rows = meta[["image_id", "patient_id"]].assign(
        round=0, fold=0, split="test", dice=rng.random(n), mask_area=area, grid="16"
    )
    table = subgroup_table(rows, meta, by=["sex"], size_column="mask_area", size_bins=2, n_boot=50)
    assert {"dice", "dice_ci_low", "dice_ci_high", "dice_median"} <= set(table.columns)
    assert "sensitivity" not in table.columns
    for sex in ("F", "M"):
        row = table[(table["sex"] == sex) & (table["size_bin"] == ALL)].iloc[0]
        dice = rows["dice"][meta["sex"] == sex]
        assert row["dice"] == pytest.approx(dice.mean())
        assert row["dice_median"] == pytest.approx(dice.median())
        assert row["dice_ci_low"] <= row["dice"] <= row["dice_ci_high"]
    edges = np.quantile(area[area > 0], [0, 0.5, 1])
    q = table[(table["sex"] == ALL) & (table["size_bin"].isin(["Q1", "Q2"]))]
    np.testing.assert_allclose(q["size_low"], edges[:-1])
    np.testing.assert_allclose(q["size_high"], edges[1:])
    assert (
        table[(table["sex"] == ALL) & (table["size_bin"] == NO_LESION)]["n"].item()
        == (area == 0).sum()
    )


def test_sensitivity_gap_rejects_unclear_confounder_values_and_several_labels():
    predictions, meta = _cohort(seed=9)
    with pytest.raises(ValueError, match="'chest_tube' must be 1/0"):
        sensitivity_gap(predictions, meta.assign(chest_tube="maybe"), "chest_tube", n_boot=10)
    both = pd.concat([predictions, predictions.assign(label="other")])
    with pytest.raises(ValueError, match="several labels"):
        sensitivity_gap(both, meta, "chest_tube", n_boot=10)
    # text and boolean spellings give the same answer as 0/1
    spelled = meta.assign(chest_tube=meta["chest_tube"].map({1: "yes", 0: "no"}))
    as_bool = meta.assign(chest_tube=meta["chest_tube"].astype(bool))
    reference = sensitivity_gap(predictions, meta, "chest_tube", n_boot=20)
    assert sensitivity_gap(predictions, spelled, "chest_tube", n_boot=20) == reference
    assert sensitivity_gap(predictions, as_bool, "chest_tube", n_boot=20) == reference


def test_the_subgroup_auroc_equals_scikit_learn_with_ties():
    """Subgroup AUROC CIs resample with the one bootstrap's weighted AUROC: with unit weights
    it is scikit-learn's, ties included; NaN with one class (dropped by the CI)."""
    rng = np.random.default_rng(10)
    truth = rng.integers(0, 2, 200)
    score = rng.integers(0, 7, 200) / 6  # many ties
    ones = np.ones((1, 200))
    assert weighted_metrics(truth, score, ones)["auroc"][0] == pytest.approx(
        roc_auc_score(truth, score), abs=1e-12
    )
    assert np.isnan(weighted_metrics(np.ones(5), np.arange(5), np.ones((1, 5)))["auroc"][0])
