"""``probes shortcut``: is a confounder decodable, and does the label probe lean on it?

::

    probes shortcut cohort.zarr --manifest manifest.csv --confounder chest_tube \\
        --label pneumothorax --size-column ptx_area_pct --out results/tube/

Writes to ``--out`` the run files of ``probes linear`` (``predictions``, ``results.csv``,
``summary.csv``, ``folds.csv``, ``run.json``) for the confounder probe and, with ``--label``,
for the label probe trained plainly (label ``pneumothorax``) and on confounder-balanced training
rows (label ``pneumothorax:balanced``); then ``subgroups.csv`` (both label probes by confounder,
and by lesion-size quantile with ``--size-column``) and ``shortcut.json`` (confounder AUROC with
its CI, the sensitivity gap with vs without the confounder for both label probes). Every step is
a function of :mod:`probes.shortcuts` and :mod:`probes.subgroups`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from probes.features import binary_labels
from probes.results import cross_predict, results_table, summary_table, write_table
from probes.runs import (
    add_feature_option,
    add_input_options,
    add_output_options,
    add_split_options,
    make_split,
    open_features,
    write_run,
)
from probes.shortcuts import shortcut_probe, shortcut_summary
from probes.subgroups import sensitivity_gap, subgroup_table

__all__ = ["BALANCED_SUFFIX", "register", "run_shortcut"]

#: Appended to the label name of the probe trained on confounder-balanced rows.
BALANCED_SUFFIX = ":balanced"


def register(subparsers) -> None:
    """Add ``probes shortcut``."""
    p = subparsers.add_parser(
        "shortcut",
        help="shortcut check: confounder decodability, subgroups, confounder-balanced training",
        description="Probe a binary confounder (e.g. chest_tube) from one encoder group's "
        "features; with --label, also probe the label plainly and on confounder-balanced "
        "training rows, and compare their sensitivity with and without the confounder.",
    )
    add_input_options(p)
    p.add_argument("--confounder", required=True, help="binary manifest column (chest_tube)")
    p.add_argument("--label", help="binary label column (pneumothorax): fit the label probes too")
    add_feature_option(p)
    add_split_options(p, "label x confounder")
    p.add_argument(
        "--backend", default="auto", choices=("auto", "numpy", "torch", "sklearn", "cuml")
    )
    p.add_argument("--Cs", type=float, nargs="+", help="C grid (default: 10 values 1e-4..1e2)")
    p.add_argument(
        "--threshold",
        default="youden",
        help="operating point for sensitivity: 'youden' (each round's, from its validation "
        "rows; default, since balanced training shifts the prevalence the probabilities are "
        "calibrated to) or a probability such as 0.5 (the reference study's)",
    )
    p.add_argument("--size-column", help="lesion size column for subgroups.csv (ptx_area_pct)")
    p.add_argument("--size-bins", type=int, default=4, help="size quantile bins (default 4)")
    add_output_options(p)
    p.set_defaults(func=run_shortcut)


def run_shortcut(args: argparse.Namespace) -> int:
    """``probes shortcut``: fit, write the run files, subgroups.csv, shortcut.json, print."""
    from probes.backends import resolve_backend
    from probes.linear import LinearProbe

    threshold = _threshold(args.threshold)
    if args.label is not None and args.label == args.confounder:
        raise ValueError(f"--label and --confounder are both {args.label!r}")
    fs = open_features(args, args.feature)
    coded, positives = binary_labels(fs.labels, [args.confounder])
    confounder = coded[:, 0]
    label = None
    if args.label is not None:
        coded_label, label_positive = binary_labels(fs.labels, [args.label])
        label = coded_label[:, 0]
        positives.update(label_positive)
    strata = confounder if label is None else np.column_stack([label, confounder])
    split = make_split(fs, args, strata=strata)
    X = fs.load()
    if X.ndim > 2:  # a grid: average over its patches, as probes linear does
        X = X.reshape(len(X), -1, X.shape[-1]).mean(axis=1)
    probe = LinearProbe(Cs=args.Cs, backend=args.backend)
    common = dict(ids=fs.ids, patient_ids=fs.patient_ids, encoder=fs.key, feature=fs.feature)
    tube = shortcut_probe(
        X, confounder, split, name=args.confounder, probe=probe, seed=args.seed, **common
    )
    report: dict[str, object] = {
        "confounder": args.confounder,
        "confounder_probe": shortcut_summary(tube, n_boot=args.n_boot, seed=args.seed),
    }
    frames = [tube]
    if label is not None:
        plain, balanced = (
            cross_predict(
                probe,
                X,
                label,
                split,
                label_names=[args.label + suffix],
                seed=args.seed,
                balance=balance,
                **common,
            )
            for suffix, balance in (("", None), (BALANCED_SUFFIX, confounder))
        )
        frames += [plain, balanced]
        report.update(_label_report(args, fs, label, confounder, plain, balanced, threshold))
    predictions = pd.concat(frames, ignore_index=True)
    results = results_table(predictions, n_boot=args.n_boot, seed=args.seed)
    out = write_run(
        args,
        fs,
        split,
        probe,
        predictions,
        results,
        summary_table(results),
        feature=fs.feature,
        confounder=args.confounder,
        label=args.label,
        positive_class=positives,
        threshold=threshold,
        backend=resolve_backend(args.backend),
    )
    if label is not None:
        table = subgroup_table(
            pd.concat(frames[1:], ignore_index=True),
            fs.table,
            by=[args.confounder],
            size_column=args.size_column,
            size_bins=args.size_bins if args.size_column else 0,
            threshold=threshold,
            n_boot=args.n_boot,
            seed=args.seed,
        )
        write_table(table, out / "subgroups.csv")
    (out / "shortcut.json").write_text(
        json.dumps(_finite(report), indent=2, sort_keys=True, default=str) + "\n"
    )
    print(_format(report, fs, out))
    return 0


def _label_report(args, fs, label, confounder, plain, balanced, threshold) -> dict[str, object]:
    """Label-probe part of shortcut.json: confounder rates, AUROCs and sensitivity gaps."""
    coded = pd.DataFrame({"image_id": fs.ids, args.confounder: confounder})
    gaps, aurocs = {}, {}
    for name, rows in (("plain", plain), ("balanced", balanced)):
        gaps[name] = sensitivity_gap(
            rows, coded, args.confounder, threshold=threshold, n_boot=args.n_boot, seed=args.seed
        )
        aurocs[name] = shortcut_summary(rows, n_boot=args.n_boot, seed=args.seed)
    return {
        "label": args.label,
        "confounder_rate": {
            "label_positive": float(confounder[label == 1].mean()),
            "label_negative": float(confounder[label == 0].mean()),
        },
        "label_probe": aurocs,
        "sensitivity_gap": gaps,
    }


def _threshold(text: str) -> float | str:
    if text == "youden":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--threshold must be 'youden' or a probability, got {text!r}")
    return value


def _finite(value):
    """NaN -> None throughout, so shortcut.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _format(report: dict, fs, out: Path) -> str:
    tube = report["confounder_probe"]
    lines = [
        f"{report['confounder']} from {fs.key} / {fs.feature}: AUROC {tube['auroc']:.3f} "
        f"[{tube['auroc_ci_low']:.3f}, {tube['auroc_ci_high']:.3f}] over {tube['n']} test rows "
        f"({tube['patients']} patients); per round {tube['auroc_round_mean']:.3f} ± "
        f"{tube['auroc_round_sd']:.3f}"
    ]
    if "label" in report:
        gap = report["sensitivity_gap"]
        lines += [
            f"{report['label']} probe, sensitivity at threshold {gap['plain']['threshold']}, "
            f"with vs without {report['confounder']}:",
            f"{'training':<10} {'AUROC':>6}  {'with':<16} {'without':<16} gap [95% CI]",
        ]
        for name in ("plain", "balanced"):
            g, auc = gap[name], report["label_probe"][name]["auroc"]
            with_ = f"{g['sensitivity_with']:.3f} (n={g['n_with']})"
            without = f"{g['sensitivity_without']:.3f} (n={g['n_without']})"
            lines.append(
                f"{name:<10} {auc:>6.3f}  {with_:<16} {without:<16} {g['gap']:+.3f} "
                f"[{g['gap_ci_low']:+.3f}, {g['gap_ci_high']:+.3f}]"
            )
    lines.append(f"written to {out}/")
    return "\n".join(lines)
