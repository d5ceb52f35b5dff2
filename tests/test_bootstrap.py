"""probes.core.bootstrap, the one patient bootstrap behind every CI: its weighted metrics equal
scikit-learn's with sample weights, and its intervals equal the textbook loop over patient
resamples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from probes.core.bootstrap import clustered_ci, clustered_mean_ci, weighted_metrics


def test_weighted_metrics_equal_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 60)
    score = np.round(rng.random(60), 1)  # many ties
    weights = rng.integers(0, 4, (5, 60))
    got = weighted_metrics(truth, score, weights)
    for b, w in enumerate(weights):
        assert got["auroc"][b] == pytest.approx(roc_auc_score(truth, score, sample_weight=w))
        assert got["auprc"][b] == pytest.approx(
            average_precision_score(truth, score, sample_weight=w)
        )
        positive, called = truth == 1, score >= 0.5
        assert got["sens_at_0.5"][b] == pytest.approx(
            w[positive & called].sum() / w[positive].sum()
        )
        assert got["spec_at_0.5"][b] == pytest.approx(
            w[~positive & ~called].sum() / w[~positive].sum()
        )
    none = weighted_metrics(truth, score, np.where(truth == 1, 0, 1)[None])  # no positives
    assert np.isnan(none["auroc"][0]) and np.isnan(none["sens_at_0.5"][0])
    negatives = truth == 0
    assert none["spec_at_0.5"][0] == pytest.approx((score[negatives] < 0.5).mean())


def test_clustered_ci_equals_a_loop_over_patient_resamples():
    """The one bootstrap equals the textbook loop: draw the sorted patients with replacement,
    take all their rows, compute scikit-learn's metric (or the mean), percentiles."""
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i:02d}" for i in range(30)], rng.integers(1, 4, 30))
    truth = rng.integers(0, 2, len(patients))
    score = np.clip(truth * 0.3 + rng.random(len(patients)) * 0.8, 0, 1)
    fast = clustered_ci(truth, score, patients, n_boot=300, seed=11)
    uniques = np.unique(patients)
    members = [np.flatnonzero(patients == p) for p in uniques]
    draws = np.random.default_rng(11).integers(0, len(uniques), size=(300, len(uniques)))
    resampled = [np.concatenate([members[i] for i in d]) for d in draws]
    for name, metric in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        values = [metric(truth[r], score[r]) for r in resampled if len(np.unique(truth[r])) == 2]
        assert fast[name] == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))
    dice = rng.random(len(patients))
    means = [dice[r].mean() for r in resampled]
    assert clustered_mean_ci(dice, patients, n_boot=300, seed=11) == pytest.approx(
        tuple(np.quantile(means, [0.025, 0.975]))
    )
