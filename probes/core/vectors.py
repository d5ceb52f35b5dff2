"""What every probe on feature vectors (linear, MLP, k-NN) does around its estimator: open the
features (a grid average-pooled over its patches), binary labels, the split, per-row
predictions of each round's fitted clone, and the :class:`~probes.core.run.Run`.

::

    folds = cross_predict_vectors(spec, MLPProbe(random_state=spec.split.seed))
    run = vector_run(spec, folds, probe="MLPProbe", params=probe.get_params())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from probes.core.budgets import budget_options, over_budgets
from probes.core.calibration import decision_options
from probes.core.features import FeatureSet, binary_labels
from probes.core.protocol import folds_table, make_split, open_features, provenance
from probes.core.results import cross_predict, results_table, summary_table
from probes.core.run import Run, RunSpec
from probes.core.splits import Split

__all__ = ["VectorFolds", "cross_predict_vectors", "pooled_features", "vector_run"]


@dataclass
class VectorFolds:
    """A cross-validated probe on vectors: the features, split, per-row predictions and each
    round's fitted model (``models[round]``)."""

    features: FeatureSet
    split: Split
    labels: list[str]
    positives: dict[str, Any]
    predictions: pd.DataFrame
    models: dict[int, Any] = field(default_factory=dict)


def pooled_features(fs: FeatureSet) -> np.ndarray:
    """``(n, d)`` features of ``fs``: the global vector, or a grid average-pooled over its
    patches."""
    X = fs.load()
    if X.ndim > 2:
        X = X.reshape(len(X), -1, X.shape[-1]).mean(axis=1)
    return X


def cross_predict_vectors(
    spec: RunSpec,
    probe: Any,
    *,
    balance_by: str | None = None,
    progress: bool = False,
    on_round: Callable[[int], None] | None = None,
) -> VectorFolds:
    """Fit a clone of ``probe`` per round of ``spec``'s split on its features (validation fold
    to ``fit(X_val=, y_val=)``) and predict the validation and test rows; once per (budget,
    draw) when the split has label budgets (:mod:`probes.core.budgets`)."""
    from tqdm import tqdm

    labels = list(spec.task.labels)
    fs = open_features(spec.inputs)
    Y, positives = binary_labels(fs.labels, labels)
    split = make_split(fs, spec.split, strata=Y)
    balance = fs.labels(balance_by) if balance_by else None
    X = pooled_features(fs)
    models: dict[int, Any] = {}
    desc = f"probes {spec.protocol} {fs.key}"
    budgets = budget_options(spec.split)
    fits = len(budgets["budgets"]) * budgets["draws"] if budgets["budgets"] else 1
    with tqdm(total=len(split) * fits, desc=desc, disable=not progress) as bar:

        def step(index: int) -> None:
            bar.update()
            if on_round is not None:
                on_round(index)

        def predict(rounds: Split) -> pd.DataFrame:
            return cross_predict(
                probe,
                X,
                Y,
                rounds,
                ids=fs.ids,
                patient_ids=fs.patient_ids,
                label_names=labels,
                encoder=fs.key,
                feature=fs.feature,
                seed=spec.split.seed,
                on_round=step,
                balance=balance,
                on_fit=models.__setitem__,
            )

        # with budgets, each (budget, draw) refits every round; models keep the last fitted,
        # the largest budget's (what patch maps show)
        predictions = over_budgets(predict, split, strata=Y, patient_ids=fs.patient_ids, **budgets)
    return VectorFolds(fs, split, labels, positives, predictions, models)


def vector_run(
    spec: RunSpec, folds: VectorFolds, *, extras: dict[str, Any] | None = None, **fields: Any
) -> Run:
    """The :class:`Run` of ``folds``: results with patient-bootstrap CIs, summary, fold
    table, and provenance plus the protocol's ``fields`` (probe, params, ...)."""
    results = results_table(
        folds.predictions,
        n_boot=spec.n_boot,
        seed=spec.split.seed,
        **decision_options(spec.options),
    )
    info = provenance(
        spec,
        folds.features,
        folds.split,
        feature=folds.features.feature,
        labels=folds.labels,
        positive_class=folds.positives,
        **fields,
    )
    return Run(
        spec=spec,
        predictions=folds.predictions,
        results=results,
        summary=summary_table(results),
        folds=folds_table(folds.features, folds.split),
        info=info,
        extras=dict(extras or {}),
    )
