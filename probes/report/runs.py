"""Run folders as the report reads them: ``run.json`` plus the tables a ``probes`` command wrote.

A run folder (``probes linear``, ``probes seg``, ``probes finetune``, ... ``--out``) holds
``run.json``, ``predictions.parquet`` or ``predictions.csv``, ``results.csv`` and usually
``summary.csv`` and ``folds.csv``. The task is read from the predictions' columns: ``dice`` means
segmentation, ``truth`` and ``score`` classification.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from probes.results import read_table

__all__ = ["Run", "RunFolderError", "Task", "load_run", "load_runs"]

Task = Literal["classification", "segmentation"]
CLASSIFICATION: Task = "classification"
SEGMENTATION: Task = "segmentation"


class RunFolderError(ValueError):
    """A folder that is not a readable run folder; the message names the folder."""


@dataclass(frozen=True, eq=False)
class Run:
    """One run folder, loaded.

    Attributes:
        name: the run's name in the report (its folder name, made unique).
        path: the folder.
        info: ``run.json`` as a dict.
        task: ``classification`` or ``segmentation``.
        predictions: one row per scored image (x label) and round, ``split`` in val/test.
        results: one row per round (x label), the command's own fold metrics.
        folds: ``folds.csv`` when present (image_id, patient_id, fold per round).
    """

    name: str
    path: Path
    info: dict[str, Any]
    task: Task
    predictions: pd.DataFrame
    results: pd.DataFrame
    folds: pd.DataFrame | None = field(default=None, repr=False)

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
        """Whether predicted masks were saved (``probes seg --save-masks``)."""
        return self.task == SEGMENTATION and "pred_rle" in self.predictions.columns


def load_run(folder: str | os.PathLike, name: str | None = None) -> Run:
    """Read one run folder. Raises :class:`RunFolderError` naming the folder for a missing
    ``run.json`` or table, or predictions of neither task."""
    path = Path(folder)
    if not path.is_dir():
        raise RunFolderError(f"{path}: not a folder (expected a probes run folder)")
    meta = path / "run.json"
    if not meta.is_file():
        raise RunFolderError(f"{path}: no run.json here; is it the --out folder of a probes run?")
    try:
        info = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{meta}: unreadable run.json ({exc})") from exc
    predictions = read_table(_predictions_file(path))
    results_file = path / "results.csv"
    if not results_file.is_file():
        raise RunFolderError(f"{path}: no results.csv")
    results = read_table(results_file)
    folds_file = path / "folds.csv"
    folds = read_table(folds_file) if folds_file.is_file() else None
    return Run(
        name=name or path.resolve().name,
        path=path,
        info=info,
        task=_task(path, predictions),
        predictions=predictions,
        results=results,
        folds=folds,
    )


def load_runs(folders: Sequence[str | os.PathLike]) -> list[Run]:
    """Read run folders, named by folder name; clashing names take parent folders until
    unique (``a/out``, ``b/out``). The same folder twice is an error."""
    paths = [Path(f).resolve() for f in folders]
    if not paths:
        raise RunFolderError("no run folders given")
    seen: set[Path] = set()
    for given, path in zip(folders, paths, strict=True):
        if path in seen:
            raise RunFolderError(f"{given}: the same run folder is given twice")
        seen.add(path)
    return [load_run(f, n) for f, n in zip(folders, _unique_names(paths), strict=True)]


def _unique_names(paths: list[Path]) -> list[str]:
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return names
        depth += 1


def _predictions_file(folder: Path) -> Path:
    """``predictions.parquet`` or ``.csv``; with both, the newer (a folder reused with another
    ``--format`` keeps the older file)."""
    found = [folder / f"predictions.{ext}" for ext in ("parquet", "csv")]
    found = [f for f in found if f.is_file()]
    if not found:
        raise RunFolderError(f"{folder}: no predictions.parquet or predictions.csv")
    return max(found, key=lambda f: f.stat().st_mtime_ns)


def _task(folder: Path, predictions: pd.DataFrame) -> Task:
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
