"""A probe run: what it produced and its folder (what it was, :class:`RunSpec`, is in
:mod:`probes.core.spec`; re-exported here).

:class:`Run` is the one owner of the run folder that every protocol (``probes linear``,
``seg``, ``shortcut``, ``finetune``, a study's merged rounds) leaves behind::

    out/
      run.json               format, task, spec, provenance (versions, git commit, digests...)
      predictions.parquet    one row per scored image (x label) and round: the source of every metric
      results.csv            one row per round (x label)
      summary.csv            over rounds
      folds.csv              image_id, patient_id, fold and each round's role of every row
      <extras>               protocol files (subgroups.csv, shortcut.json, history.csv, ...)

Writing is crash-safe: each file is written to a temporary name and renamed, and ``run.json``
(removed first, written last) marks a complete run. :meth:`Run.open` reads any run folder,
including those written before ``run.json`` carried a format and a task (their task is read
from the prediction columns, as before)::

    run = probes.Run.open("results/ptx")
    run.task, run.spec.task.labels, run.results, run.predictions
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from probes.core.results import read_table, summary_table, write_table
from probes.core.spec import (
    CLASSIFICATION,
    SEGMENTATION,
    Inputs,
    RunSpec,
    SplitSpec,
    TaskKind,
    TaskSpec,
    jsonable,
)

__all__ = [
    "CLASSIFICATION",
    "RUN_FORMAT",
    "SEGMENTATION",
    "Inputs",
    "Run",
    "RunFolderError",
    "RunSpec",
    "SplitSpec",
    "TaskSpec",
    "TaskKind",
]

#: Extras read back as tables (anything else is JSON).
TABLE_SUFFIXES = (".csv", ".parquet")
#: Version of the run folder layout written by :meth:`Run.write` (folders without one are 1).
RUN_FORMAT = 2


class RunFolderError(ValueError):
    """A folder that is not a readable run folder; the message names the folder and why."""


@dataclass(eq=False)
class Run:
    """One run: its spec, tables and provenance; :meth:`write` / :meth:`open` its folder.

    Attributes:
        spec: the :class:`RunSpec` (``None`` for a folder written before specs existed).
        predictions: one row per scored image (x label) and round, ``split`` in val/test.
        results: one row per round (x label). summary: over rounds.
        folds: image_id, patient_id, fold and ``round_k`` roles (``None`` if not recorded).
        info: ``run.json`` (provenance and the protocol's own fields).
        extras: protocol files, name -> table (``.csv``) or dict (``.json``).
        path: the folder it was written to or read from. name: its name in a report.
    """

    spec: RunSpec | None
    predictions: pd.DataFrame
    results: pd.DataFrame
    summary: pd.DataFrame
    folds: pd.DataFrame | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict, repr=False)
    path: Path | None = None
    name: str = ""

    # --- what it is ----------------------------------------------------------------------
    @property
    def task(self) -> TaskKind:
        """``classification`` or ``segmentation``."""
        if self.spec is not None:
            return self.spec.task.kind
        return _task_from_columns(self.path, self.predictions)

    @property
    def test(self) -> pd.DataFrame:
        """The test rows of :attr:`predictions`."""
        return self.predictions[self.predictions["split"] == "test"]

    @property
    def encoder(self) -> str:
        return str(self.info.get("encoder", ""))

    @property
    def probe(self) -> str:
        return str(self.info.get("probe", ""))

    @property
    def feature(self) -> str:
        """The features the probe read: ``global``/``grid16``/... or the segmentation grid."""
        return str(self.info.get("feature") or self.info.get("grid") or "")

    @property
    def labels(self) -> list[str]:
        """Classification labels in the predictions (empty for segmentation)."""
        if self.task != CLASSIFICATION:
            return []
        return sorted(self.predictions["label"].astype(str).unique())

    @property
    def split(self) -> dict[str, Any]:
        return dict(self.info.get("split") or {})

    @property
    def images(self) -> int:
        """Distinct images scored on a test fold."""
        return int(self.test["image_id"].nunique())

    @property
    def manifest_digest(self) -> str:
        return str(self.info.get("manifest_digest", ""))

    @property
    def has_masks(self) -> bool:
        """Whether predicted masks were saved (``--save-masks``)."""
        return self.task == SEGMENTATION and "pred_rle" in self.predictions.columns

    # --- the folder ----------------------------------------------------------------------
    def saved(self, path: str | os.PathLike | None, table_format: str = "parquet") -> Run:
        """This run, written to ``path`` first when one is given (a run function's ``out=``)."""
        if path is not None:
            self.write(path, table_format)
        return self

    def write(self, path: str | os.PathLike, table_format: str = "parquet") -> Path:
        """Write the run into folder ``path`` (created if needed) and return it.

        Crash-safe: ``run.json`` is removed first and written last, every file goes through a
        temporary name; a killed write leaves no ``run.json``, so :meth:`open` refuses the
        folder instead of reading a mix of two runs. Predictions in ``table_format``
        (``parquet`` or ``csv``); the other format's stale file is removed.
        """
        if table_format not in ("parquet", "csv"):
            raise ValueError(f"table_format must be 'parquet' or 'csv', got {table_format!r}")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").unlink(missing_ok=True)
        other = "csv" if table_format == "parquet" else "parquet"
        (out / f"predictions.{other}").unlink(missing_ok=True)
        _atomic_table(self.predictions, out / f"predictions.{table_format}")
        _atomic_table(self.results, out / "results.csv")
        _atomic_table(self.summary, out / "summary.csv")
        if self.folds is not None:
            _atomic_table(self.folds, out / "folds.csv")
        for name, value in self.extras.items():
            if isinstance(value, pd.DataFrame):
                _atomic_table(value, out / name)
            else:
                _atomic_text(out / name, _dump_json(value))
        info = {**self.info, "format": RUN_FORMAT, "task": self.task}
        if self.spec is not None:
            info["spec"] = self.spec.to_dict()
        if self.extras:
            info["extras"] = sorted(self.extras)
        _atomic_text(out / "run.json", _dump_json(info))
        self.info, self.path = info, out
        self.name = self.name or out.resolve().name
        return out

    @classmethod
    def open(cls, path: str | os.PathLike, name: str | None = None) -> Run:
        """Read a run folder, of this format or an older one.

        Raises :class:`RunFolderError` naming the folder: not a folder, no ``run.json`` (not a
        run, or a write that did not finish), unreadable ``run.json``, a missing table, or
        predictions of neither task.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise RunFolderError(f"{folder}: not a folder (expected a probes run folder)")
        meta = folder / "run.json"
        if not meta.is_file():
            raise RunFolderError(
                f"{folder}: no run.json here; is it the output folder of a probes run, and did "
                "the run finish?"
            )
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"{meta}: unreadable run.json ({exc})") from exc
        version = int(info.get("format", 1))
        if version > RUN_FORMAT:
            raise RunFolderError(
                f"{folder}: run format {version} is newer than this probes (reads up to "
                f"{RUN_FORMAT}); upgrade probes to read it"
            )
        predictions = read_table(_predictions_file(folder))
        results_file = folder / "results.csv"
        if not results_file.is_file():
            raise RunFolderError(f"{folder}: no results.csv")
        results = read_table(results_file)
        _task_from_columns(folder, predictions)  # checks the identity columns
        summary_file = folder / "summary.csv"
        summary = read_table(summary_file) if summary_file.is_file() else pd.DataFrame()
        folds_file = folder / "folds.csv"
        folds = read_table(folds_file) if folds_file.is_file() else None
        spec = None
        if "spec" in info:
            try:
                spec = RunSpec.from_dict(info["spec"])
            except (KeyError, TypeError, ValueError) as exc:
                raise RunFolderError(f"{meta}: unreadable run spec ({exc!r})") from exc
        extras = {}
        for extra in info.get("extras", []):
            file = folder / extra
            if file.is_file():
                extras[extra] = (
                    read_table(file)
                    if file.suffix in TABLE_SUFFIXES
                    else json.loads(file.read_text())
                )
        return cls(
            spec=spec,
            predictions=predictions,
            results=results,
            summary=summary,
            folds=folds,
            info=info,
            extras=extras,
            path=folder,
            name=name or folder.resolve().name,
        )

    @classmethod
    def merge(cls, runs: Sequence[Run], **info: Any) -> Run:
        """One run from runs of single rounds of the same definition (a study's units): tables
        concatenated in round order, the summary recomputed, folds joined, and the per-round
        table extras (those with a ``round`` column in every run: patch maps, grounding)
        concatenated too; ``info`` (name, study coordinates...) is added to ``run.json``. Raises ``ValueError`` when the runs
        disagree on the fold assignment."""
        if not runs:
            raise ValueError("no runs to merge")
        predictions = pd.concat([r.predictions for r in runs], ignore_index=True)
        predictions = predictions.sort_values("round", kind="stable").reset_index(drop=True)
        results = pd.concat([r.results for r in runs], ignore_index=True)
        results = results.sort_values("round", kind="stable").reset_index(drop=True)
        first = runs[0]
        spec = first.spec
        if spec is not None:
            rounds = tuple(sorted(int(r) for r in results["round"].unique()))
            spec = dataclasses.replace(spec, split=dataclasses.replace(spec.split, rounds=rounds))
        merged_info = dict(first.info)
        merged_info["split"] = {**first.info.get("split", {}), "rounds": len(runs)}
        merged_info.update(
            rounds=[int(r) for r in sorted(results["round"].unique())],
            units=[
                {"folder": str(r.path) if r.path else None, "command": r.info.get("command")}
                for r in runs
            ],
            **info,
        )
        merged = cls(
            spec=spec,
            predictions=predictions,
            results=results,
            summary=pd.DataFrame(),
            folds=_merged_folds(runs),
            info=merged_info,
            extras=_merged_extras(runs),
            name=str(info.get("name", "")),
        )
        merged.summary = run_summary(merged.task, predictions, results)
        return merged


def run_summary(task: TaskKind, predictions: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The summary over rounds: per label (classification) or per metric (segmentation)."""
    if task == SEGMENTATION:
        from probes.core.metrics import segmentation_summary

        return segmentation_summary(predictions)
    return summary_table(results)


def _merged_extras(runs: Sequence[Run]) -> dict[str, Any]:
    """Table extras that every run has with a ``round`` column, concatenated in round order
    (others describe one run as a whole and are left out, as before)."""
    merged = {}
    for name in runs[0].extras:
        tables = [r.extras.get(name) for r in runs]
        if all(isinstance(t, pd.DataFrame) and "round" in t.columns for t in tables):
            table = pd.concat(tables, ignore_index=True)
            merged[name] = table.sort_values("round", kind="stable").reset_index(drop=True)
    return merged


def _merged_folds(runs: Sequence[Run]) -> pd.DataFrame | None:
    """One folds table: image/patient/fold once, and each run's ``round_k`` columns."""
    tables = [r.folds for r in runs]
    if any(t is None for t in tables):
        return None
    merged = tables[0][["image_id", "patient_id", "fold"]].copy()
    for run, table in zip(runs, tables, strict=True):
        if not table["image_id"].equals(merged["image_id"]) or not table["fold"].equals(
            merged["fold"]
        ):
            raise ValueError(
                f"runs to merge disagree on the fold assignment: {runs[0].path} vs {run.path}"
            )
        for column in table.columns:
            if column.startswith("round_"):
                merged[column] = table[column].fillna("")
    return merged


def _task_from_columns(folder: Path | None, predictions: pd.DataFrame) -> TaskKind:
    """The task of a folder written before ``run.json`` named it: ``dice`` means segmentation,
    ``label``/``truth``/``score`` classification."""
    columns = set(predictions.columns)
    missing = {"image_id", "patient_id", "round", "split"} - columns
    if missing:
        raise RunFolderError(f"{folder}: predictions lack column(s) {sorted(missing)}")
    if "dice" in columns:
        return SEGMENTATION
    if {"label", "truth", "score"} <= columns:
        return CLASSIFICATION
    raise RunFolderError(
        f"{folder}: predictions have neither dice (segmentation) nor label/truth/score "
        f"(classification) columns: {sorted(columns)}"
    )


def _predictions_file(folder: Path) -> Path:
    """``predictions.parquet`` or ``.csv``; with both (an older folder reused with another
    format), the newer."""
    found = [folder / f"predictions.{ext}" for ext in ("parquet", "csv")]
    found = [f for f in found if f.is_file()]
    if not found:
        raise RunFolderError(f"{folder}: no predictions.parquet or predictions.csv")
    return max(found, key=lambda f: f.stat().st_mtime_ns)


def _atomic_table(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    write_table(table, tmp)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _dump_json(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2, sort_keys=True, default=str) + "\n"
