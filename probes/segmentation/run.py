"""A whole cross-validated segmentation probe: the function behind ``probes seg``.

::

    run = probes.run_seg("cohort.zarr", "manifest.csv", mask="heart_mask", grid="16",
                         mask_size="input", out="results/heart")
    run.results[["round", "dice", "dice_ci_low", "dice_ci_high"]]

The predictions table has one row per image and round it was scored in (image_id, patient_id,
round, fold, split, dice, iou, pixel counts, mask areas, provenance, optionally the predicted
mask as SIIM RLE); results one row per round; the summary Dice and IoU over rounds.
:func:`cross_validate_segmentation` is the loop on its own, for a notebook.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from probes.core.bootstrap import clustered_mean_ci
from probes.core.budgets import budget_options, over_budgets
from probes.core.metrics import segmentation_summary
from probes.core.protocol import folds_table, make_split, open_features, provenance
from probes.core.results import ROW_COLUMNS, row_frame
from probes.core.run import SEGMENTATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.sizes import parse_size, size_option
from probes.core.splits import REFERENCE_SEED
from probes.segmentation.masks import PackedMasks, load_masks
from probes.segmentation.metrics import (
    BothEmpty,
    confusion_counts,
    pooled_dice,
    segmentation_scores,
)
from probes.segmentation.probe import (
    REFERENCE_PARAMS,
    SegmentationProbe,
    StoreGrids,
    grid_names,
)

__all__ = [
    "PREDICTION_COLUMNS",
    "cross_validate_segmentation",
    "mask_resolution",
    "results_by_round",
    "run_seg",
    "run_seg_spec",
]

PREDICTION_COLUMNS = (
    *ROW_COLUMNS,
    "dice",
    "iou",
    "tp",
    "fp",
    "fn",
    "mask_area",
    "pred_area",
    "encoder",
    "grid",
    "mask",
    "mask_size",
    "probe",
    "params",
    "seed",
    "best_epoch",
)


def cross_validate_segmentation(
    probe: SegmentationProbe,
    features: Any,
    masks: PackedMasks,
    split: Any,
    *,
    mask_column: str = "",
    both_empty: BothEmpty = "one",
    save_masks: bool = False,
    on_round: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Fit a clone of ``probe`` per round (early stopping on the round's validation fold) and
    score that round's validation and test images.

    Args:
        features: a FeatureSet (grids stream from its store group; ids, patient ids, key).
        masks: targets aligned with ``features`` rows (:func:`probes.segmentation.masks.load_masks`).
        split: a :class:`probes.core.splits.Split` over the same rows.
        save_masks: add ``pred_rle``, each predicted mask as SIIM RLE at the mask resolution.

    Returns:
        One row per scored image and round (:data:`PREDICTION_COLUMNS`), val before test.
    """
    grids = StoreGrids(features.group, features.rows, grid_names(probe.grid))
    ids, patients = np.asarray(features.ids, str), np.asarray(features.patient_ids, str)
    area, pixels = masks.area(), float(np.prod(masks.shape))
    params = json.dumps(probe.get_params(), sort_keys=True, default=str)
    frames = []
    for r in split:
        model = clone(probe)
        has_val = len(r.val) > 0
        model.fit(
            grids.subset(r.train),
            masks.subset(r.train),
            grids.subset(r.val) if has_val else None,
            masks.subset(r.val) if has_val else None,
            groups=patients[r.train],
        )
        for part, rows in (("val", r.val), ("test", r.test)):
            if not len(rows):
                continue
            counts, rles = [], []
            for index, labels in model.iter_predict(grids.subset(rows)):
                predicted = labels > 0
                counts.append(np.stack(confusion_counts(predicted, masks.take(rows[index]))))
                if save_masks:
                    from embedcache.intake.masks import siim_rle_encode

                    rles += [siim_rle_encode(m) for m in predicted]
            tp, fp, fn = np.concatenate(counts, 1)
            frame = row_frame(
                ids,
                patients,
                split.folds,
                rows,
                round_index=r.index,
                split=part,
                **segmentation_scores(tp, fp, fn, area[rows], pixels, both_empty),
                best_epoch=model.best_epoch_,
            )
            if save_masks:
                frame["pred_rle"] = rles
            frames.append(frame)
        if on_round is not None:
            on_round(r.index)
    table = pd.concat(frames, ignore_index=True)
    table["encoder"], table["grid"], table["mask"] = features.key, probe.grid, mask_column
    table["mask_size"] = f"{masks.shape[0]}x{masks.shape[1]}"
    table["probe"], table["params"], table["seed"] = type(probe).__name__, params, probe.seed
    extra = ["pred_rle"] if save_masks else []
    return table[[*PREDICTION_COLUMNS, *extra]]


def results_by_round(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per round (x budget x draw, when the predictions have budgets; test images):
    mean and median Dice, bootstrap 95% CI of the mean over images (clustered by patient),
    mean IoU, pooled Dice, and provenance."""
    rows = []
    test = predictions[predictions["split"] == "test"]
    budgeted = "budget" in test.columns
    keys = ["round", *(["budget", "draw"] if budgeted else [])]
    for key, part in test.groupby(keys, sort=True):
        round_ = key[0]
        dice = part["dice"].to_numpy(float)
        low, high = clustered_mean_ci(
            dice, part["patient_id"].to_numpy(), n_boot=n_boot, seed=seed + int(round_)
        )
        first = part.iloc[0]
        budget = (
            {"budget": float(key[1]), "draw": int(key[2]), "n_train": int(first.get("n_train", -1))}
            if budgeted
            else {}
        )
        rows.append(
            {
                "round": int(round_),
                **budget,
                "images": len(part),
                "scored": int(np.isfinite(dice).sum()),
                "dice": float(np.nanmean(dice)),
                "dice_ci_low": low,
                "dice_ci_high": high,
                "dice_median": float(np.nanmedian(dice)),
                "iou": float(np.nanmean(part["iou"])),
                "dice_pooled": pooled_dice(part["tp"], part["fp"], part["fn"]),
                "best_epoch": int(first["best_epoch"]),
                "encoder": first["encoder"],
                "grid": first["grid"],
                "mask": first["mask"],
                "seed": first["seed"],
            }
        )
    return pd.DataFrame(rows)


def run_seg(
    store: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    mask: str,
    encoder: str | None = None,
    grid: str = "16",
    mask_size: str | int | tuple[int, int] | None = None,
    reference: bool = False,
    mask_format: str = "auto",
    image_size: str | tuple[int, int] | None = None,
    height_column: str | None = None,
    width_column: str | None = None,
    folds: str = "patient",
    n_folds: int = 5,
    seed: int = REFERENCE_SEED,
    rounds: Sequence[int] | None = None,
    probe_params: Mapping[str, Any] | None = None,
    both_empty: BothEmpty = "one",
    save_masks: bool = False,
    budgets: str | Sequence[float] | None = None,
    budget_draws: int = 1,
    n_boot: int = 1000,
    root: str | os.PathLike | None = None,
    allow_subset: bool = False,
    allow_partial: bool = False,
    allow_leakage: bool = False,
    out: str | os.PathLike | None = None,
    table_format: str = "parquet",
    progress: bool = False,
) -> Run:
    """Cross-validated linear segmentation probe of one encoder group; returns the
    :class:`Run` (written to ``out`` when given).

    Args:
        mask: the manifest's mask column (file paths, SIIM RLE or CheXmask RLE).
        grid: ``16``, ``32`` or ``16+32``.
        mask_size: training and scoring resolution: ``N``, ``HxW``, ``(h, w)`` or ``input``
            (the encoder's input size, where the reference study scored Dice). Default: the
            reference's (``input``) with ``reference=True``, else 4x the grid16 size (faster).
        reference: the reference study's settings: its optimiser (lr 1e-4, batch 16, up to 500
            epochs, patience 5), ``align_corners=True`` and masks at the encoder's input size.
        mask_format, image_size, height_column, width_column: how to read the mask column
            (see :func:`probes.segmentation.masks.load_masks`).
        probe_params: :class:`~probes.segmentation.probe.SegmentationProbe` parameters
            (``lr``, ``batch_size``, ``class_weights``...) over the defaults (or the
            reference's); ``seed`` is the split seed.
        both_empty: Dice of an image with empty truth and prediction: ``one`` or ``exclude``.
        save_masks: keep each predicted mask as SIIM RLE (for the report's overlays).
        budgets, budget_draws: label-efficiency curve (see :func:`probes.run_linear`): the
            training images of each round cut by patient, stratified on empty vs non-empty
            masks, nested; results per (budget, draw).
    """
    params = dict(REFERENCE_PARAMS) if reference else {}
    params.pop("seed", None)
    params.update(probe_params or {})
    params["grid"] = "+".join(grid_names(str(params.get("grid", grid))))
    if "class_weights" in params and params["class_weights"] is not None:
        params["class_weights"] = [float(v) for v in params["class_weights"]]
    if mask_size is None and reference:
        mask_size = "input"
    spec = RunSpec(
        protocol="seg",
        inputs=Inputs.make(
            store,
            manifest,
            encoder,
            grid_names(params["grid"])[0],
            root,
            allow_subset,
            allow_partial,
        ),
        split=SplitSpec.make(folds, n_folds, seed, rounds, allow_leakage, budgets, budget_draws),
        task=TaskSpec(SEGMENTATION, mask=mask),
        probe="SegmentationProbe",
        params=params,
        options={
            "mask_size": size_option(mask_size),
            "reference": reference,
            "mask_format": mask_format,
            "image_size": size_option(image_size),
            "height_column": height_column,
            "width_column": width_column,
            "both_empty": both_empty,
            "save_masks": save_masks,
        },
        n_boot=n_boot,
    )
    return run_seg_spec(spec, progress=progress).saved(out, table_format)


def run_seg_spec(spec: RunSpec, *, progress: bool = False) -> Run:
    """:func:`run_seg` from its :class:`RunSpec` (a study's unit, a rerun of a run.json)."""
    from tqdm import tqdm

    options = dict(spec.options)
    params = dict(spec.params)
    if params.get("class_weights") is not None:
        params["class_weights"] = tuple(params["class_weights"])
    probe = SegmentationProbe(seed=spec.split.seed, **params)
    fs = open_features(spec.inputs, grid_names(probe.grid)[0])
    size = mask_resolution(fs, options.get("mask_size"))
    mask_column = str(spec.task.mask)
    masks = load_masks(
        fs,
        mask_column,
        size,
        kind=options.get("mask_format", "auto"),
        image_size=parse_size(options.get("image_size"), "image_size"),
        height_column=options.get("height_column"),
        width_column=options.get("width_column"),
        progress=progress,
    )
    strata = (masks.area() > 0).astype(np.int64)
    split = make_split(fs, spec.split, strata=strata)
    with tqdm(total=len(split), desc=f"probes seg {fs.key}", disable=not progress) as bar:
        predictions = over_budgets(
            lambda s: cross_validate_segmentation(
                probe,
                fs,
                masks,
                s,
                mask_column=mask_column,
                both_empty=options.get("both_empty", "one"),
                save_masks=bool(options.get("save_masks")),
                on_round=lambda _: bar.update(),
            ),
            split,
            strata=strata,
            patient_ids=fs.patient_ids,
            **budget_options(spec.split),
        )
    results = results_by_round(predictions, n_boot=spec.n_boot, seed=spec.split.seed)
    info = provenance(
        spec,
        fs,
        split,
        probe=type(probe).__name__,
        params=probe.get_params(),
        grid=probe.grid,
        mask=mask_column,
        mask_kind=options.get("mask_format", "auto"),
        mask_size=list(size),
        mask_size_rule=_size_rule(options.get("mask_size")),
        both_empty=options.get("both_empty", "one"),
    )
    return Run(
        spec=spec,
        predictions=predictions,
        results=results,
        summary=segmentation_summary(predictions),
        folds=folds_table(fs, split),
        info=info,
    )


def mask_resolution(fs: Any, mask_size: str | int | tuple[int, int] | None) -> tuple[int, int]:
    """The training/scoring resolution ``(h, w)``: ``input`` is the encoder's input size (from
    the store group's recorded preprocessing), ``None`` 4x the grid16 size, else ``N``/``HxW``."""
    if mask_size is None:
        grid16 = fs.group.layout.grid_shapes[16]
        return 4 * grid16[0], 4 * grid16[1]
    if str(mask_size) == "input":
        attrs = fs.group.attrs
        preprocessing = (attrs.get("encoder") or {}).get("preprocessing") or {}
        if "input_size" not in preprocessing:
            raise ValueError(
                f"mask size 'input': group {fs.key} does not record the encoder's input size; "
                "give the size as N or HxW"
            )
        side = int(preprocessing["input_size"])
        return side, side
    return parse_size(mask_size, "mask_size")  # type: ignore[return-value]


def _size_rule(value: Any) -> str:
    if value is None:
        return (
            "4x grid16 (default; the reference study scored at the input size: mask_size='input')"
        )
    return "encoder input size (the reference study's)" if str(value) == "input" else "given"
