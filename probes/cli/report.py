"""``probes report RUN_DIR... --out DIR``: the report of run folders (a thin shell over
:func:`probes.report.build_report`)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run_report"]


def register(subparsers) -> None:
    """Add ``probes report`` to a ``probes`` command line."""
    p = subparsers.add_parser(
        "report",
        help="Markdown + self-contained HTML report over run folders",
        description="Tables (median [min, max], mean ± sd, bootstrap CIs), paired and rank "
        "tests between runs on the same folds, ROC curves, calibration and decision curves, label "
        "efficiency curves, subgroups, segmentation overlays "
        "and provenance, from the --out folders of probes linear / seg / finetune.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (with run.json)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--manifest", help="metadata / image manifest (default: each run's own manifest)"
    )
    p.add_argument(
        "--subgroup",
        action="extend",
        nargs="+",
        default=[],
        metavar="COL",
        help="manifest column(s) to split the test images by (repeatable)",
    )
    p.add_argument("--size-column", help="numeric manifest column (lesion size) to bin")
    p.add_argument("--size-bins", type=int, default=3, help="quantile bins of --size-column (3)")
    p.add_argument("--title", help="report title")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--seed", type=int, default=5656, help="bootstrap seed (5656)")
    p.add_argument(
        "--overlays", type=int, default=3, help="best/worst segmentation cases per run (3)"
    )
    p.add_argument(
        "--prevalence",
        type=float,
        help="prevalence of the decision curves (default: the runs' own --prevalence, else "
        "each run's test rows')",
    )
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Load the run folders, write the report, print where it is."""
    from probes.report import build_report, load_runs

    if args.size_bins < 1:
        raise ValueError(f"--size-bins must be at least 1, got {args.size_bins}")
    files = build_report(
        load_runs(args.runs),
        args.out,
        manifest=args.manifest,
        subgroups=args.subgroup,
        size_column=args.size_column,
        size_bins=args.size_bins,
        title=args.title,
        n_boot=args.n_boot,
        seed=args.seed,
        overlays=args.overlays,
        prevalence=args.prevalence,
        command=sys.argv,
    )
    print(f"report: {files.markdown}\n        {files.html}")
    print(f"{len(files.figures)} figures, {len(files.tables)} tables under {files.html.parent}/")
    return 0
