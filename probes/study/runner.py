"""Run a whole study: make missing cohorts, extract what is missing, run every unit not yet
done, merge each run's rounds, write the study's results table, end with the report.

Everything goes under ``study.out``::

    manifests/<task>.csv                   the manifest each task reads (``where`` applied)
    units/<task>/<encoder>/<protocol>/seed-<s>/round-<k>/   one unit: a `probes` run folder
    runs/<task>__<encoder>__<protocol>__seed-<s>/           its rounds merged
    results.csv                            every run's per-round results, one table
    report/                                `probes report` over runs/

Resuming is the default: a finished unit (its folder has ``run.json``) is never recomputed, a
finished extraction is a quick check, an interrupted unit is started again from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from probes.core.results import write_table
from probes.core.run import Run
from probes.study.config import Study, StudyError, Task
from probes.study.units import (
    Unit,
    clear_partial,
    iter_runs,
    plan_units,
    unit_args,
    unit_argv,
    unit_definition,
)

__all__ = ["StudyResult", "run_study"]


@dataclass
class StudyResult:
    """What one invocation did. ``ran``: units computed now; ``reused``: found complete."""

    ran: list[Unit] = field(default_factory=list)
    reused: list[Unit] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0


def run_study(
    study: Study,
    *,
    report: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or resume) ``study``; raises :class:`StudyError` naming a failed unit."""
    t0 = time.perf_counter()
    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    result = StudyResult()
    units = plan_units(study)
    done = {u: u.is_done(study) for u in units}
    pending = [u for u in units if not done[u]]
    result.reused = [u for u in units if done[u]]
    log(f"study {study.name}: {len(units)} units, {len(result.reused)} done, {len(pending)} to run")

    manifests = {name: _task_manifest(study, task) for name, task in study.tasks.items()}
    keys = _extract_missing(study, pending, progress, log)

    from tqdm import tqdm

    from probes.cli.options import execute_command

    for unit in tqdm(pending, desc=f"study {study.name}", unit="unit", disable=not progress):
        task = study.tasks[unit.task]
        manifest, root = manifests[unit.task]
        folder = unit.folder(out)
        partial = clear_partial(folder)
        where = dict(
            manifest=manifest,
            root=root,
            store_key=keys.get((task.cohort, unit.encoder)),
            out=partial,
        )
        protocol = study.protocols[unit.protocol]
        try:
            execute_command(protocol.command, unit_args(study, unit, **where))
        except Exception as exc:
            command = " ".join(unit_argv(study, unit, **where))
            raise StudyError(
                f"unit {unit} failed: {exc}; to rerun it by hand: probes {command}"
            ) from exc
        if not (partial / "run.json").is_file():
            raise StudyError(f"unit {unit} wrote no run.json into {partial}")
        definition = json.dumps(unit_definition(study, unit), indent=2, sort_keys=True)
        (partial / "unit.json").write_text(definition + "\n")
        if folder.exists():  # a stale unit: the study's definition of it changed
            shutil.rmtree(folder)
        os.replace(partial, folder)
        result.ran.append(unit)

    ran = set(result.ran)
    for (task, encoder, protocol, seed), run_units in iter_runs(units):
        name = f"{task}__{encoder}__{protocol}__seed-{seed}"
        target = out / "runs" / name
        # merged again only if one of its units ran now (or it was never merged)
        if not (target / "run.json").is_file() or ran.intersection(run_units):
            extra = dict(study=study.name, task_name=task, protocol=protocol, study_seed=seed)
            extra["encoder_name"] = encoder
            merged = Run.merge([Run.open(u.folder(out)) for u in run_units], name=name, **extra)
            _replace_run(merged, target)
        result.runs.append(target)
    _write_results(out, result.runs)
    if report:
        result.report = _report(study, result.runs, log)
    result.seconds = time.perf_counter() - t0
    log(
        f"study {study.name}: ran {len(result.ran)} units, reused {len(result.reused)}, "
        f"{len(result.runs)} runs, {result.seconds:.1f} s -> {out}"
    )
    return result


def _task_manifest(study: Study, task: Task) -> tuple[Path, Path | None]:
    """The manifest a task reads and the folder its relative paths start from."""
    cohort = study.cohorts[task.cohort]
    if not cohort.manifest.exists():
        if cohort.phantom is None:
            raise StudyError(f"cohort {cohort.name}: manifest {cohort.manifest} does not exist")
        _make_phantom(cohort.manifest, cohort.phantom)
    root = cohort.root or cohort.manifest.parent
    if task.where is None:
        return cohort.manifest, cohort.root
    from embedcache.intake.manifest import load_manifest

    table = load_manifest(cohort.manifest).table
    try:
        subset = table.query(task.where)
    except Exception as exc:
        raise StudyError(f"task {task.name}: `where` {task.where!r} failed: {exc}") from None
    if subset.empty:
        raise StudyError(f"task {task.name}: `where` {task.where!r} keeps no manifest rows")
    path = study.out / "manifests" / f"{task.name}.csv"
    text = subset.to_csv(index=False)
    if not path.exists() or path.read_text() != text:  # unchanged: keep (and its digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".csv.partial")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path, root


def _make_phantom(manifest: Path, options: dict) -> None:
    from embedcache.phantoms import CohortSpec, make_cohort

    if manifest.name != "manifest.csv":
        raise StudyError(f"a phantom cohort's manifest is <folder>/manifest.csv, got {manifest}")
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    make_cohort(manifest.parent, CohortSpec(**spec))


def _extract_missing(
    study: Study, pending: list[Unit], progress: bool, log: Callable[[str], None]
) -> dict[tuple[str, str], str]:
    """Extract (or resume, or just check) each (cohort, encoder) a pending unit reads from
    the store; returns their group keys."""
    from embedcache.extract import extract

    keys: dict[tuple[str, str], str] = {}
    for unit in pending:
        task = study.tasks[unit.task]
        pair = (task.cohort, unit.encoder)
        if pair in keys or not study.protocols[unit.protocol].reads_store:
            continue
        cohort, encoder = study.cohorts[task.cohort], study.encoders[unit.encoder]
        extracted = extract(
            cohort.manifest,
            encoder.spec,
            cohort.store,
            weights=encoder.weights,
            root=cohort.root,
            batch_size=encoder.batch_size,
            seed=encoder.seed,
            progress=progress,
            log=log,
            **encoder.extract_options,
        )
        keys[pair] = extracted.key
        log(
            f"extract {cohort.name} x {encoder.name}: {extracted.written} written -> {extracted.key}"
        )
    return keys


def _replace_run(run: Run, target: Path) -> None:
    """Write ``run`` beside ``target`` and rename it into place: a reader never sees half a
    merged run, and an older merge of the same units (e.g. before adding a seed) is replaced."""
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    run.write(partial)
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)


def _write_results(out: Path, runs: list[Path]) -> None:
    """``results.csv``: every run's per-round results with the run's study coordinates."""
    tables = []
    for folder in runs:
        run = Run.open(folder)
        meta, table = run.info, run.results
        for column in ("seed", "encoder"):
            if column in table.columns:  # the study's names come first; keep the run's own
                table = table.rename(columns={column: f"run_{column}"})
        tables.append(
            table.assign(
                run=meta["name"],
                task=meta["task_name"],
                encoder=meta["encoder_name"],
                protocol=meta["protocol"],
                seed=meta["study_seed"],
            )
        )
    merged = pd.concat(tables, ignore_index=True)
    first = ["run", "task", "encoder", "protocol", "seed"]
    merged = merged[first + [c for c in merged.columns if c not in first]]
    partial = out / "results.csv.partial"
    write_table(merged, partial)
    os.replace(partial, out / "results.csv")


def _report(study: Study, runs: list[Path], log: Callable[[str], None]) -> Path | None:
    from probes.report import build_report, load_runs

    target = study.out / "report"
    options = {k.replace("-", "_"): v for k, v in study.report.items()}
    if "subgroup" in options:
        options["subgroups"] = options.pop("subgroup")
        if isinstance(options["subgroups"], str):
            options["subgroups"] = [options["subgroups"]]
    try:
        build_report(load_runs(runs), target, n_boot=study.n_boot, **options)
    except Exception as exc:
        raise StudyError(f"the report failed: {exc}") from exc
    log(f"report {target / 'report.html'}")
    return target
