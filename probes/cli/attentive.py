"""``probes attentive``: a thin shell over :func:`probes.run_attentive`."""

from __future__ import annotations

import argparse
from typing import Any

from probes.cli.common import (
    add_decision_options,
    add_grounding_options,
    add_input_options,
    add_output_options,
    add_split_options,
    add_training_options,
    decision_kwargs,
    grounding_kwargs,
    input_kwargs,
    output_kwargs,
    split_kwargs,
    training_params,
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
    add_training_options(p, epochs="200", batch="images (default 64)", lr="1e-2", patience="20")
    p.add_argument(
        "--no-maps", action="store_true", help="do not keep the patch maps (patch_maps.parquet)"
    )
    add_grounding_options(p)
    add_split_options(p, "the labels")
    add_decision_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def probe_params(args: argparse.Namespace) -> dict[str, Any]:
    """The AttentiveProbe parameters the options set (the rest: its defaults)."""
    return training_params(args, n_queries=args.queries)


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
        **decision_kwargs(args),
        **output_kwargs(args),
    )
