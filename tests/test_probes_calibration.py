"""Calibration and operating points: ECE and Brier against plain references written here,
temperature scaling (AUROC unchanged, validation log-loss lowered), thresholds chosen on
validation, net benefit, and the columns every classification results table carries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score
from test_probes_features import write_manifest, write_store

import probes
from probes.core.calibration import (
    apply_temperature,
    brier_score,
    calibrated_scores,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    net_benefit,
    shift_prevalence,
    threshold_for_sensitivity,
    threshold_for_specificity,
)


def _reference_ece(y, p, n_bins=15):
    """ECE by the textbook recipe: sort by score, cut into n_bins groups of equal size (the
    first len % n_bins one larger), weight |accuracy - confidence| by group size."""
    pairs = sorted(zip(p, y, strict=True), key=lambda t: t[0])
    n = len(pairs)
    sizes = [n // n_bins + (1 if i < n % n_bins else 0) for i in range(n_bins)]
    total, start = 0.0, 0
    for size in sizes:
        group = pairs[start : start + size]
        start += size
        if group:
            confidence = sum(s for s, _ in group) / size
            accuracy = sum(t for _, t in group) / size
            total += size / n * abs(accuracy - confidence)
    return total


def _reference_brier(y, p):
    return sum((float(s) - float(t)) ** 2 for s, t in zip(p, y, strict=True)) / len(y)


def _scores(rng, n, *, sharpness=3.0, shift=0.0):
    """Labels and probabilities from logits ``sharpness * (signal) + shift`` (mis-calibrated
    unless sharpness is 1 and shift 0)."""
    y = (rng.random(n) < 0.4).astype(int)
    z = rng.normal(size=n) + 1.2 * y - 0.5
    return y, 1.0 / (1.0 + np.exp(-(sharpness * z + shift)))


@pytest.mark.parametrize("n", [7, 15, 100, 1001])
def test_ece_and_brier_equal_plain_references(n):
    rng = np.random.default_rng(n)
    y, p = _scores(rng, n)
    assert expected_calibration_error(y, p) == pytest.approx(_reference_ece(y, p), abs=1e-12)
    assert brier_score(y, p) == pytest.approx(_reference_brier(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), rel=1e-9)
    # perfectly calibrated in every bin: ECE 0
    assert expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], n_bins=2) == 0


@pytest.mark.parametrize(("sharpness", "shift"), [(4.0, 0.0), (0.3, 0.0), (2.0, 1.0), (1.0, 0.0)])
def test_temperature_scaling_keeps_auroc_and_lowers_validation_log_loss(sharpness, shift):
    rng = np.random.default_rng(int(10 * sharpness))
    y_val, p_val = _scores(rng, 300, sharpness=sharpness, shift=shift)
    y_test, p_test = _scores(rng, 400, sharpness=sharpness, shift=shift)
    p_test[:3] = [0.0, 1.0, 1.0 - 1e-15]  # extremes, as a saturated probe can give
    t = fit_temperature(y_val, p_val, p_test)
    assert t > 0
    for y, p in ((y_val, p_val), (y_test, p_test)):
        scaled = apply_temperature(p, t)
        assert roc_auc_score(y, scaled) == roc_auc_score(y, p)  # exactly: same ranking
        assert (np.argsort(scaled, kind="stable") == np.argsort(p, kind="stable")).all()
    before, after = log_loss(y_val, p_val), log_loss(y_val, apply_temperature(p_val, t))
    assert after <= before
    if sharpness != 1.0:  # miscalibrated by a temperature: strictly better, T on the right side
        assert after < before - 1e-3
        assert (t > 1) == (sharpness > 1)


def test_temperature_without_two_validation_classes_is_one():
    assert fit_temperature([1, 1, 1], [0.2, 0.9, 0.6]) == 1.0
    assert fit_temperature([], []) == 1.0


def test_operating_points_are_chosen_on_validation_and_applied_to_test():
    y_val = np.array([0] * 10 + [1] * 10)
    p_val = np.r_[np.linspace(0.0, 0.9, 10), np.linspace(0.5, 1.0, 10)]
    t_spec = threshold_for_specificity(y_val, p_val)
    assert np.mean(p_val[y_val == 0] < t_spec) >= 0.9  # the rule p >= t on validation
    assert t_spec == pytest.approx(0.8, abs=1e-9)  # just above the 9th lowest negative
    t_sens = threshold_for_sensitivity(y_val, p_val)
    assert np.mean(p_val[y_val == 1] >= t_sens) >= 0.9
    assert t_sens == pytest.approx(p_val[y_val == 1][1])  # the 9th highest positive
    y_test = np.array([0, 0, 0, 1, 1, 1])
    p_test = np.array([0.1, 0.85, 0.3, 0.7, 0.81, 0.95])
    metrics = calibration_metrics(y_test, p_test, y_val, p_val)
    assert metrics["threshold_90_specificity"] == pytest.approx(t_spec)
    assert metrics["sensitivity_at_90_specificity"] == pytest.approx(2 / 3)
    assert metrics["test_specificity_at_90_specificity"] == pytest.approx(2 / 3)
    expected = np.mean(p_test[y_test == 0] < t_sens)
    assert metrics["specificity_at_90_sensitivity"] == pytest.approx(expected)


def test_net_benefit_and_prevalence_shift():
    rng = np.random.default_rng(3)
    y, p = _scores(rng, 500, sharpness=1.0)
    t = 0.2
    tp = np.sum((p >= t) & (y == 1))
    fp = np.sum((p >= t) & (y == 0))
    model, treat_all = net_benefit(y, p, t)
    assert model == pytest.approx(tp / len(y) - fp / len(y) * t / (1 - t))
    assert treat_all == pytest.approx(y.mean() - (1 - y.mean()) * t / (1 - t))
    # a prevalence given: the rates stay, the weights change
    sens, fpr = tp / y.sum(), fp / (len(y) - y.sum())
    model, treat_all = net_benefit(y, p, t, prevalence=0.05)
    assert model == pytest.approx(sens * 0.05 - fpr * 0.95 * t / (1 - t))
    assert treat_all == pytest.approx(0.05 - 0.95 * 0.25)
    # Bayes' rule: there and back, and odds scale by the prevalence odds ratio
    moved = shift_prevalence(p, 0.5, 0.05)
    assert np.allclose(shift_prevalence(moved, 0.05, 0.5), p)
    odds = (moved / (1 - moved)) / (p / (1 - p))
    assert np.allclose(odds, (0.05 / 0.95))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A linear run over planted features (one image per patient)."""
    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    n = 150
    y = (rng.random(n) < 0.4).astype(int)
    X = rng.normal(size=(n, 6))
    X[:, 0] += 1.5 * y
    ids = np.array([f"img{i:03d}" for i in range(n)])
    write_store(folder / "s.zarr", ids, X)
    write_manifest(folder / "m.csv", ids, ids, finding=y)
    return probes.run_linear(
        folder / "s.zarr",
        folder / "m.csv",
        label="finding",
        n_boot=50,
        Cs=[0.01, 1.0],
        prevalence=0.05,
        decision_thresholds=[0.1, 0.3],
    )


def test_every_classification_results_table_has_calibration_beside_the_raw_scores(run):
    results, predictions = run.results, run.predictions
    for column in (
        "auroc",
        "auprc",
        "auroc_ci_low",
        "sens_at_youden",
        "ci",
        "ece",
        "ece_calibrated",
        "brier",
        "brier_calibrated",
        "temperature",
        "sensitivity_at_90_specificity",
        "specificity_at_90_sensitivity",
        "net_benefit_at_0.1",
        "net_benefit_at_0.3",
        "net_benefit_treat_all_at_0.1",
    ):
        assert column in results.columns, column
    assert "budget" not in results.columns and "budget" not in predictions.columns
    assert (results["nb_prevalence"] == 0.05).all()
    assert run.spec.options["prevalence"] == 0.05
    pd.testing.assert_series_equal(
        predictions["score_calibrated"], calibrated_scores(predictions), check_names=False
    )
    for (round_, label), part in predictions.groupby(["round", "label"]):
        test, val = part[part["split"] == "test"], part[part["split"] == "val"]
        row = results[(results["round"] == round_) & (results["label"] == label)].iloc[0]
        truth = test["truth"].to_numpy()
        assert roc_auc_score(truth, test["score_calibrated"]) == row["auroc"]
        assert row["ece"] == pytest.approx(_reference_ece(truth, test["score"].to_numpy()))
        assert row["ece_calibrated"] == pytest.approx(
            _reference_ece(truth, test["score_calibrated"].to_numpy())
        )
        assert row["brier"] == pytest.approx(_reference_brier(truth, test["score"]))
        assert row["val_log_loss_calibrated"] <= row["val_log_loss"] + 1e-12
        assert row["temperature"] == pytest.approx(
            fit_temperature(val["truth"], val["score"], part["score"])
        )
