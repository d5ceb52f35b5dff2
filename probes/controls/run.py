"""A whole control baseline: the function behind ``probes control``.

::

    stats = probes.run_control("cohort.zarr", "manifest.csv", kind="image-stats",
                               label="pneumothorax", metadata=["view"], out="runs/image-stats")
    floor = probes.run_control("cohort.zarr", "manifest.csv", kind="shuffled-label",
                               label="pneumothorax", encoder="rad-dino", out="runs/shuffled")

Both run :class:`~probes.linear.probe.LinearProbe` on the folds an encoder's linear probe uses
(the store group fixes the rows, so the same images land in the same folds and the report pairs
the control with the encoders), write the same per-row predictions and results (calibration
columns, budgets) and record ``control`` in ``run.json``. ``image-stats`` reads no features
from the store: its ``encoder`` column is ``image-stats``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from probes.core.budgets import budget_options, over_budgets
from probes.core.calibration import check_decision_options, decision_options
from probes.core.features import binary_labels
from probes.core.protocol import folds_table, make_split, open_features, provenance
from probes.core.results import cross_predict, results_table, summary_table
from probes.core.run import CLASSIFICATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.splits import REFERENCE_SEED

__all__ = ["CONTROL_KINDS", "IMAGE_STATS", "SHUFFLED_LABEL", "run_control", "run_control_spec"]

IMAGE_STATS, SHUFFLED_LABEL = "image-stats", "shuffled-label"
CONTROL_KINDS = (IMAGE_STATS, SHUFFLED_LABEL)
Kind = Literal["image-stats", "shuffled-label"]


def run_control(
    store: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    kind: Kind,
    label: str | Sequence[str],
    encoder: str | None = None,
    feature: str = "global",
    metadata: Sequence[str] = (),
    bins: int = 32,
    folds: str = "patient",
    n_folds: int = 5,
    seed: int = REFERENCE_SEED,
    rounds: Sequence[int] | None = None,
    backend: str = "auto",
    Cs: Sequence[float] | None = None,
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
    """A control baseline run; returns the :class:`Run` (written to ``out`` when given).

    Args:
        kind: ``image-stats`` (histogram, size and ``metadata`` columns; ``bins`` histogram
            bins) or ``shuffled-label`` (``encoder``'s ``feature``, training labels permuted
            with the split seed; validation and test truth kept).
        store, encoder: the store group whose rows are probed (for ``image-stats`` only its
            rows: the encoders' folds); the features of ``shuffled-label``.
        metadata: manifest columns added to the image statistics (``view``, ``sex``...); a
            label column is refused.
        Other arguments as :func:`probes.run_linear`.
    """
    if kind not in CONTROL_KINDS:
        raise ValueError(f"control kind must be one of {CONTROL_KINDS}, got {kind!r}")
    labels = (label,) if isinstance(label, str) else tuple(label)
    leaked = sorted(set(metadata) & set(labels))
    if leaked:
        raise ValueError(f"metadata column(s) {leaked} are the label: the control would be void")
    if metadata and kind != IMAGE_STATS:
        raise ValueError("metadata columns belong to the image-stats control")
    spec = RunSpec(
        protocol="control",
        inputs=Inputs.make(store, manifest, encoder, feature, root, allow_subset, allow_partial),
        split=SplitSpec.make(folds, n_folds, seed, rounds, allow_leakage, budgets, budget_draws),
        task=TaskSpec(CLASSIFICATION, labels=labels),
        probe="LinearProbe" if kind == IMAGE_STATS else "ShuffledLabelProbe",
        options={
            "kind": kind,
            "metadata": list(metadata),
            "bins": int(bins),
            "backend": backend,
            "Cs": None if Cs is None else [float(c) for c in Cs],
            **check_decision_options(prevalence, decision_thresholds),
        },
        n_boot=n_boot,
    )
    return run_control_spec(spec, progress=progress).saved(out, table_format)


def run_control_spec(spec: RunSpec, *, progress: bool = False) -> Run:
    """:func:`run_control` from its :class:`RunSpec` (a study's unit)."""
    from probes.linear.backends import resolve_backend
    from probes.linear.probe import LinearProbe

    o = dict(spec.options)
    kind, labels = o["kind"], list(spec.task.labels)
    fs = open_features(spec.inputs)
    Y, positives = binary_labels(fs.labels, labels)
    split = make_split(fs, spec.split, strata=Y)
    probe = LinearProbe(Cs=o.get("Cs"), backend=o.get("backend", "auto"))
    fields: dict[str, object] = {"control": kind, "rows_from": fs.key}
    if kind == IMAGE_STATS:
        from probes.controls.image_stats import image_stats_features

        X, names = image_stats_features(
            fs.table, o.get("metadata") or (), int(o.get("bins", 32)), progress=progress
        )
        estimator, encoder, feature = probe, IMAGE_STATS, IMAGE_STATS
        fields.update(features=names, metadata=list(o.get("metadata") or ()))
    else:
        from probes.controls.shuffled import ShuffledLabelProbe
        from probes.core.vectors import pooled_features

        X = pooled_features(fs)
        estimator = ShuffledLabelProbe(probe, random_state=spec.split.seed)
        encoder, feature = fs.key, fs.feature
    predictions = over_budgets(
        lambda s: cross_predict(
            estimator,
            X,
            Y,
            s,
            ids=fs.ids,
            patient_ids=fs.patient_ids,
            label_names=labels,
            encoder=encoder,
            feature=feature,
            seed=spec.split.seed,
        ),
        split,
        strata=Y,
        patient_ids=fs.patient_ids,
        **budget_options(spec.split),
    )
    results = results_table(
        predictions, n_boot=spec.n_boot, seed=spec.split.seed, **decision_options(o)
    )
    info = provenance(
        spec,
        fs,
        split,
        probe=type(estimator).__name__,
        params=estimator.get_params(deep=False),
        feature=feature,
        labels=labels,
        positive_class=positives,
        backend=resolve_backend(o.get("backend", "auto")),
        **fields,
    )
    info["encoder"] = encoder  # image-stats reads no encoder: say so where reports look
    return Run(
        spec=spec,
        predictions=predictions,
        results=results,
        summary=summary_table(results),
        folds=folds_table(fs, split),
        info=info,
    )
