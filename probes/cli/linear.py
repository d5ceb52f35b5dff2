"""``probes linear``: a thin shell over :func:`probes.run_linear`."""

from __future__ import annotations

import argparse

from probes.cli.common import (
    add_decision_options,
    add_feature_option,
    add_grounding_options,
    add_input_options,
    add_output_options,
    add_split_options,
    decision_kwargs,
    grounding_kwargs,
    input_kwargs,
    output_kwargs,
    split_kwargs,
)

__all__ = ["execute", "register", "run"]


def register(subparsers) -> None:
    """Add ``probes linear``."""
    p = subparsers.add_parser(
        "linear",
        help="logistic-regression (or reference SGD-head) probe on cached global features",
        description="Cross-validated linear probe of one encoder group of a store. Writes "
        "per-row predictions, a results table (one row per fold x label) and a summary.",
    )
    add_input_options(p)
    p.add_argument("--label", action="append", required=True, help="label column (repeatable)")
    add_feature_option(p)
    add_split_options(p, "the labels")
    p.add_argument("--mode", default="logistic", choices=("logistic", "sgd-head"))
    p.add_argument(
        "--backend", default="auto", choices=("auto", "numpy", "torch", "sklearn", "cuml")
    )
    p.add_argument("--dtype", choices=("float32", "float64"), help="solver dtype")
    p.add_argument("--device", help="torch device for the torch backend / sgd-head")
    p.add_argument("--Cs", type=float, nargs="+", help="C grid (default: 10 values 1e-4..1e2)")
    p.add_argument(
        "--balance-by",
        metavar="COL",
        help="binary manifest column (a confounder, e.g. chest_tube): train each round on the "
        "largest subset of its training rows where COL is independent of the label "
        "(one --label; validation and test rows untouched)",
    )
    add_decision_options(p)
    p.add_argument(
        "--save-maps",
        action="store_true",
        help="keep each test image's patch logits (a --feature grid): patch_maps.parquet",
    )
    add_grounding_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`probes.run_linear` with the command's options and print its summary."""
    from probes.cli.format import format_classification

    print(format_classification(execute(args)))
    return 0


def execute(args: argparse.Namespace):
    """:func:`probes.run_linear` with the keywords the options name; returns the Run."""
    from probes.linear.run import run_linear

    return run_linear(
        **input_kwargs(args),
        label=args.label,
        feature=args.feature,
        **split_kwargs(args),
        mode=args.mode,
        backend=args.backend,
        dtype=args.dtype,
        device=args.device,
        Cs=args.Cs,
        balance_by=args.balance_by,
        **decision_kwargs(args),
        save_maps=args.save_maps,
        **grounding_kwargs(args),
        **output_kwargs(args),
    )
