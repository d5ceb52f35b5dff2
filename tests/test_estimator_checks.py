"""scikit-learn's own estimator checks on the vector probes: the checks each passes are pinned, so a
change that breaks one more fails here (one that fixes one only needs this list shortened).

The checks they fail, as of 2026-12-06, are by design or known: the probes are binary or
multilabel 0/1 and refuse a multi-class, regression or multi-output target with their own
message (``check_classifier_multioutput``, ``check_classifier_not_supporting_multiclass``,
``check_classifiers_regression_target``, ``check_requires_y_none``); an early-stopping or
standardising probe cannot fit one sample (``check_fit2d_1sample``). Known weak, not yet
looked into: ``SGDHeadProbe`` fails an assertion of ``check_classifiers_train`` (5 epochs);
``KNNProbe``'s float32 blocked search differs by ~1e-6 on a subset of the queries
(``check_methods_subset_invariance``), and its vote shares reach exactly 0 and 1, which the
multilabel ``predict_proba`` check refuses. (``KNNProbe`` accepted X and y of different lengths
until this test was written.)
"""

from __future__ import annotations

import warnings

import pytest
from sklearn.utils.estimator_checks import check_estimator

from probes.knn.probe import KNNProbe
from probes.linear.probe import LinearProbe, SGDHeadProbe
from probes.mlp.probe import MLPProbe

BY_DESIGN = {
    "check_classifier_multioutput",
    "check_classifier_not_supporting_multiclass",
    "check_classifiers_regression_target",
    "check_fit2d_1sample",
    "check_requires_y_none",
}


@pytest.mark.parametrize(
    ("estimator", "passed", "known_failures"),
    [
        (LinearProbe(), 55, BY_DESIGN),
        (SGDHeadProbe(max_epochs=5), 52, BY_DESIGN | {"check_classifiers_train"}),
        (MLPProbe(max_epochs=5), 55, BY_DESIGN),
        (
            KNNProbe(),
            53,
            BY_DESIGN
            | {
                "check_methods_subset_invariance",
                "check_classifiers_multilabel_output_format_predict_proba",
            },
        ),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, (int, set)) else None,
)
def test_scikit_learn_estimator_checks(estimator, passed, known_failures):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    assert failed <= known_failures, f"newly failing: {sorted(failed - known_failures)}"
    assert sum(r["status"] == "passed" for r in results) >= passed
