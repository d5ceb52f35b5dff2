"""``probes study STUDY.toml [--out DIR] [--plan] [--no-report]``."""

from __future__ import annotations

import argparse
import sys

from probes.study.config import StudyError, load_study
from probes.study.runner import run_study
from probes.study.units import plan_units

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``probes study``."""
    p = subparsers.add_parser(
        "study",
        help="run a whole study from a TOML file (resumable)",
        description="Make missing phantom cohorts, extract what is missing, run every "
        "(task, encoder, protocol, seed, round) unit not yet done, merge runs, write "
        "results.csv and the report. Re-running resumes.",
    )
    p.add_argument("study", help="study file (TOML); see studies/ for examples")
    p.add_argument("--out", help="output folder (default: the file's [study] out)")
    p.add_argument("--plan", action="store_true", help="list the units and their state, run none")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        study = load_study(args.study, args.out)
        if args.plan:
            units = plan_units(study)
            for unit in units:
                print(f"{'done' if unit.is_done(study) else 'todo'}  {unit}")
            done = sum(u.is_done(study) for u in units)
            print(f"{done}/{len(units)} units done in {study.out}")
            return 0
        run_study(study, report=not args.no_report, progress=not args.quiet)
    except StudyError as exc:
        print(f"probes study: error: {exc}", file=sys.stderr)
        return 2
    return 0
