"""A study file (TOML): cohorts, encoders, tasks, protocols, folds and seeds, checked on load.

::

    [study]
    name = "phantom-reference"
    out = "phantom-reference-output"     # relative to this file
    folds = "reference"                  # patient | reference | a manifest column
    n_folds = 5
    seeds = [5656]
    budgets = [0.1, 0.5, 1.0]            # optional: label-efficiency curve for every probe
    budget_draws = 3                     #   (fractions, or whole numbers: images per class)

    [cohorts.phantom]
    manifest = "cohort/manifest.csv"     # relative to `out` when `phantom` generates it,
    store = "store.zarr"                 # else to this file
    phantom = { n_patients = 40 }        # optional: make a phantom cohort if missing

    [encoders.dinov2]
    spec = "dinov2-small"
    weights = "none"                     # optional: hub id, folder, none

    [protocols.logistic]
    command = "linear"                   # a `probes` subcommand
    options = { mode = "logistic" }      # its options, without the leading --

    [tasks.pneumothorax]
    cohort = "phantom"
    label = "pneumothorax"               # or mask = "ptx_rle"
    where = "view == 'PA'"               # optional pandas query on the manifest
    protocols = ["logistic"]
    encoders = ["dinov2"]                # optional: default all

Every problem is a :class:`StudyError` naming the file and the key.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Cohort", "EncoderEntry", "Protocol", "Study", "StudyError", "Task", "load_study"]

#: `probes` subcommands a protocol may name, and whether they read the store.
COMMANDS = {
    "linear": True,
    "seg": True,
    "attentive": True,
    "mlp": True,
    "knn": True,
    "shortcut": True,
    "control": True,
    "finetune": False,
}
_TABLE_KEYS = {
    "study": {
        "name",
        "out",
        "folds",
        "n_folds",
        "seeds",
        "n_boot",
        "report",
        "budgets",
        "budget_draws",
    },
    "cohort": {"manifest", "store", "root", "phantom"},
    "encoder": {"spec", "weights", "batch_size", "seed", "extract_options"},
    "protocol": {"command", "options"},
    "task": {"cohort", "label", "mask", "where", "protocols", "encoders", "options"},
}


class StudyError(ValueError):
    """The study file is unreadable or inconsistent."""


@dataclass(frozen=True)
class Cohort:
    name: str
    manifest: Path
    store: str
    root: Path | None = None
    phantom: dict[str, Any] | None = None


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    spec: str
    weights: str | None = None
    batch_size: int = 16
    seed: int = 0
    extract_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Protocol:
    name: str
    command: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def reads_store(self) -> bool:
        return COMMANDS[self.command]


@dataclass(frozen=True)
class Task:
    name: str
    cohort: str
    label: str | None
    mask: str | None
    where: str | None
    protocols: tuple[str, ...]
    encoders: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A parsed study. Paths are absolute; ``out`` holds everything the runner writes."""

    name: str
    source: Path
    out: Path
    folds: str
    n_folds: int
    seeds: tuple[int, ...]
    n_boot: int
    cohorts: dict[str, Cohort]
    encoders: dict[str, EncoderEntry]
    protocols: dict[str, Protocol]
    tasks: dict[str, Task]
    report: dict[str, Any] = field(default_factory=dict)
    budgets: str | None = None
    budget_draws: int = 1


def load_study(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Study:
    """Read and check a study file; ``out`` overrides ``[study] out``."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{path}: no such study file") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML: {exc}") from None
    where = str(path)
    head = _table(raw, "study", where)
    _known(head, "study", f"{where} [study]")
    base = path.parent
    out_dir = Path(out).resolve() if out else base / str(head.get("out", f"{path.stem}-output"))
    cohorts = {
        name: _cohort(name, spec, base, out_dir, f"{where} [cohorts.{name}]")
        for name, spec in _table(raw, "cohorts", where).items()
    }
    encoders = {
        name: _encoder(name, spec, f"{where} [encoders.{name}]")
        for name, spec in _table(raw, "encoders", where).items()
    }
    protocols = {
        name: _protocol(name, spec, f"{where} [protocols.{name}]")
        for name, spec in _table(raw, "protocols", where).items()
    }
    tasks = {
        name: _task(name, spec, cohorts, encoders, protocols, f"{where} [tasks.{name}]")
        for name, spec in _table(raw, "tasks", where).items()
    }
    seeds = head.get("seeds", [5656])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StudyError(f"{where} [study] seeds: a non-empty list of integers, got {seeds!r}")
    budgets = _budgets(head.get("budgets"), f"{where} [study] budgets")
    draws = head.get("budget_draws", 1)
    if not isinstance(draws, int) or draws < 1:
        raise StudyError(f"{where} [study] budget_draws: a whole number >= 1, got {draws!r}")
    return Study(
        name=str(head.get("name", path.stem)),
        source=path,
        out=out_dir,
        folds=str(head.get("folds", "patient")),
        n_folds=int(head.get("n_folds", 5)),
        seeds=tuple(seeds),
        n_boot=int(head.get("n_boot", 1000)),
        cohorts=cohorts,
        encoders=encoders,
        protocols=protocols,
        tasks=tasks,
        report=dict(head.get("report", {})),
        budgets=budgets,
        budget_draws=draws,
    )


def _budgets(value: Any, where: str) -> str | None:
    """The study's budgets as the text ``--budgets`` takes (``"0.1,0.5,1.0"``, ``"4,16"``)."""
    if value is None:
        return None
    from probes.core.budgets import parse_budgets

    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    try:
        parse_budgets(text)
    except ValueError as exc:
        raise StudyError(f"{where}: {exc}") from None
    return text


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key)
    if not isinstance(value, dict) or not value:
        raise StudyError(f"{where}: needs a non-empty [{key}] table")
    return value


def _known(spec: dict, kind: str, where: str) -> None:
    unknown = sorted(set(spec) - _TABLE_KEYS[kind])
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown}; known: {sorted(_TABLE_KEYS[kind])}")


def _cohort(name: str, spec: dict, base: Path, out: Path, where: str) -> Cohort:
    _known(spec, "cohort", where)
    if "manifest" not in spec or "store" not in spec:
        raise StudyError(f"{where}: needs `manifest` and `store`")
    phantom = spec.get("phantom")
    # A generated cohort lives with the study's outputs; a user's cohort next to the study file.
    anchor = out if phantom is not None else base
    store = str(spec["store"])
    if "://" not in store:
        store = str(anchor / store)
    root = spec.get("root")
    return Cohort(
        name=name,
        manifest=anchor / str(spec["manifest"]),
        store=store,
        root=anchor / str(root) if root else None,
        phantom=dict(phantom) if phantom is not None else None,
    )


def _encoder(name: str, spec: dict, where: str) -> EncoderEntry:
    _known(spec, "encoder", where)
    if "spec" not in spec:
        raise StudyError(f"{where}: needs `spec` (a preset name, hf:..., timm:..., open_clip:...)")
    return EncoderEntry(
        name=name,
        spec=str(spec["spec"]),
        weights=str(spec["weights"]) if "weights" in spec else None,
        batch_size=int(spec.get("batch_size", 16)),
        seed=int(spec.get("seed", 0)),
        extract_options=dict(spec.get("extract_options", {})),
    )


def _protocol(name: str, spec: dict, where: str) -> Protocol:
    _known(spec, "protocol", where)
    command = spec.get("command")
    if command not in COMMANDS:
        raise StudyError(f"{where}: command {command!r} is not one of {sorted(COMMANDS)}")
    return Protocol(name, command, dict(spec.get("options", {})))


def _task(
    name: str, spec: dict, cohorts: dict, encoders: dict, protocols: dict, where: str
) -> Task:
    _known(spec, "task", where)
    if (spec.get("label") is None) == (spec.get("mask") is None):
        raise StudyError(f"{where}: needs exactly one of `label` or `mask`")
    if spec.get("cohort") not in cohorts:
        raise StudyError(f"{where}: cohort {spec.get('cohort')!r} is not in [cohorts]")
    names = spec.get("protocols")
    if not isinstance(names, list) or not names:
        raise StudyError(f"{where}: needs a non-empty `protocols` list")
    for p in names:
        if p not in protocols:
            raise StudyError(f"{where}: protocol {p!r} is not in [protocols]")
    chosen = spec.get("encoders", list(encoders))
    for e in chosen:
        if e not in encoders:
            raise StudyError(f"{where}: encoder {e!r} is not in [encoders]")
    return Task(
        name=name,
        cohort=spec["cohort"],
        label=spec.get("label"),
        mask=spec.get("mask"),
        where=spec.get("where"),
        protocols=tuple(names),
        encoders=tuple(chosen),
        options=dict(spec.get("options", {})),
    )
