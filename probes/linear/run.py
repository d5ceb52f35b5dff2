"""A whole cross-validated linear probe: the function behind ``probes linear``.

::

    run = probes.run_linear("cohort.zarr", "manifest.csv", label="pneumothorax", out="results/ptx")
    run.results[["round", "auroc", "auroc_ci_low", "auroc_ci_high"]]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from probes.core.budgets import budget_options, over_budgets
from probes.core.calibration import check_decision_options, decision_options
from probes.core.features import FeatureSet, binary_labels
from probes.core.protocol import folds_table, make_split, open_features, provenance
from probes.core.results import cross_predict, results_table, summary_table
from probes.core.run import CLASSIFICATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.splits import REFERENCE_SEED

__all__ = ["pooled_features", "run_linear", "run_linear_spec"]

Mode = Literal["logistic", "sgd-head"]


def run_linear(
    store: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    label: str | Sequence[str],
    encoder: str | None = None,
    feature: str = "global",
    folds: str = "patient",
    n_folds: int = 5,
    seed: int = REFERENCE_SEED,
    rounds: Sequence[int] | None = None,
    mode: Mode = "logistic",
    backend: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
    Cs: Sequence[float] | None = None,
    balance_by: str | None = None,
    budgets: str | Sequence[float] | None = None,
    budget_draws: int = 1,
    prevalence: float | None = None,
    decision_thresholds: Sequence[float] | None = None,
    n_boot: int = 1000,
    root: str | os.PathLike | None = None,
    allow_subset: bool = False,
    allow_partial: bool = False,
    allow_leakage: bool = False,
    out: str | os.PathLike | None = None,
    table_format: str = "parquet",
    progress: bool = False,
) -> Run:
    """Cross-validated linear probe of one encoder group; returns the :class:`Run` (written
    to ``out`` when given).

    Args:
        store, manifest: the store and the manifest (image_id, patient_id, label columns).
        label: one binary label column, or several (one model each, shared standardisation).
        encoder: group key, key prefix or preset name (needed when the store has several).
        feature: ``global``, or ``grid16``/``grid32`` average-pooled over their patches.
        folds, n_folds, seed, rounds: the split (``patient``: stratified on the labels,
            grouped by patient; ``reference``: the study's rotation; or a manifest column).
        mode: ``logistic`` (:class:`~probes.linear.probe.LinearProbe`, C chosen on each
            round's validation fold) or ``sgd-head`` (the reference study's AdamW head).
        backend, dtype, device, Cs: the logistic probe's solver settings.
        balance_by: a binary confounder column: each round trains on the largest subset of its
            training rows where the confounder is independent of the label.
        budgets, budget_draws: label-efficiency curve: fractions of each training fold
            (``"0.01,0.1,1.0"``) or images per class (``"1,4,16"``), drawn ``budget_draws``
            times by patient, stratified and nested (:mod:`probes.core.budgets`); results per
            (budget, draw). Validation and test rows are untouched.
        prevalence, decision_thresholds: the decision curve's prevalence (default: each test
            fold's own) and the risk thresholds of the ``net_benefit_at_*`` columns (0.1).
        n_boot: bootstrap resamples of each CI (over patients; see probes.core.bootstrap).
        progress: a progress bar over rounds.
    """
    labels = (label,) if isinstance(label, str) else tuple(label)
    spec = RunSpec(
        protocol="linear",
        inputs=Inputs(
            str(store),
            str(manifest),
            encoder,
            feature,
            None if root is None else str(root),
            allow_subset,
            allow_partial,
        ),
        split=SplitSpec.make(folds, n_folds, seed, rounds, allow_leakage, budgets, budget_draws),
        task=TaskSpec(CLASSIFICATION, labels=labels),
        probe="LinearProbe" if mode == "logistic" else "SGDHeadProbe",
        options={
            "mode": mode,
            "backend": backend,
            "dtype": dtype,
            "device": device,
            "Cs": None if Cs is None else [float(c) for c in Cs],
            "balance_by": balance_by,
            "prevalence": prevalence,
            "decision_thresholds": list(check_decision_options(prevalence, decision_thresholds)),
        },
        n_boot=n_boot,
    )
    run = run_linear_spec(spec, progress=progress)
    if out is not None:
        run.write(out, table_format)
    return run


def run_linear_spec(
    spec: RunSpec, *, progress: bool = False, on_round: Callable[[int], None] | None = None
) -> Run:
    """:func:`run_linear` from its :class:`RunSpec` (a study's unit, a rerun of a run.json)."""
    from probes.linear.backends import resolve_backend
    from probes.linear.probe import LinearProbe, SGDHeadProbe

    options = dict(spec.options)
    labels = list(spec.task.labels)
    fs = open_features(spec.inputs)
    Y, positives = binary_labels(fs.labels, labels)
    split = make_split(fs, spec.split, strata=Y)
    balance_by = options.get("balance_by")
    balance = fs.labels(balance_by) if balance_by else None
    X = pooled_features(fs)
    if options.get("mode", "logistic") == "logistic":
        probe = LinearProbe(
            Cs=options.get("Cs"),
            backend=options.get("backend", "auto"),
            dtype=options.get("dtype"),
            device=options.get("device"),
        )
        backend = resolve_backend(options.get("backend", "auto"), device=options.get("device"))
    else:
        probe = SGDHeadProbe(random_state=spec.split.seed, device=options.get("device") or "cpu")
        backend = "torch"
    predictions = over_budgets(
        lambda s: _cross_predict(probe, X, Y, s, fs, spec, balance, progress, on_round),
        split,
        strata=Y,
        patient_ids=fs.patient_ids,
        **budget_options(spec.split),
    )
    results = results_table(
        predictions, n_boot=spec.n_boot, seed=spec.split.seed, **decision_options(spec.options)
    )
    info = provenance(
        spec,
        fs,
        split,
        probe=type(probe).__name__,
        params=probe.get_params(),
        feature=fs.feature,
        labels=labels,
        positive_class=positives,
        backend=backend,
        balance_by=balance_by,
    )
    return Run(
        spec=spec,
        predictions=predictions,
        results=results,
        summary=summary_table(results),
        folds=folds_table(fs, split),
        info=info,
    )


def pooled_features(fs: FeatureSet) -> np.ndarray:
    """``(n, d)`` features of ``fs``: the global vector, or a grid average-pooled over its
    patches."""
    X = fs.load()
    if X.ndim > 2:
        X = X.reshape(len(X), -1, X.shape[-1]).mean(axis=1)
    return X


def _cross_predict(probe, X, Y, split, fs, spec, balance, progress, on_round):
    from tqdm import tqdm

    with tqdm(total=len(split), desc=f"probes linear {fs.key}", disable=not progress) as bar:

        def step(index: int) -> None:
            bar.update()
            if on_round is not None:
                on_round(index)

        return cross_predict(
            probe,
            X,
            Y,
            split,
            ids=fs.ids,
            patient_ids=fs.patient_ids,
            label_names=list(spec.task.labels),
            encoder=fs.key,
            feature=fs.feature,
            seed=spec.split.seed,
            on_round=step,
            balance=balance,
        )
