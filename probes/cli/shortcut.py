"""``probes shortcut``: a thin shell over :func:`probes.run_shortcut`."""

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

__all__ = ["execute", "format_shortcut", "register", "run"]


def register(subparsers) -> None:
    """Add ``probes shortcut``."""
    p = subparsers.add_parser(
        "shortcut",
        help="shortcut check: confounder decodability, subgroups, confounder-balanced training",
        description="Probe a binary confounder (e.g. chest_tube) from one encoder group's "
        "features; with --label, also probe the label plainly and on confounder-balanced "
        "training rows, and compare their sensitivity with and without the confounder.",
    )
    add_input_options(p)
    p.add_argument("--confounder", required=True, help="binary manifest column (chest_tube)")
    p.add_argument("--label", help="binary label column (pneumothorax): fit the label probes too")
    add_feature_option(p)
    add_split_options(p, "label x confounder")
    p.add_argument(
        "--backend", default="auto", choices=("auto", "numpy", "torch", "sklearn", "cuml")
    )
    p.add_argument("--Cs", type=float, nargs="+", help="C grid (default: 10 values 1e-4..1e2)")
    p.add_argument(
        "--threshold",
        default="youden",
        help="operating point for sensitivity: 'youden' (each round's, from its validation "
        "rows; default, since balanced training shifts the prevalence the probabilities are "
        "calibrated to) or a probability such as 0.5 (the reference study's)",
    )
    p.add_argument("--size-column", help="lesion size column for subgroups.csv (ptx_area_pct)")
    p.add_argument("--size-bins", type=int, default=4, help="size quantile bins (default 4)")
    add_decision_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`probes.run_shortcut` and print the confounder's AUROC and the gaps."""
    print(format_shortcut(execute(args)))
    return 0


def execute(args: argparse.Namespace):
    """:func:`probes.run_shortcut` with the keywords the options name; returns the Run."""
    from probes.analysis.shortcut_run import parse_threshold, run_shortcut

    try:
        parse_threshold(args.threshold)
    except ValueError:
        raise ValueError(
            f"--threshold must be 'youden' or a probability, got {args.threshold!r}"
        ) from None
    return run_shortcut(
        **input_kwargs(args),
        confounder=args.confounder,
        label=args.label,
        feature=args.feature,
        **split_kwargs(args),
        backend=args.backend,
        Cs=args.Cs,
        threshold=args.threshold,
        size_column=args.size_column,
        size_bins=args.size_bins,
        **decision_kwargs(args),
        **output_kwargs(args),
    )


def format_shortcut(run) -> str:
    """The confounder's AUROC, then each label probe's sensitivity with vs without it."""
    report = run.extras["shortcut.json"]
    tube = report["confounder_probe"]
    lines = [
        f"{report['confounder']} from {run.encoder} / {run.feature}: AUROC {tube['auroc']:.3f} "
        f"[{tube['auroc_ci_low']:.3f}, {tube['auroc_ci_high']:.3f}] over {tube['n']} test rows "
        f"({tube['patients']} patients); per round {tube['auroc_round_mean']:.3f} ± "
        f"{tube['auroc_round_sd']:.3f}"
    ]
    if "label" in report:
        gap = report["sensitivity_gap"]
        lines += [
            f"{report['label']} probe, sensitivity at threshold {gap['plain']['threshold']}, "
            f"with vs without {report['confounder']}:",
            f"{'training':<10} {'AUROC':>6}  {'with':<16} {'without':<16} gap [95% CI]",
        ]
        for name in ("plain", "balanced"):
            g, auc = gap[name], report["label_probe"][name]["auroc"]
            with_ = f"{g['sensitivity_with']:.3f} (n={g['n_with']})"
            without = f"{g['sensitivity_without']:.3f} (n={g['n_without']})"
            lines.append(
                f"{name:<10} {auc:>6.3f}  {with_:<16} {without:<16} {g['gap']:+.3f} "
                f"[{g['gap_ci_low']:+.3f}, {g['gap_ci_high']:+.3f}]"
            )
    if run.path is not None:
        lines.append(f"written to {run.path}/")
    return "\n".join(lines)
