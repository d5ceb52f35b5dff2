"""``probes mlp``: a thin shell over :func:`probes.run_mlp`."""

from __future__ import annotations

import argparse
from typing import Any

from probes.cli.common import (
    add_decision_options,
    add_feature_option,
    add_input_options,
    add_output_options,
    add_split_options,
    add_training_options,
    decision_kwargs,
    input_kwargs,
    output_kwargs,
    split_kwargs,
    training_params,
)

__all__ = ["execute", "probe_params", "register", "run"]


def register(subparsers) -> None:
    """Add ``probes mlp``."""
    p = subparsers.add_parser(
        "mlp",
        help="MLP probe (one hidden layer, dropout, early stopping) on cached features",
        description="Cross-validated MLP probe of one encoder group: standardisation, one "
        "hidden ReLU layer with dropout, AdamW, early stopping on the validation fold. The "
        "linear probe's tables.",
    )
    add_input_options(p)
    p.add_argument("--label", action="append", required=True, help="label column (repeatable)")
    add_feature_option(p)
    p.add_argument("--hidden", type=int, help="hidden units (default 256)")
    p.add_argument("--dropout", type=float, help="dropout after the hidden layer (0.2)")
    add_training_options(
        p,
        epochs="200",
        batch="rows (default 128)",
        lr="1e-3",
        patience="10",
        device="torch device for training (default cpu)",
    )
    add_split_options(p, "the labels")
    add_decision_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def probe_params(args: argparse.Namespace) -> dict[str, Any]:
    """The MLPProbe parameters the options set (the rest: its defaults)."""
    return training_params(args, hidden=args.hidden, dropout=args.dropout)


def run(args: argparse.Namespace) -> int:
    """Run :func:`probes.run_mlp` and print its summary."""
    from probes.cli.format import format_classification

    print(format_classification(execute(args)))
    return 0


def execute(args: argparse.Namespace):
    """:func:`probes.run_mlp` with the keywords the options name; returns the Run."""
    from probes.mlp.run import run_mlp

    return run_mlp(
        **input_kwargs(args),
        label=args.label,
        feature=args.feature,
        **split_kwargs(args),
        probe_params=probe_params(args),
        **decision_kwargs(args),
        **output_kwargs(args),
    )
