"""Options every ``probes`` command shares, and their translation into run-function keywords.

A command is ``argparse -> keywords -> the run function``::

    run = run_linear(**input_kwargs(args), **split_kwargs(args), **output_kwargs(args), ...)
    print(format_classification(run))
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from probes.core.splits import REFERENCE_SEED

__all__ = [
    "add_feature_option",
    "add_grounding_options",
    "add_input_options",
    "add_decision_options",
    "add_output_options",
    "add_split_options",
    "add_training_options",
    "decision_kwargs",
    "grounding_kwargs",
    "input_kwargs",
    "output_kwargs",
    "split_kwargs",
    "training_params",
]


def add_input_options(p: argparse.ArgumentParser) -> None:
    """The store, manifest and encoder group options every ``probes`` command takes."""
    p.add_argument("store", help="store path (zarr folder or .h5 file)")
    p.add_argument("--manifest", required=True, help="manifest CSV/TSV/Parquet")
    p.add_argument("--root", help="folder for the manifest's relative paths")
    p.add_argument("--encoder", help="group key, key prefix or preset name (needed if several)")


def add_feature_option(p: argparse.ArgumentParser) -> None:
    """``--feature``: which array a probe on vectors reads."""
    p.add_argument(
        "--feature",
        default="global",
        type=_feature_name,
        help="global, grid16, grid32 (average-pooled over their patches), taps (the class tokens "
        "of the blocks extracted with --taps, side by side) or one tap, e.g. tap11 "
        "(default: global)",
    )


def _feature_name(value: str) -> str:
    if value in ("global", "grid16", "grid32", "taps") or re.fullmatch(r"tap\d+", value):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid choice: {value!r} (choose from global, grid16, grid32, taps, tap<block>)"
    )


def add_grounding_options(p: argparse.ArgumentParser) -> None:
    """``--grounding-mask`` and how to read it: score a probe's patch maps against masks."""
    p.add_argument(
        "--grounding-mask",
        metavar="COL",
        help="mask column (e.g. ptx_rle): score each test image's patch map against it "
        "(pointing game, patch AUROC; grounding.csv)",
    )
    p.add_argument(
        "--mask-format",
        default="auto",
        choices=("auto", "path", "siim", "chexmask"),
        help="what the mask column holds (auto: SIIM RLE if every cell is RLE text, else paths)",
    )
    p.add_argument("--image-size", help="HxW raster of every RLE (default: the image header)")


def grounding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords of :func:`add_grounding_options`."""
    return {
        "grounding_mask": args.grounding_mask,
        "mask_format": args.mask_format,
        "image_size": args.image_size,
    }


def add_split_options(p: argparse.ArgumentParser, stratified_on: str) -> None:
    """``--folds``, ``--n-folds``, ``--seed``, ``--rounds`` and the label budgets
    (``--budgets``, ``--budget-draws``); ``stratified_on`` says what the patient folds (and the
    budgets' draws) are stratified on, for the help text."""
    p.add_argument(
        "--folds",
        default="patient",
        help=f"'patient' (stratified on {stratified_on}, grouped by patient_id), 'reference' "
        "(the study's seeded shuffle, 60/20/20 rotation), or a manifest column of fold ids or "
        "train/val/test",
    )
    p.add_argument("--n-folds", type=int, default=5, help="folds for patient/reference (5)")
    p.add_argument("--seed", type=int, default=REFERENCE_SEED, help="seed (default 5656)")
    p.add_argument(
        "--rounds", type=int, nargs="+", help="run only these rounds, 0-based (default: all)"
    )
    p.add_argument(
        "--budgets",
        metavar="LIST",
        help="label-efficiency curve: fractions of each training fold (0.01,0.1,1.0) or images "
        "per class (1,4,16); drawn by patient, stratified, nested; validation and test untouched",
    )
    p.add_argument(
        "--budget-draws",
        type=int,
        default=1,
        metavar="N",
        help="independent draws of each budget's training rows (default 1)",
    )


def add_decision_options(p: argparse.ArgumentParser) -> None:
    """``--prevalence`` and ``--decision-thresholds``: the decision curve of a classification
    run's net-benefit columns."""
    p.add_argument(
        "--prevalence",
        type=float,
        help="prevalence for decision-curve net benefit (default: each test fold's own); "
        "temperature-scaled scores are moved to it by Bayes' rule",
    )
    p.add_argument(
        "--decision-thresholds",
        type=float,
        nargs="+",
        metavar="T",
        help="risk thresholds of the net_benefit_at_T columns (default 0.1)",
    )


def add_output_options(p: argparse.ArgumentParser) -> None:
    """Bootstrap, output and safety options every ``probes`` command takes."""
    p.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples (over patients) per CI"
    )
    p.add_argument("--format", default="parquet", choices=("parquet", "csv"))
    p.add_argument("--out", default="probe-results", help="output folder")
    p.add_argument("--allow-subset", action="store_true", help="store may hold extra images")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="probe the rows done so far of a group still being (or not fully) extracted",
    )
    p.add_argument(
        "--allow-leakage", action="store_true", help="warn instead of failing on patient leakage"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_training_options(
    p: argparse.ArgumentParser,
    *,
    epochs: str,
    batch: str,
    lr: str,
    patience: str,
    device: str | None = "torch device (default auto: CUDA when present)",
) -> None:
    """``--epochs``, ``--batch-size``, ``--lr``, ``--weight-decay``, ``--patience`` (and
    ``--device``) of a probe trained with AdamW and early stopping; the texts are each probe's
    defaults, for the help. Unset options keep the probe's own defaults
    (:func:`training_params`)."""
    p.add_argument("--epochs", type=int, help=f"most epochs (default {epochs})")
    p.add_argument("--batch-size", type=int, help=f"{batch} per minibatch")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (default {lr})")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-2)")
    p.add_argument("--patience", type=int, help=f"early-stopping patience in epochs ({patience})")
    if device is not None:
        p.add_argument("--device", help=device)


def training_params(args: argparse.Namespace, **more: Any) -> dict[str, Any]:
    """The probe parameters :func:`add_training_options` (and ``more``) set; ``None`` (unset)
    left out, so the probe's defaults apply."""
    chosen = {
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "patience": args.patience,
        "device": getattr(args, "device", None),
        **more,
    }
    return {k: v for k, v in chosen.items() if v is not None}


def input_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords of a store-reading run function from :func:`add_input_options` and
    :func:`add_output_options`."""
    return {
        "store": args.store,
        "manifest": args.manifest,
        "encoder": args.encoder,
        "root": args.root,
        "allow_subset": args.allow_subset,
        "allow_partial": args.allow_partial,
    }


def split_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords of :func:`add_split_options`."""
    return {
        "folds": args.folds,
        "n_folds": args.n_folds,
        "seed": args.seed,
        "rounds": args.rounds,
        "allow_leakage": args.allow_leakage,
        "budgets": args.budgets,
        "budget_draws": args.budget_draws,
    }


def decision_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords of :func:`add_decision_options`."""
    return {"prevalence": args.prevalence, "decision_thresholds": args.decision_thresholds}


def output_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords of :func:`add_output_options` (bootstrap, folder, format, progress)."""
    return {
        "n_boot": args.n_boot,
        "out": args.out,
        "table_format": args.format,
        "progress": not args.quiet,
    }
