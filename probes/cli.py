"""``probes``: probe an embedcache store from the command line.

::

    probes linear cohort.zarr --manifest manifest.csv --label pneumothorax --out results/

Subcommands live in :data:`COMMANDS` (name -> ``register(subparsers)``). Modules named in
:data:`PLUGINS` add their own when they exist: ``probes seg`` comes from
``probes.segmentation_cli.register(subparsers)``, which sets ``func`` on its parser as below.
The command line is a thin shell: everything it does is a function a notebook can call.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from probes.features import FeatureError, FeatureSet, binary_labels
from probes.metrics import format_mean_sd, format_median_range
from probes.results import cross_predict, results_table, summary_table
from probes.runs import (
    add_feature_option,
    add_input_options,
    add_output_options,
    add_split_options,
    make_split,
    open_features,
    write_run,
)
from probes.splits import LeakageError

__all__ = ["COMMANDS", "PLUGINS", "build_parser", "main", "run_linear"]


def register_linear(subparsers) -> None:
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
    add_output_options(p)
    p.set_defaults(func=run_linear)


#: Subcommand name -> function adding its parser to the ``subparsers`` action.
COMMANDS: dict[str, Callable] = {"linear": register_linear}
#: Subcommand name -> optional module whose ``register(subparsers)`` adds it.
PLUGINS: dict[str, str] = {
    "seg": "probes.segmentation_cli",
    "shortcut": "probes.shortcuts_cli",
    "report": "probes.report.cli",
    "finetune": "probes.finetune.cli",
    "study": "probes.study.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probes", description="Probe an embedcache store (probes COMMAND --help)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS.values():
        register(subparsers)
    for name, module in PLUGINS.items():
        _register_plugin(subparsers, name, module)
    return parser


def _register_plugin(subparsers, name: str, module: str) -> None:
    try:
        if importlib.util.find_spec(module) is None:
            return
    except ModuleNotFoundError:  # its parent package is absent
        return
    try:
        importlib.import_module(module).register(subparsers)
    except Exception as exc:  # keep the other commands usable; report when asked for
        stub = subparsers.add_parser(name, help=f"(unavailable: {module} failed to load)")
        stub.set_defaults(func=lambda args, exc=exc: _fail(f"{module} failed to load: {exc!r}"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probes`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FeatureError, LeakageError, ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))


def run_linear(args: argparse.Namespace) -> int:
    """``probes linear``: load, split, cross-fit, write tables, print the summary."""
    from tqdm import tqdm

    from probes.backends import resolve_backend
    from probes.linear import LinearProbe, SGDHeadProbe

    fs = open_features(args, args.feature)
    Y, positives = binary_labels(fs.labels, args.label)
    split = make_split(fs, args, strata=Y)
    balance = fs.labels(args.balance_by) if args.balance_by else None
    X = fs.load()
    if X.ndim > 2:  # a grid: average over its patches
        X = X.reshape(len(X), -1, X.shape[-1]).mean(axis=1)
    if args.mode == "logistic":
        probe = LinearProbe(Cs=args.Cs, backend=args.backend, dtype=args.dtype, device=args.device)
        backend = resolve_backend(args.backend, device=args.device)
    else:
        probe = SGDHeadProbe(random_state=args.seed, device=args.device or "cpu")
        backend = "torch"
    with tqdm(total=len(split), desc=f"probes linear {fs.key}", disable=args.quiet) as bar:
        predictions = cross_predict(
            probe,
            X,
            Y,
            split,
            ids=fs.ids,
            patient_ids=fs.patient_ids,
            label_names=args.label,
            encoder=fs.key,
            feature=fs.feature,
            seed=args.seed,
            on_round=lambda _: bar.update(),
            balance=balance,
        )
    results = results_table(predictions, n_boot=args.n_boot, seed=args.seed)
    summary = summary_table(results)
    out = write_run(
        args,
        fs,
        split,
        probe,
        predictions,
        results,
        summary,
        feature=fs.feature,
        labels=args.label,
        positive_class=positives,
        backend=backend,
        balance_by=args.balance_by,
    )
    print(_format_summary(results, fs, split, out))
    return 0


def _format_summary(results, fs: FeatureSet, split, out: Path) -> str:
    head = f"{'label':<20} {'folds':>5}  {'AUROC median [min, max]':<24} {'AUROC mean ± sd':<16}"
    lines = [
        f"{fs.key} / {fs.feature}: {len(fs)} images ({fs.excluded} excluded), "
        f"{split.kind} split, {len(split)} rounds",
        head + f"  {'AUPRC median [min, max]':<24}",
    ]
    for label, part in results.groupby("label", sort=True):
        lines.append(
            f"{label:<20} {len(part):>5}  {format_median_range(part['auroc']):<24} "
            f"{format_mean_sd(part['auroc']):<16}  {format_median_range(part['auprc']):<24}"
        )
    lines.append(f"written to {out}/")
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"probes: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
