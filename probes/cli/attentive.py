"""``probes attentive``: a thin shell over :func:`probes.run_attentive`."""

from __future__ import annotations

import argparse
from typing import Any

from probes.cli.common import (
    add_grounding_options,
    add_input_options,
    add_output_options,
    add_split_options,
    grounding_kwargs,
    input_kwargs,
    output_kwargs,
    split_kwargs,
)

__all__ = ["execute", "probe_params", "register", "run"]


def register(subparsers) -> None:
    """Add ``probes attentive``."""
    p = subparsers.add_parser(
        "attentive",
        help="attentive probe: learned-query attention pooling over cached grid tokens",
        description="Cross-validated attentive probe of one encoder group: a few learned "
        "queries attend over the patch grid's tokens, a linear classifier reads the pooled "
        "vectors; AdamW, early stopping on the validation fold, minibatches streamed from the "
        "store. Writes the linear probe's tables plus each test image's attention and "
        "contribution maps (patch_maps.parquet).",
    )
    add_input_options(p)
    p.add_argument("--label", action="append", required=True, help="label column (repeatable)")
    p.add_argument(
        "--grid", default="16", choices=("16", "32", "grid16", "grid32"), help="patch grid (16)"
    )
    p.add_argument("--queries", type=int, help="learned queries (default 4)")
    p.add_argument("--epochs", type=int, help="most epochs (default 200)")
    p.add_argument("--batch-size", type=int, help="images per minibatch (default 64)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-2)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-2)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (20)")
    p.add_argument("--device", help="torch device (default auto: CUDA when present)")
    p.add_argument(
        "--no-maps", action="store_true", help="do not keep the patch maps (patch_maps.parquet)"
    )
    add_grounding_options(p)
    add_split_options(p, "the labels")
    add_output_options(p)
    p.set_defaults(func=run)


def probe_params(args: argparse.Namespace) -> dict[str, Any]:
    """The AttentiveProbe parameters the options set (the rest: its defaults)."""
    chosen = {
        "n_queries": args.queries,
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "patience": args.patience,
        "device": args.device,
    }
    return {k: v for k, v in chosen.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    """Run :func:`probes.run_attentive` and print its summary."""
    from probes.cli.format import format_classification

    print(format_classification(execute(args)))
    return 0


def execute(args: argparse.Namespace):
    """:func:`probes.run_attentive` with the keywords the options name; returns the Run."""
    from probes.attentive.run import run_attentive

    return run_attentive(
        **input_kwargs(args),
        label=args.label,
        grid=args.grid,
        **split_kwargs(args),
        probe_params=probe_params(args),
        save_maps=not args.no_maps,
        **grounding_kwargs(args),
        **output_kwargs(args),
    )
