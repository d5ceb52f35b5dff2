"""Units of work of a study, and the `probes` command line each one runs.

A unit is one round of one (task, encoder, protocol, seed): the finest level a study resumes at.
Its results live in ``OUT/units/<task>/<encoder>/<protocol>/seed-<s>/round-<k>/`` and exist only
when complete: a unit runs into a ``.partial`` folder that is renamed when its ``run.json`` is
written (a rename within one folder is atomic on POSIX filesystems).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.study.config import COMMANDS, Study, Task

__all__ = ["Unit", "option_flags", "plan_units"]


@dataclass(frozen=True)
class Unit:
    """One round of one (task, encoder, protocol, seed)."""

    task: str
    encoder: str
    protocol: str
    seed: int
    round: int

    @property
    def run(self) -> tuple[str, str, str, int]:
        """The run this unit is a round of."""
        return (self.task, self.encoder, self.protocol, self.seed)

    def folder(self, out: Path) -> Path:
        return (
            out
            / "units"
            / self.task
            / self.encoder
            / self.protocol
            / f"seed-{self.seed}"
            / (f"round-{self.round}")
        )

    def is_done(self, study: Study) -> bool:
        """Finished, and by the study's current definition (else stale: run again)."""
        folder = self.folder(study.out)
        if not (folder / "run.json").is_file() or not (folder / "unit.json").is_file():
            return False
        return json.loads((folder / "unit.json").read_text()) == unit_definition(study, self)

    def __str__(self) -> str:
        return f"{self.task}/{self.encoder}/{self.protocol}/seed-{self.seed}/round-{self.round}"


def unit_definition(study: Study, unit: Unit) -> dict[str, Any]:
    """Everything in the study file that can change a unit's numbers (written to its
    ``unit.json``): editing any of it makes the unit stale; editing anything else (another
    task, a batch size, the report options) does not."""
    task = study.tasks[unit.task]
    protocol = study.protocols[unit.protocol]
    encoder = study.encoders[unit.encoder]
    cohort = study.cohorts[task.cohort]
    return {
        "unit": str(unit),
        "cohort": {
            "manifest": str(cohort.manifest),
            "store": cohort.store,
            "root": str(cohort.root) if cohort.root else None,
            "phantom": cohort.phantom,
        },
        "encoder": {
            "spec": encoder.spec,
            "weights": encoder.weights,
            "seed": encoder.seed,
            "extract_options": encoder.extract_options,
        },
        "task": {
            "label": task.label,
            "mask": task.mask,
            "where": task.where,
            "options": task.options.get(protocol.command, {}),
        },
        "protocol": {"command": protocol.command, "options": protocol.options},
        "split": {
            "folds": study.folds,
            "n_folds": study.n_folds,
            "seed": unit.seed,
            **_study_budgets(study, protocol.command),
        },
        "n_boot": study.n_boot,
    }


def plan_units(study: Study) -> list[Unit]:
    """Every unit of the study, in a stable order (task, encoder, protocol, seed, round)."""
    return [
        Unit(task.name, encoder, protocol, seed, k)
        for task in study.tasks.values()
        for encoder in task.encoders
        for protocol in task.protocols
        for seed in study.seeds
        for k in range(study.n_folds)
    ]


def option_flags(options: dict[str, Any]) -> list[str]:
    """``{"class-weights": "1,5", "save-masks": true, "Cs": [0.1, 1]}`` ->
    ``["--class-weights", "1,5", "--save-masks", "--Cs", "0.1", "1"]`` (false/None: left out)."""
    flags: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flags.append(f"--{key}")
        if value is True:
            continue
        values = value if isinstance(value, list) else [value]
        flags += [str(v) for v in values]
    return flags


def unit_argv(
    study: Study,
    unit: Unit,
    *,
    manifest: Path,
    root: Path | None,
    store_key: str | None,
    out: Path,
) -> list[str]:
    """The ``probes`` command line of ``unit`` writing into ``out``."""
    task: Task = study.tasks[unit.task]
    protocol = study.protocols[unit.protocol]
    encoder = study.encoders[unit.encoder]
    cohort = study.cohorts[task.cohort]
    argv = [protocol.command]
    if protocol.reads_store:
        argv += [cohort.store, "--manifest", str(manifest), "--encoder", str(store_key)]
        if task.where is not None:  # the task reads a subset of the store's images
            argv.append("--allow-subset")
    else:
        argv += [str(manifest), "--encoder", encoder.spec]
        if encoder.weights is not None:
            argv += ["--weights", encoder.weights, "--init-seed", str(encoder.seed)]
    if root is not None:
        argv += ["--root", str(root)]
    argv += ["--label", task.label] if task.label is not None else ["--mask", str(task.mask)]
    argv += [
        *("--folds", study.folds, "--n-folds", str(study.n_folds)),
        *("--seed", str(unit.seed), "--rounds", str(unit.round)),
        *("--n-boot", str(study.n_boot), "--out", str(out), "--quiet"),
    ]
    # The study's budgets, protocol options, then the task's options for this command (e.g.
    # seg class weights): later flags win.
    budgets = _study_budgets(study, protocol.command)
    argv += option_flags({k.replace("_", "-"): v for k, v in budgets.items()})
    argv += option_flags(protocol.options)
    argv += option_flags(task.options.get(protocol.command, {}))
    return argv


def unit_args(
    study: Study,
    unit: Unit,
    *,
    manifest: Path,
    root: Path | None,
    store_key: str | None,
    out: Path,
):
    """The options of ``unit``'s command writing into ``out``, as the Namespace its
    ``execute`` takes (:func:`probes.cli.options.command_namespace`): the same options as
    :func:`unit_argv`, without a command line."""
    from probes.cli.options import command_namespace

    task: Task = study.tasks[unit.task]
    protocol = study.protocols[unit.protocol]
    encoder = study.encoders[unit.encoder]
    cohort = study.cohorts[task.cohort]
    values: dict[str, Any] = {
        "manifest": str(manifest),
        "root": None if root is None else str(root),
    }
    if protocol.reads_store:
        values.update(store=cohort.store, encoder=str(store_key))
        values["allow_subset"] = task.where is not None  # the task reads part of the store
    else:
        values["encoder"] = encoder.spec
        if encoder.weights is not None:
            values.update(weights=encoder.weights, init_seed=encoder.seed)
    if task.label is not None:
        values["label"] = [task.label]
    else:
        values["mask"] = str(task.mask)
    values.update(
        folds=study.folds,
        n_folds=study.n_folds,
        seed=unit.seed,
        rounds=[unit.round],
        n_boot=study.n_boot,
        out=str(out),
        quiet=True,
        **_study_budgets(study, protocol.command),
    )
    # Protocol options, then the task's options for this command (e.g. seg class weights).
    options = {**protocol.options, **task.options.get(protocol.command, {})}
    return command_namespace(protocol.command, values, options)


def _study_budgets(study: Study, command: str) -> dict[str, Any]:
    """``[study] budgets`` / ``budget_draws`` for a command that takes them (every probe on
    the store; not the fine-tune), as run-function keywords; empty without budgets."""
    if study.budgets is None or not COMMANDS[command]:
        return {}
    return {"budgets": study.budgets, "budget_draws": study.budget_draws}


def clear_partial(folder: Path) -> Path:
    """The ``.partial`` sibling a unit runs into, emptied of an interrupted attempt."""
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    return partial


def iter_runs(units: list[Unit]) -> Iterator[tuple[tuple[str, str, str, int], list[Unit]]]:
    """Units grouped by run, in plan order."""
    runs: dict[tuple[str, str, str, int], list[Unit]] = {}
    for unit in units:
        runs.setdefault(unit.run, []).append(unit)
    yield from runs.items()
