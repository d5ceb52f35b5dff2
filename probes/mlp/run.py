"""A whole cross-validated MLP probe: the function behind ``probes mlp``.

::

    run = probes.run_mlp("cohort.zarr", "manifest.csv", label="pneumothorax", out="results/mlp")

The linear probe's folds, predictions (:data:`probes.core.results.PREDICTION_COLUMNS`; ``C`` is
empty) and tables, with :class:`~probes.mlp.probe.MLPProbe` in place of the logistic probe;
each round's best epoch is recorded in ``run.json`` (``fitted``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from probes.core.calibration import check_decision_options
from probes.core.run import CLASSIFICATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.splits import REFERENCE_SEED
from probes.core.vectors import cross_predict_vectors, vector_run

__all__ = ["run_mlp", "run_mlp_spec"]


def run_mlp(
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
    budgets: str | Sequence[float] | None = None,
    budget_draws: int = 1,
    prevalence: float | None = None,
    decision_thresholds: Sequence[float] | None = None,
    probe_params: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    root: str | os.PathLike | None = None,
    allow_subset: bool = False,
    allow_partial: bool = False,
    allow_leakage: bool = False,
    out: str | os.PathLike | None = None,
    table_format: str = "parquet",
    progress: bool = False,
) -> Run:
    """Cross-validated MLP probe of one encoder group; returns the :class:`Run` (written to
    ``out`` when given).

    Args:
        budgets, budget_draws, prevalence, decision_thresholds: as :func:`probes.run_linear`.
        label: one binary label column, or several (one output each, a shared hidden layer).
        feature: ``global``, or ``grid16``/``grid32`` average-pooled over their patches.
        probe_params: :class:`~probes.mlp.probe.MLPProbe` parameters (``hidden``, ``dropout``,
            ``lr``, ``device``...); ``random_state`` is the split seed.
        Other arguments as :func:`probes.run_linear`.
    """
    params = {k: v for k, v in dict(probe_params or {}).items() if k != "random_state"}
    spec = RunSpec(
        protocol="mlp",
        inputs=Inputs.make(store, manifest, encoder, feature, root, allow_subset, allow_partial),
        split=SplitSpec.make(folds, n_folds, seed, rounds, allow_leakage, budgets, budget_draws),
        task=TaskSpec(CLASSIFICATION, labels=(label,) if isinstance(label, str) else tuple(label)),
        probe="MLPProbe",
        params=params,
        options={
            **check_decision_options(prevalence, decision_thresholds),
        },
        n_boot=n_boot,
    )
    return run_mlp_spec(spec, progress=progress).saved(out, table_format)


def run_mlp_spec(
    spec: RunSpec, *, progress: bool = False, on_round: Callable[[int], None] | None = None
) -> Run:
    """:func:`run_mlp` from its :class:`RunSpec` (a study's unit, a rerun of a run.json)."""
    from probes.mlp.probe import MLPProbe

    probe = MLPProbe(random_state=spec.split.seed, **dict(spec.params))
    folds = cross_predict_vectors(spec, probe, progress=progress, on_round=on_round)
    fitted = [
        {"round": r, "best_epoch": int(m.best_epoch_), "epochs": int(m.n_epochs_)}
        for r, m in sorted(folds.models.items())
    ]
    return vector_run(
        spec, folds, probe=type(probe).__name__, params=probe.get_params(), fitted=fitted
    )
