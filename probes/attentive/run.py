"""A whole cross-validated attentive probe: the function behind ``probes attentive``.

::

    run = probes.run_attentive("cohort.zarr", "manifest.csv", label="pneumothorax",
                               grounding_mask="ptx_rle", out="results/ptx-attentive")
    run.results                                  # the linear probe's tables, same columns
    run.extras["patch_maps.parquet"]             # attention and contribution maps per test image
    run.extras["grounding.csv"]                  # pointing game, patch AUROC per image

Each round fits one :class:`~probes.attentive.probe.AttentiveProbe` per label on the round's
training rows (grids streamed from the store), early-stopping on its validation fold, and
scores its validation and test rows; predictions have the linear probe's columns
(:data:`probes.core.results.PREDICTION_COLUMNS`; ``C`` is empty), so results tables, the report,
paired tests and studies treat both alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from probes.analysis.grounding import grounding_extras
from probes.core.budgets import budget_options, over_budgets
from probes.core.calibration import check_decision_options
from probes.core.features import binary_labels
from probes.core.grids import StoreGrids, grid_names
from probes.core.patchmaps import PATCH_MAPS, maps_frame
from probes.core.protocol import make_split, open_features
from probes.core.results import predictions_table, row_frame
from probes.core.run import CLASSIFICATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.sizes import size_option
from probes.core.splits import REFERENCE_SEED, Split
from probes.core.vectors import VectorFolds, vector_run

__all__ = ["run_attentive", "run_attentive_spec"]


def run_attentive(
    store: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    label: str | Sequence[str],
    encoder: str | None = None,
    grid: str = "16",
    folds: str = "patient",
    n_folds: int = 5,
    seed: int = REFERENCE_SEED,
    rounds: Sequence[int] | None = None,
    budgets: str | Sequence[float] | None = None,
    budget_draws: int = 1,
    prevalence: float | None = None,
    decision_thresholds: Sequence[float] | None = None,
    probe_params: Mapping[str, Any] | None = None,
    save_maps: bool = True,
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
    """Cross-validated attentive probe of one encoder group; returns the :class:`Run`
    (written to ``out`` when given).

    Args:
        budgets, budget_draws, prevalence, decision_thresholds: as :func:`probes.run_linear`
            (with budgets, patch maps and grounding come from the largest budget's first draw).
        label: one binary label column, or several (one probe each).
        grid: ``16`` or ``32``: the patch grid whose tokens are pooled.
        folds, n_folds, seed, rounds: the split, as :func:`probes.run_linear`.
        probe_params: :class:`~probes.attentive.probe.AttentiveProbe` parameters (``lr``,
            ``n_queries``, ``batch_size``, ``max_epochs``, ``device``...); ``seed`` is the
            split seed.
        save_maps: keep each test image's attention and contribution maps
            (``patch_maps.parquet``) for the report's overlays.
        grounding_mask: a mask column (``ptx_rle``): score the maps against it (pointing game,
            patch AUROC), the extra ``grounding.csv``. mask_format, image_size: as ``probes seg``.
        n_boot: bootstrap resamples of each CI (over patients).
    """
    labels = (label,) if isinstance(label, str) else tuple(label)
    params = dict(probe_params or {})
    params.pop("seed", None)
    params["grid"] = grid_names(str(params.get("grid", grid)))[0]
    spec = RunSpec(
        protocol="attentive",
        inputs=Inputs.make(
            store, manifest, encoder, params["grid"], root, allow_subset, allow_partial
        ),
        split=SplitSpec.make(folds, n_folds, seed, rounds, allow_leakage, budgets, budget_draws),
        task=TaskSpec(CLASSIFICATION, labels=labels),
        probe="AttentiveProbe",
        params=params,
        options={
            **check_decision_options(prevalence, decision_thresholds),
            "save_maps": save_maps,
            "grounding_mask": grounding_mask,
            "mask_format": mask_format,
            "image_size": size_option(image_size),
        },
        n_boot=n_boot,
    )
    return run_attentive_spec(spec, progress=progress).saved(out, table_format)


def run_attentive_spec(
    spec: RunSpec, *, progress: bool = False, on_round: Callable[[int], None] | None = None
) -> Run:
    """:func:`run_attentive` from its :class:`RunSpec` (a study's unit, a rerun of a run.json)."""
    from tqdm import tqdm

    from probes.attentive.probe import AttentiveProbe

    options = dict(spec.options)
    probe = AttentiveProbe(seed=spec.split.seed, **dict(spec.params))
    labels = list(spec.task.labels)
    fs = open_features(spec.inputs, grid_names(probe.grid)[0])
    Y, positives = binary_labels(fs.labels, labels)
    split = make_split(fs, spec.split, strata=Y)
    grids = StoreGrids(fs.group, fs.rows, grid_names(probe.grid))
    ids, patients = np.asarray(fs.ids, str), np.asarray(fs.patient_ids, str)
    budgets = budget_options(spec.split)
    # patch maps of the largest budget's first draw only (all rows without budgets)
    largest = max(budgets["budgets"]) if budgets["budgets"] else None
    now: dict[str, Any] = {"budget": largest, "draw": 0}
    maps, fitted = [], []

    def predict(rounds: Split) -> pd.DataFrame:
        frames = []
        keep_maps = now["budget"] == largest and now["draw"] == 0
        for r in rounds:
            for j, name in enumerate(labels):
                model = clone(probe)
                has_val = len(r.val) > 0
                model.fit(
                    grids.subset(r.train),
                    Y[r.train, j],
                    grids.subset(r.val) if has_val else None,
                    Y[r.val, j] if has_val else None,
                    groups=patients[r.train],
                )
                budget = {"budget": now["budget"], "draw": now["draw"]} if largest else {}
                fitted.append(
                    {
                        "round": r.index,
                        "label": name,
                        **budget,
                        "best_epoch": int(model.best_epoch_),
                        "epochs": int(model.n_epochs_),
                    }
                )
                for part, rows in (("val", r.val), ("test", r.test)):
                    if not len(rows):
                        continue
                    outputs = list(model.iter_outputs(grids.subset(rows)))
                    logits = np.concatenate([z for _, z, _, _ in outputs])
                    frames.append(
                        row_frame(
                            ids,
                            patients,
                            split.folds,
                            rows,
                            round_index=r.index,
                            split=part,
                            label=name,
                            truth=Y[rows, j],
                            score=1.0 / (1.0 + np.exp(-logits)),
                            C=np.nan,
                        )
                    )
                    if part == "test" and keep_maps:
                        for kind, k in (("score", 3), ("attention", 2)):
                            values = np.concatenate([o[k] for o in outputs])
                            maps.append(
                                maps_frame(
                                    ids[rows],
                                    patients[rows],
                                    values,
                                    round_index=r.index,
                                    label=name,
                                    kind=kind,
                                )
                            )
            bar.update()
            if on_round is not None:
                on_round(r.index)
        return _predictions(frames, fs.key, fs.feature, probe)

    def on_budget(budget: float, draw: int) -> None:
        now.update(budget=budget, draw=draw)

    fits = len(budgets["budgets"]) * budgets["draws"] if budgets["budgets"] else 1
    desc = f"probes attentive {fs.key}"
    with tqdm(total=len(split) * fits, desc=desc, disable=not progress) as bar:
        predictions = over_budgets(
            predict, split, strata=Y, patient_ids=fs.patient_ids, on_budget=on_budget, **budgets
        )
    folds = VectorFolds(fs, split, labels, positives, predictions)
    extras: dict[str, Any] = {}
    if maps and (options.get("save_maps", True) or options.get("grounding_mask")):
        extras = grounding_extras(fs, pd.concat(maps, ignore_index=True), options)
        if not options.get("save_maps", True):  # grounding scores only
            extras.pop(PATCH_MAPS)
    return vector_run(
        spec,
        folds,
        extras=extras,
        probe=type(probe).__name__,
        params=probe.get_params(),
        grid=probe.grid,
        grounding_mask=options.get("grounding_mask"),
        fitted=fitted,
    )


def _predictions(frames: list[pd.DataFrame], key: str, feature: str, probe) -> pd.DataFrame:
    """The frames as one predictions table, as :func:`probes.core.results.cross_predict`'s."""
    return predictions_table(
        frames,
        encoder=key,
        feature=feature,
        probe=type(probe).__name__,
        params=json.dumps(probe.get_params(), sort_keys=True, default=str),
        seed=int(probe.seed),
    )
