"""``probes knn``: a thin shell over :func:`probes.run_knn`."""

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
    """Add ``probes knn``."""
    p = subparsers.add_parser(
        "knn",
        help="cosine k-NN probe with DINO's weighted votes, k chosen on the validation fold",
        description="Cross-validated k-NN probe of one encoder group: cosine similarity, the "
        "k nearest training rows vote with weight exp(similarity / T), k chosen per round on "
        "the validation fold. Exact search in memory-bounded blocks. The linear probe's tables.",
    )
    add_input_options(p)
    p.add_argument("--label", action="append", required=True, help="label column (repeatable)")
    add_feature_option(p)
    p.add_argument("--ks", type=int, nargs="+", help="k grid (default 5 10 20 50 100 200)")
    p.add_argument("--k", type=int, help="a fixed k (no choice on the validation fold)")
    p.add_argument("--temperature", type=float, default=0.07, help="vote temperature (0.07)")
    p.add_argument("--device", help="torch device for the search (default: numpy on the CPU)")
    add_split_options(p, "the labels")
    add_decision_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`probes.run_knn` and print its summary."""
    from probes.cli.format import format_classification

    print(format_classification(execute(args)))
    return 0


def execute(args: argparse.Namespace):
    """:func:`probes.run_knn` with the keywords the options name; returns the Run."""
    from probes.knn.run import run_knn

    return run_knn(
        **input_kwargs(args),
        label=args.label,
        feature=args.feature,
        **split_kwargs(args),
        ks=args.ks,
        k=args.k,
        temperature=args.temperature,
        device=args.device,
        **decision_kwargs(args),
        **output_kwargs(args),
    )
