"""A whole cross-validated k-NN probe: the function behind ``probes knn``.

::

    run = probes.run_knn("cohort.zarr", "manifest.csv", label="pneumothorax", out="results/knn")

The linear probe's folds, predictions (:data:`probes.core.results.PREDICTION_COLUMNS`; ``C`` is
empty; ``score`` is the weighted share of positive neighbours) and tables, with
:class:`~probes.knn.probe.KNNProbe`; the k chosen on each round's validation fold is recorded in
``run.json`` (``fitted``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from probes.core.calibration import check_decision_options
from probes.core.run import CLASSIFICATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.splits import REFERENCE_SEED
from probes.core.vectors import cross_predict_vectors, vector_run

__all__ = ["run_knn", "run_knn_spec"]


def run_knn(
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
    ks: Sequence[int] | None = None,
    k: int | None = None,
    temperature: float = 0.07,
    device: str | None = None,
    n_boot: int = 1000,
    root: str | os.PathLike | None = None,
    allow_subset: bool = False,
    allow_partial: bool = False,
    allow_leakage: bool = False,
    out: str | os.PathLike | None = None,
    table_format: str = "parquet",
    progress: bool = False,
) -> Run:
    """Cross-validated cosine k-NN probe of one encoder group; returns the :class:`Run`
    (written to ``out`` when given).

    Args:
        budgets, budget_draws, prevalence, decision_thresholds: as :func:`probes.run_linear`.
        ks: the k grid chosen from on each round's validation fold (default
            :data:`probes.knn.probe.DEFAULT_KS`). k: a fixed k instead.
        temperature: the vote weights' ``T`` (``exp(similarity / T)``; DINO's 0.07).
        device: ``None`` (numpy) or a torch device for the search (``cuda``).
        Other arguments as :func:`probes.run_linear`.
    """
    params: dict = {"temperature": float(temperature), "device": device}
    if ks is not None:
        params["ks"] = [int(v) for v in ks]
    if k is not None:
        params["k"] = int(k)
    spec = RunSpec(
        protocol="knn",
        inputs=Inputs.make(store, manifest, encoder, feature, root, allow_subset, allow_partial),
        split=SplitSpec.make(folds, n_folds, seed, rounds, allow_leakage, budgets, budget_draws),
        task=TaskSpec(CLASSIFICATION, labels=(label,) if isinstance(label, str) else tuple(label)),
        probe="KNNProbe",
        params=params,
        options={
            **check_decision_options(prevalence, decision_thresholds),
        },
        n_boot=n_boot,
    )
    return run_knn_spec(spec, progress=progress).saved(out, table_format)


def run_knn_spec(
    spec: RunSpec, *, progress: bool = False, on_round: Callable[[int], None] | None = None
) -> Run:
    """:func:`run_knn` from its :class:`RunSpec` (a study's unit, a rerun of a run.json)."""
    from probes.knn.probe import KNNProbe

    params = dict(spec.params)
    if params.get("ks") is not None:
        params["ks"] = tuple(params["ks"])
    probe = KNNProbe(**params)
    folds = cross_predict_vectors(spec, probe, progress=progress, on_round=on_round)
    fitted = [{"round": r, "k": [int(v) for v in m.k_]} for r, m in sorted(folds.models.items())]
    return vector_run(
        spec, folds, probe=type(probe).__name__, params=probe.get_params(), fitted=fitted
    )
