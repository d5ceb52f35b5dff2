"""``probes mlp``: a thin shell over :func:`probes.run_mlp`."""

from __future__ import annotations

import argparse
from typing import Any

from probes.cli.common import (
    add_feature_option,
    add_input_options,
    add_output_options,
    add_split_options,
    input_kwargs,
    output_kwargs,
    split_kwargs,
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
    p.add_argument("--epochs", type=int, help="most epochs (default 200)")
    p.add_argument("--batch-size", type=int, help="rows per minibatch (default 128)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-2)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (10)")
    p.add_argument("--device", help="torch device for training (default cpu)")
    add_split_options(p, "the labels")
    add_output_options(p)
    p.set_defaults(func=run)


def probe_params(args: argparse.Namespace) -> dict[str, Any]:
    """The MLPProbe parameters the options set (the rest: its defaults)."""
    chosen = {
        "hidden": args.hidden,
        "dropout": args.dropout,
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "patience": args.patience,
        "device": args.device,
    }
    return {k: v for k, v in chosen.items() if v is not None}


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
        **output_kwargs(args),
    )
