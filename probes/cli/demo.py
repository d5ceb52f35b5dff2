"""``probes demo``: the offline end-to-end demo (a thin shell over :func:`probes.demo.run_demo`)."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers) -> None:
    """Add ``probes demo``."""
    p = subparsers.add_parser(
        "demo",
        help="offline demo: synthetic cohort -> extraction -> store -> probes",
        description="Make a phantom cohort, extract it with a randomly initialised "
        "DINOv2-small (no download), verify the store, run a linear and a segmentation probe.",
    )
    p.add_argument("--out", default="demo-output")
    p.add_argument("--patients", type=int, default=24)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from probes.demo import run_demo

    run_demo(args.out, n_patients=args.patients, progress=not args.no_progress)
    return 0
