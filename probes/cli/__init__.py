"""``probes``: probe an embedcache store from the command line.

::

    probes linear cohort.zarr --manifest manifest.csv --label pneumothorax --out results/

A thin shell: each command parses its arguments and calls the run function a notebook calls
(``probes.run_linear``, ``run_seg``, ``run_attentive``, ``run_mlp``, ``run_knn``,
``run_shortcut``, ``run_control``, ``finetune``, ``report``, a study), then prints. Each
command's parser lives in its own light module (:data:`COMMANDS`); only the command that runs
is loaded, so ``probes linear`` never imports torch or matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

#: Command -> module whose ``register(subparsers)`` adds its parser (with ``func`` set).
COMMANDS: dict[str, str] = {
    "linear": "probes.cli.linear",
    "seg": "probes.cli.seg",
    "attentive": "probes.cli.attentive",
    "mlp": "probes.cli.mlp",
    "knn": "probes.cli.knn",
    "shortcut": "probes.cli.shortcut",
    "control": "probes.cli.control",
    "finetune": "probes.cli.finetune",
    "report": "probes.cli.report",
    "study": "probes.cli.study",
    "demo": "probes.cli.demo",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``probes`` parser with every command, or with command ``only``."""
    parser = argparse.ArgumentParser(
        prog="probes", description="Probe an embedcache store (probes COMMAND --help)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probes`` console script; returns the exit status. Errors of the
    input (a missing column, a leaked patient, a bad option...) print one line, exit 2."""
    from probes.core.protocol import COMMAND_LINE
    from probes.errors import USER_ERRORS

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    recorded = COMMAND_LINE.set(["probes", *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
        try:
            return int(args.func(args) or 0)
        except USER_ERRORS as exc:
            print(f"probes {args.command}: error: {exc}", file=sys.stderr)
            return 2
        finally:
            COMMAND_LINE.reset(recorded)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
