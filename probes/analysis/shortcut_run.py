"""A whole shortcut check: the function behind ``probes shortcut``.

::

    run = probes.run_shortcut("cohort.zarr", "manifest.csv", confounder="chest_tube",
                              label="pneumothorax", size_column="ptx_area_pct", out="tube/")
    run.extras["shortcut.json"]["sensitivity_gap"]["plain"]["gap"]

The run holds the probe of the confounder and, with ``label``, the label probe trained plainly
(label ``pneumothorax``) and on confounder-balanced training rows (``pneumothorax:balanced``);
its extras are ``subgroups.csv`` (both label probes by confounder, and by lesion-size quantile
with ``size_column``) and ``shortcut.json`` (the confounder's AUROC with its CI, the sensitivity
gap with vs without the confounder for both label probes). Every step is a function of
:mod:`probes.analysis.shortcuts` and :mod:`probes.analysis.subgroups`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from probes.analysis.shortcuts import shortcut_probe, shortcut_summary
from probes.analysis.subgroups import sensitivity_gap, subgroup_table
from probes.core.budgets import BUDGET_COLUMNS, budget_options, largest_budget, over_budgets
from probes.core.calibration import check_decision_options, decision_options
from probes.core.features import binary_labels
from probes.core.protocol import folds_table, make_split, open_features, provenance
from probes.core.results import cross_predict, results_table, summary_table
from probes.core.run import CLASSIFICATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.splits import REFERENCE_SEED

__all__ = ["BALANCED_SUFFIX", "parse_threshold", "run_shortcut", "run_shortcut_spec"]

#: Appended to the label name of the probe trained on confounder-balanced rows.
BALANCED_SUFFIX = ":balanced"


def run_shortcut(
    store: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    confounder: str,
    label: str | None = None,
    encoder: str | None = None,
    feature: str = "global",
    folds: str = "patient",
    n_folds: int = 5,
    seed: int = REFERENCE_SEED,
    rounds: Sequence[int] | None = None,
    backend: str = "auto",
    Cs: Sequence[float] | None = None,
    threshold: float | str = "youden",
    size_column: str | None = None,
    size_bins: int = 4,
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
    """Is binary ``confounder`` decodable from the features, and does the ``label`` probe lean
    on it? Returns the :class:`Run` (written to ``out`` when given).

    Args:
        threshold: operating point of the sensitivities: ``youden`` (each round's, from its
            validation rows; the default, since balanced training shifts the prevalence the
            probabilities are calibrated to) or a probability such as 0.5 (the reference's).
        size_column, size_bins: lesion size column and its quantile bins in subgroups.csv.
        budgets, budget_draws: every probe on cut training folds (see
            :func:`probes.run_linear`); subgroups.csv and shortcut.json describe the largest
            budget's draw 0, predictions and results every (budget, draw).
        Other arguments as :func:`probes.run_linear`.
    """
    threshold = parse_threshold(threshold)
    if label is not None and label == confounder:
        raise ValueError(f"label and confounder are both {label!r}")
    labels = (confounder,) if label is None else (confounder, label)
    spec = RunSpec(
        protocol="shortcut",
        inputs=Inputs.make(store, manifest, encoder, feature, root, allow_subset, allow_partial),
        split=SplitSpec.make(folds, n_folds, seed, rounds, allow_leakage, budgets, budget_draws),
        task=TaskSpec(CLASSIFICATION, labels=labels),
        probe="LinearProbe",
        options={
            "confounder": confounder,
            "label": label,
            "backend": backend,
            "Cs": None if Cs is None else [float(c) for c in Cs],
            "threshold": threshold,
            "size_column": size_column,
            "size_bins": size_bins,
            **check_decision_options(prevalence, decision_thresholds),
        },
        n_boot=n_boot,
    )
    return run_shortcut_spec(spec).saved(out, table_format)


def run_shortcut_spec(spec: RunSpec) -> Run:
    """:func:`run_shortcut` from its :class:`RunSpec` (a study's unit)."""
    from probes.core.vectors import pooled_features
    from probes.linear.backends import resolve_backend
    from probes.linear.probe import LinearProbe

    o = dict(spec.options)
    name, label_name, n_boot, seed = o["confounder"], o.get("label"), spec.n_boot, spec.split.seed
    threshold = o.get("threshold", "youden")
    fs = open_features(spec.inputs)
    coded, positives = binary_labels(fs.labels, [name])
    confounder = coded[:, 0]
    label = None
    if label_name is not None:
        coded_label, label_positive = binary_labels(fs.labels, [label_name])
        label = coded_label[:, 0]
        positives.update(label_positive)
    strata = confounder if label is None else np.column_stack([label, confounder])
    split = make_split(fs, spec.split, strata=strata)
    X = pooled_features(fs)
    probe = LinearProbe(Cs=o.get("Cs"), backend=o.get("backend", "auto"))
    common = dict(ids=fs.ids, patient_ids=fs.patient_ids, encoder=fs.key, feature=fs.feature)

    def predict(s) -> pd.DataFrame:
        frames = [shortcut_probe(X, confounder, s, name=name, probe=probe, seed=seed, **common)]
        if label is not None:
            frames += [
                cross_predict(
                    probe,
                    X,
                    label,
                    s,
                    label_names=[label_name + suffix],
                    seed=seed,
                    balance=balance,
                    **common,
                )
                for suffix, balance in (("", None), (BALANCED_SUFFIX, confounder))
            ]
        return pd.concat(frames, ignore_index=True)

    predictions = over_budgets(
        predict, split, strata=strata, patient_ids=fs.patient_ids, **budget_options(spec.split)
    )
    main = largest_budget(predictions).drop(columns=list(BUDGET_COLUMNS), errors="ignore")
    tube = main[main["label"] == name]
    report: dict[str, object] = {
        "confounder": name,
        "confounder_probe": shortcut_summary(tube, n_boot=n_boot, seed=seed),
    }
    extras: dict[str, object] = {}
    if label is not None:
        plain = main[main["label"] == label_name]
        balanced = main[main["label"] == label_name + BALANCED_SUFFIX]
        report.update(
            _label_report(
                fs, name, label_name, label, confounder, plain, balanced, threshold, n_boot, seed
            )
        )
        extras["subgroups.csv"] = subgroup_table(
            pd.concat([plain, balanced], ignore_index=True),
            fs.table,
            by=[name],
            size_column=o.get("size_column"),
            size_bins=o.get("size_bins", 4) if o.get("size_column") else 0,
            threshold=threshold,
            n_boot=n_boot,
            seed=seed,
        )
    extras["shortcut.json"] = report  # NaN is written as null
    results = results_table(predictions, n_boot=n_boot, seed=seed, **decision_options(o))
    info = provenance(
        spec,
        fs,
        split,
        probe=type(probe).__name__,
        params=probe.get_params(),
        feature=fs.feature,
        confounder=name,
        label=label_name,
        positive_class=positives,
        threshold=threshold,
        backend=resolve_backend(o.get("backend", "auto")),
    )
    return Run(
        spec=spec,
        predictions=predictions,
        results=results,
        summary=summary_table(results),
        folds=folds_table(fs, split),
        info=info,
        extras=extras,
    )


def _label_report(
    fs, name, label_name, label, confounder, plain, balanced, threshold, n_boot, seed
) -> dict[str, object]:
    """Label-probe part of shortcut.json: confounder rates, AUROCs and sensitivity gaps."""
    coded = pd.DataFrame({"image_id": fs.ids, name: confounder})
    gaps, aurocs = {}, {}
    for kind, rows in (("plain", plain), ("balanced", balanced)):
        gaps[kind] = sensitivity_gap(
            rows, coded, name, threshold=threshold, n_boot=n_boot, seed=seed
        )
        aurocs[kind] = shortcut_summary(rows, n_boot=n_boot, seed=seed)
    return {
        "label": label_name,
        "confounder_rate": {
            "label_positive": float(confounder[label == 1].mean()),
            "label_negative": float(confounder[label == 0].mean()),
        },
        "label_probe": aurocs,
        "sensitivity_gap": gaps,
    }


def parse_threshold(value: float | str) -> float | str:
    """``youden`` or a probability in [0, 1] (text or number)."""
    if value == "youden":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"threshold must be 'youden' or a probability, got {value!r}")
    return number
