"""The bookkeeping every ``probes`` command shares: the features its arguments name, the split
of ``--folds``, and the files a run leaves in ``--out``.

A command's own part is what it fits and scores; around it::

    fs = open_features(args, "global")
    split = make_split(fs, args, strata=Y)          # leakage checked
    ...                                             # predictions, results, summary
    out = write_run(args, fs, split, probe, predictions, results, summary, feature=...)

``--out`` receives ``predictions.{parquet,csv}``, ``results.csv``, ``summary.csv``,
``folds.csv`` (image_id, patient_id and the fold of every row in every round) and ``run.json``
(store, encoder, manifest and its digest, rows, exclusions, split, probe and parameters, seed,
command line, library versions, git commit, plus the command's own fields).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedcache.provenance import git_commit, library_versions
from probes.features import FeatureError, FeatureSet
from probes.results import write_table
from probes.splits import (
    REFERENCE_SEED,
    LeakageError,
    Split,
    check_no_leakage,
    column_split,
    patient_split,
    reference_rotation,
)

__all__ = [
    "add_feature_option",
    "add_input_options",
    "add_output_options",
    "add_split_options",
    "make_split",
    "open_features",
    "write_run",
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


def add_split_options(p: argparse.ArgumentParser, stratified_on: str) -> None:
    """``--folds``, ``--n-folds`` and ``--seed`` (read by :func:`make_split`); ``stratified_on``
    says what the patient folds are stratified on, for the help text."""
    p.add_argument(
        "--folds",
        default="patient",
        help=f"'patient' (stratified on {stratified_on}, grouped by patient_id), 'reference' "
        "(the study's seeded shuffle, 60/20/20 rotation), or a manifest column of fold ids or "
        "train/val/test",
    )
    p.add_argument("--n-folds", type=int, default=5, help="folds for patient/reference (5)")
    p.add_argument("--seed", type=int, default=REFERENCE_SEED, help="seed (default 5656)")


def add_output_options(p: argparse.ArgumentParser) -> None:
    """Bootstrap, output and safety options every ``probes`` command takes (read by
    :func:`open_features`, :func:`make_split` and :func:`write_run`)."""
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per fold")
    p.add_argument("--format", default="parquet", choices=("parquet", "csv"))
    p.add_argument("--out", default="probe-results", help="output folder")
    p.add_argument("--allow-subset", action="store_true", help="store may hold extra images")
    p.add_argument(
        "--allow-leakage", action="store_true", help="warn instead of failing on patient leakage"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--rounds", type=int, nargs="+", help="run only these rounds, 0-based (default: all)"
    )


def open_features(args: argparse.Namespace, feature: str) -> FeatureSet:
    """The FeatureSet named by ``store``, ``--manifest``, ``--encoder``, ``--root`` and
    ``--allow-subset``, reading array ``feature`` (``global``, ``grid16``, ...)."""
    return FeatureSet.open(
        args.store,
        args.manifest,
        args.encoder,
        feature,
        root=args.root,
        allow_subset=args.allow_subset,
    )


def make_split(fs: FeatureSet, args: argparse.Namespace, strata: np.ndarray) -> Split:
    """The split ``--folds`` names, checked for patient leakage.

    ``patient``: ``--n-folds`` folds grouped by patient id, stratified on ``strata`` (``(n,)``
    or ``(n, k)`` labels); ``reference``: the study's seeded rotation; else a manifest column of
    fold ids or train/val/test. Leakage raises :class:`~probes.splits.LeakageError`, or only
    warns on stderr with ``--allow-leakage``.
    """
    split = _folds(fs, args, strata)
    if getattr(args, "rounds", None):
        split = split.only(args.rounds)
    try:
        check_no_leakage(split, fs.patient_ids)
    except LeakageError as exc:
        if not args.allow_leakage:
            raise
        print(f"warning: {exc}", file=sys.stderr)
    return split


def _folds(fs: FeatureSet, args: argparse.Namespace, strata: np.ndarray) -> Split:
    if args.folds == "patient":
        return patient_split(strata, fs.patient_ids, args.n_folds, args.seed)
    if args.folds == "reference":
        return reference_rotation(len(fs), args.n_folds, args.seed)
    if args.folds not in fs.table.columns:
        raise FeatureError(
            f"--folds {args.folds!r} is neither 'patient', 'reference' nor a manifest column; "
            f"columns: {', '.join(map(repr, fs.table.columns))}"
        )
    return column_split(fs.table[args.folds], args.folds)


def write_run(
    args: argparse.Namespace,
    fs: FeatureSet,
    split: Split,
    probe: Any,
    predictions: pd.DataFrame,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    **fields: Any,
) -> Path:
    """Write a run's tables (predictions in ``--format``), ``folds.csv`` and ``run.json`` to
    ``--out``; ``fields`` are the command's own ``run.json`` entries. Returns the folder."""
    out = Path(args.out)
    write_table(predictions, out / f"predictions.{args.format}")
    write_table(results, out / "results.csv")
    write_table(summary, out / "summary.csv")
    folds = split.assignments()
    folds.insert(0, "patient_id", fs.patient_ids)
    folds.insert(0, "image_id", fs.ids)
    write_table(folds, out / "folds.csv")
    run = {
        "store": str(Path(args.store).resolve()),
        "encoder": fs.key,
        "manifest": str(fs.manifest.source),
        "manifest_digest": fs.manifest.digest(),
        "rows": len(fs),
        "excluded": fs.excluded_reasons,
        "split": {"kind": split.kind, "seed": split.seed, "rounds": len(split)},
        "probe": type(probe).__name__,
        "params": probe.get_params(),
        "seed": args.seed,
        "command": sys.argv,
        "versions": library_versions(),
        "git_commit": git_commit(),
        **fields,
    }
    (out / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True, default=str) + "\n")
    return out
