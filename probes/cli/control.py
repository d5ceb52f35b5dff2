"""``probes control``: a thin shell over :func:`probes.run_control`."""

from __future__ import annotations

import argparse

from probes.cli.common import (
    add_decision_options,
    add_feature_option,
    add_input_options,
    add_output_options,
    add_split_options,
    decision_kwargs,
    input_kwargs,
    output_kwargs,
    split_kwargs,
)

__all__ = ["execute", "register", "run"]


def register(subparsers) -> None:
    """Add ``probes control``."""
    p = subparsers.add_parser(
        "control",
        help="control baselines: a probe on image statistics + metadata, or on shuffled labels",
        description="The linear probe on the folds the encoders use, without an encoder: "
        "--kind image-stats probes a 32-bin intensity histogram, image height and width and "
        "the manifest columns given by --metadata (what is learnable without any encoder); "
        "--kind shuffled-label probes the --encoder's features with the training labels "
        "permuted (the floor). The store group fixes the rows (and so the folds).",
    )
    add_input_options(p)
    p.add_argument(
        "--kind", required=True, choices=("image-stats", "shuffled-label"), help="which control"
    )
    p.add_argument("--label", action="append", required=True, help="label column (repeatable)")
    p.add_argument(
        "--metadata",
        action="extend",
        nargs="+",
        default=[],
        metavar="COL",
        help="manifest columns added to the image statistics (view, sex, age...)",
    )
    p.add_argument("--bins", type=int, default=32, help="intensity histogram bins (32)")
    add_feature_option(p)
    add_split_options(p, "the labels")
    p.add_argument(
        "--backend", default="auto", choices=("auto", "numpy", "torch", "sklearn", "cuml")
    )
    p.add_argument("--Cs", type=float, nargs="+", help="C grid (default: 10 values 1e-4..1e2)")
    add_decision_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`probes.run_control` and print its per-label summary."""
    from probes.cli.format import format_classification

    print(format_classification(execute(args)))
    return 0


def execute(args: argparse.Namespace):
    """:func:`probes.run_control` with the keywords the options name; returns the Run."""
    from probes.controls.run import run_control

    return run_control(
        **input_kwargs(args),
        kind=args.kind,
        label=args.label,
        feature=args.feature,
        metadata=args.metadata,
        bins=args.bins,
        **split_kwargs(args),
        backend=args.backend,
        Cs=args.Cs,
        **decision_kwargs(args),
        **output_kwargs(args),
    )
