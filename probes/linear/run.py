"""A whole cross-validated linear probe: the function behind ``probes linear``.

::

    run = probes.run_linear("cohort.zarr", "manifest.csv", label="pneumothorax", out="results/ptx")
    run.results[["round", "auroc", "auroc_ci_low", "auroc_ci_high"]]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Literal

from probes.analysis.grounding import grounding_extras
from probes.core.calibration import check_decision_options
from probes.core.run import CLASSIFICATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.sizes import size_option
from probes.core.splits import REFERENCE_SEED
from probes.core.vectors import cross_predict_vectors, vector_run

__all__ = ["run_linear", "run_linear_spec"]

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
    save_maps: bool = False,
    grounding_mask: str | None = None,
    mask_format: str = "auto",
    image_size: str | tuple[int, int] | None = None,
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
        save_maps: keep each test image's patch logits (``feature`` a grid): the extra
            ``patch_maps.parquet`` (:mod:`probes.core.patchmaps`).
        grounding_mask: a mask column (e.g. ``ptx_rle``): score the patch maps against it
            (pointing game, patch AUROC; :mod:`probes.analysis.grounding`), the extra
            ``grounding.csv``; implies ``save_maps``. mask_format, image_size: how to read it
            (as ``probes seg``).
        n_boot: bootstrap resamples of each CI (over patients; see probes.core.bootstrap).
        progress: a progress bar over rounds.
    """
    labels = (label,) if isinstance(label, str) else tuple(label)
    spec = RunSpec(
        protocol="linear",
        inputs=Inputs.make(store, manifest, encoder, feature, root, allow_subset, allow_partial),
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
            **check_decision_options(prevalence, decision_thresholds),
            "save_maps": save_maps,
            "grounding_mask": grounding_mask,
            "mask_format": mask_format,
            "image_size": size_option(image_size),
        },
        n_boot=n_boot,
    )
    return run_linear_spec(spec, progress=progress).saved(out, table_format)


def run_linear_spec(
    spec: RunSpec, *, progress: bool = False, on_round: Callable[[int], None] | None = None
) -> Run:
    """:func:`run_linear` from its :class:`RunSpec` (a study's unit, a rerun of a run.json)."""
    from probes.linear.backends import resolve_backend
    from probes.linear.probe import LinearProbe, SGDHeadProbe

    options = dict(spec.options)
    grounding = options.get("grounding_mask")
    save_maps = bool(options.get("save_maps")) or grounding is not None
    if save_maps and spec.inputs.feature == "global":
        raise ValueError(
            "patch maps and grounding need a grid: run the linear probe with feature "
            "grid16 or grid32 (--feature grid16)"
        )
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
    balance_by = options.get("balance_by")
    folds = cross_predict_vectors(
        spec, probe, balance_by=balance_by, progress=progress, on_round=on_round
    )
    extras: dict = {}
    if save_maps:
        from probes.linear.maps import linear_patch_maps

        maps = linear_patch_maps(folds.features, folds.split, folds.models, folds.labels)
        extras = grounding_extras(folds.features, maps, options)
    return vector_run(
        spec,
        folds,
        extras=extras,
        probe=type(probe).__name__,
        params=probe.get_params(),
        backend=backend,
        balance_by=balance_by,
        grounding_mask=grounding,
    )
