"""A command's options given as a mapping (a study file's ``options = {...}``) turned into the
``argparse.Namespace`` its :func:`execute` takes, using the command's own declarations (type,
choices, flags, lists): one definition of every option, no argv strings.

::

    args = command_namespace("seg", {"store": ..., "manifest": ..., "mask": "heart"},
                             {"class-weights": "1,5", "save-masks": True})
    run = importlib.import_module("probes.cli.seg").execute(args)
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping
from typing import Any

from probes.cli import COMMANDS

__all__ = ["command_namespace", "execute_command"]


def command_namespace(
    command: str, values: Mapping[str, Any], options: Mapping[str, Any] = {}
) -> argparse.Namespace:
    """The Namespace of ``probes COMMAND``: every option at its default, then ``values``
    (destinations: ``store``, ``label``...) and ``options`` (flag names without ``--``:
    ``class-weights``, ``save-masks``), each converted and checked as the parser would.

    Raises ``ValueError`` naming an unknown option or a bad value.
    """
    parser = argparse.ArgumentParser(prog="probes")
    subparsers = parser.add_subparsers(dest="command")
    importlib.import_module(COMMANDS[command]).register(subparsers)
    sub = subparsers.choices[command]
    actions = {a.dest: a for a in sub._actions if a.dest != "help"}
    by_flag = {flag: a for a in actions.values() for flag in a.option_strings}
    args = argparse.Namespace(command=command, **{d: a.default for d, a in actions.items()})
    args.func = sub.get_default("func")
    for dest, value in values.items():
        if dest not in actions:
            raise ValueError(f"probes {command} has no option {dest!r}")
        setattr(args, dest, value)
    for key, value in options.items():
        action = by_flag.get(f"--{key}")
        if action is None:
            raise ValueError(
                f"probes {command} has no option --{key}; options: "
                + ", ".join(sorted(f for f in by_flag if f.startswith("--")))
            )
        setattr(args, action.dest, _convert(command, key, action, value))
    return args


def execute_command(command: str, args: argparse.Namespace):
    """Run ``probes COMMAND``'s function (its module's ``execute``) on ``args``; returns the
    Run."""
    return importlib.import_module(COMMANDS[command]).execute(args)


def _convert(command: str, key: str, action: argparse.Action, value: Any) -> Any:
    if action.nargs == 0:  # a flag (store_true)
        if not isinstance(value, bool):
            raise ValueError(f"probes {command} --{key} is a flag: give true or false")
        return action.const if value else action.default
    many = action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)
    items = list(value) if isinstance(value, list | tuple) else [value]
    converted = [_one(command, key, action, v) for v in items]
    if many:
        return converted
    if len(converted) != 1:
        raise ValueError(f"probes {command} --{key} takes one value, got {value!r}")
    return converted[0]


def _one(command: str, key: str, action: argparse.Action, value: Any) -> Any:
    text = str(value).lower() if isinstance(value, bool) else value
    if action.type is not None:
        try:
            text = action.type(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"probes {command} --{key}: bad value {value!r} ({exc})") from None
    elif not isinstance(text, str):
        text = str(text)
    if action.choices is not None and text not in action.choices:
        raise ValueError(
            f"probes {command} --{key}: {value!r} is not one of {list(action.choices)}"
        )
    return text
