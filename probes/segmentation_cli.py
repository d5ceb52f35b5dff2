"""``probes seg``: cross-validated linear segmentation probe of one encoder group.

::

    probes seg cohort.zarr --manifest manifest.csv --mask heart_mask --grid 16 --out results/

Writes ``predictions.parquet`` (one row per image and round it was scored in: image_id,
patient_id, round, fold, split, dice, iou, pixel counts, mask areas, provenance, optionally the
predicted mask as SIIM RLE), ``results.csv`` (one row per round), ``summary.csv``, ``folds.csv``
and ``run.json``, and prints Dice per fold with median [min, max] and mean ± sd.
:func:`cross_validate_segmentation` is the same loop for a notebook.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from probes.masks import PackedMasks, load_masks
from probes.results import ROW_COLUMNS, row_frame
from probes.runs import (
    add_input_options,
    add_output_options,
    add_split_options,
    make_split,
    open_features,
    write_run,
)
from probes.seg_metrics import (
    BothEmpty,
    bootstrap_ci,
    confusion_counts,
    pooled_dice,
    segmentation_scores,
    summarize_folds,
)
from probes.segmentation import (
    REFERENCE_PARAMS,
    SegmentationProbe,
    StoreGrids,
    grid_names,
)

__all__ = ["cross_validate_segmentation", "register", "results_by_round", "run_segmentation"]

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
        masks: targets aligned with ``features`` rows (:func:`probes.masks.load_masks`).
        split: a :class:`probes.splits.Split` over the same rows.
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
        eval_set = (grids.subset(r.val), masks.subset(r.val)) if len(r.val) else None
        model.fit(
            grids.subset(r.train),
            masks.subset(r.train),
            eval_set=eval_set,
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
    """One row per round (test images): mean and median Dice, bootstrap 95% CI of the mean
    over images (clustered by patient), mean IoU, pooled Dice, and provenance."""
    rows = []
    test = predictions[predictions["split"] == "test"]
    for round_, part in test.groupby("round", sort=True):
        dice = part["dice"].to_numpy(float)
        low, high = bootstrap_ci(
            dice, n_boot=n_boot, groups=part["patient_id"].to_numpy(), seed=seed + int(round_)
        )
        first = part.iloc[0]
        rows.append(
            {
                "round": int(round_),
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


def register(subparsers) -> None:
    """Add ``probes seg`` to a ``probes`` command line."""
    p = subparsers.add_parser(
        "seg",
        help="linear (1x1 conv) segmentation probe on cached patch grids",
        description="Cross-validated segmentation probe of one encoder group: 1x1 convolution "
        "on the patch grid, bilinear upsampling, class-weighted cross-entropy, early stopping "
        "on the validation fold. Minibatches stream from the store.",
    )
    add_input_options(p)
    p.add_argument("--mask", required=True, help="mask column: file paths or RLE strings")
    p.add_argument(
        "--mask-format",
        default="auto",
        choices=("auto", "path", "siim", "chexmask"),
        help="what the mask column holds (auto: SIIM RLE if every cell is RLE text, else paths)",
    )
    p.add_argument(
        "--image-size",
        help="HxW raster of every RLE (default: per row, from "
        "--height-column/--width-column or the image file's header)",
    )
    p.add_argument("--height-column", help="column with each RLE raster's height")
    p.add_argument("--width-column", help="column with each RLE raster's width")
    p.add_argument(
        "--mask-size",
        help="training/scoring resolution, N or HxW (default: 4x "
        "the grid16 size, the same for every --grid)",
    )
    p.add_argument(
        "--grid",
        default="16",
        choices=("16", "32", "16+32", "grid16", "grid32", "grid16+grid32"),
        help="patch grid(s) (default 16)",
    )
    p.add_argument("--epochs", type=int, help="most epochs (default 50; reference 500)")
    p.add_argument("--batch-size", type=int, help="images per minibatch (default 32)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-2)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (5)")
    p.add_argument("--class-weights", help="cross-entropy weights, e.g. 1,5 (pneumothorax)")
    p.add_argument("--dice-weight", type=float, default=0.0, help="soft-Dice loss weight (0)")
    p.add_argument(
        "--align-corners",
        default="true",
        choices=("true", "false"),
        help="bilinear upsampling convention (reference: true)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="the reference study's optimiser "
        "settings (lr 1e-4, batch 16, up to 500 epochs, patience 5)",
    )
    p.add_argument(
        "--both-empty",
        default="one",
        choices=("one", "exclude"),
        help="Dice/IoU of an image with empty prediction and truth: 1 or left out",
    )
    add_split_options(p, "empty vs non-empty masks")
    p.add_argument("--device", default="auto", help="torch device (auto: CUDA when present)")
    p.add_argument("--save-masks", action="store_true", help="add predicted masks as RLE")
    add_output_options(p)
    p.set_defaults(func=run_segmentation)


def _size(text: str | None, what: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(v) for v in str(text).lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"{what} must be N or HxW with positive integers, got {text!r}")
    return parts[0], parts[1]


def _probe_from_args(args: argparse.Namespace) -> SegmentationProbe:
    params: dict[str, Any] = dict(REFERENCE_PARAMS) if args.reference else {}
    params.pop("seed", None)
    chosen = {
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "patience": args.patience,
    }
    params.update({k: v for k, v in chosen.items() if v is not None})
    if args.class_weights:
        try:
            params["class_weights"] = tuple(float(v) for v in args.class_weights.split(","))
        except ValueError:
            raise ValueError(
                f"--class-weights must be numbers like 1,5: {args.class_weights!r}"
            ) from None
    params["align_corners"] = args.align_corners == "true"
    return SegmentationProbe(
        grid="+".join(grid_names(args.grid)),
        dice_weight=args.dice_weight,
        device=args.device,
        seed=args.seed,
        **params,
    )


def run_segmentation(args: argparse.Namespace) -> int:
    """``probes seg``: masks, split, cross-fit, write tables, print Dice per fold."""
    from tqdm import tqdm

    probe = _probe_from_args(args)
    fs = open_features(args, grid_names(probe.grid)[0])
    grid16 = fs.group.layout.grid_shapes[16]
    mask_size = _size(args.mask_size, "--mask-size") or (4 * grid16[0], 4 * grid16[1])
    masks = load_masks(
        fs,
        args.mask,
        mask_size,
        kind=args.mask_format,
        image_size=_size(args.image_size, "--image-size"),
        height_column=args.height_column,
        width_column=args.width_column,
        progress=not args.quiet,
    )
    split = make_split(fs, args, strata=(masks.area() > 0).astype(np.int64))
    with tqdm(total=len(split), desc=f"probes seg {fs.key}", disable=args.quiet) as bar:
        predictions = cross_validate_segmentation(
            probe,
            fs,
            masks,
            split,
            mask_column=args.mask,
            both_empty=args.both_empty,
            save_masks=args.save_masks,
            on_round=lambda _: bar.update(),
        )
    results = results_by_round(predictions, n_boot=args.n_boot, seed=args.seed)
    test = predictions[predictions["split"] == "test"]
    summary = pd.concat(
        [summarize_folds(test, m, fold="round").assign(metric=m) for m in ("dice", "iou")]
    )
    out = write_run(
        args,
        fs,
        split,
        probe,
        predictions,
        results,
        summary,
        grid=probe.grid,
        mask=args.mask,
        mask_kind=args.mask_format,
        mask_size=list(mask_size),
        both_empty=args.both_empty,
    )
    print(format_results(results, fs, split, out, mask_size))
    return 0


def format_results(results: pd.DataFrame, fs: Any, split: Any, out: Path, mask_size) -> str:
    """The printed table: Dice per fold, then median [min, max] and mean ± sd over folds."""
    from probes.metrics import format_mean_sd, format_median_range

    lines = [
        f"{fs.key} / {results['grid'].iat[0]}, mask {results['mask'].iat[0]} at "
        f"{mask_size[0]}x{mask_size[1]}: {len(fs)} images ({fs.excluded} excluded), "
        f"{split.kind} split, {len(split)} rounds",
        f"{'round':>5} {'images':>6}  {'Dice':>6}  {'95% CI':<15} {'median':>6}  {'IoU':>6}  "
        f"{'pooled':>6}  {'epoch':>5}",
    ]
    for _, r in results.iterrows():
        ci = f"[{r['dice_ci_low']:.3f}, {r['dice_ci_high']:.3f}]"
        lines.append(
            f"{r['round']:>5} {r['images']:>6}  {r['dice']:6.3f}  {ci:<15} "
            f"{r['dice_median']:6.3f}  {r['iou']:6.3f}  {r['dice_pooled']:6.3f}  "
            f"{r['best_epoch']:>5}"
        )
    for metric, name in (("dice", "Dice"), ("iou", "IoU")):
        lines.append(
            f"{name:<5} median [min, max] {format_median_range(results[metric])}   "
            f"mean ± sd {format_mean_sd(results[metric])}"
        )
    lines.append(f"written to {out}/")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m probes.segmentation_cli ...``: the ``seg`` command on its own."""
    parser = argparse.ArgumentParser(prog="probes")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
