"""Join the rounds of one run (its units) into one run folder, as if run in one command.

The merged folder has the layout every ``probes`` command writes (predictions, results,
summary, folds, run.json), so ``probes report`` reads it like any other run. It is written to a
``.partial`` folder and renamed into place, so a reader never sees half a run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from probes.results import read_table, summary_table, write_table
from probes.seg_metrics import summarize_folds

__all__ = ["merge_run", "run_summary"]


def run_summary(predictions: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The summary a command writes: per label over rounds (classification), or Dice/IoU per
    fold summarised (segmentation: predictions with a ``dice`` column)."""
    if "dice" in predictions.columns:
        test = predictions[predictions["split"] == "test"]
        return pd.concat(
            [summarize_folds(test, m, fold="round").assign(metric=m) for m in ("dice", "iou")]
        )
    return summary_table(results)


def merge_run(unit_folders: Sequence[Path], out: Path, *, name: str, extra: dict) -> Path:
    """Merge complete unit folders (one round each) into run folder ``out``; returns it.

    ``name`` and ``extra`` (study, task, encoder, protocol, seed) go into ``run.json``.
    """
    runs = [json.loads((f / "run.json").read_text()) for f in unit_folders]
    predictions = pd.concat([_predictions(f) for f in unit_folders], ignore_index=True)
    predictions = predictions.sort_values("round", kind="stable").reset_index(drop=True)
    results = pd.concat(
        [read_table(f / "results.csv") for f in unit_folders], ignore_index=True
    ).sort_values("round", kind="stable")
    folds = _merged_folds(unit_folders)

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_table(predictions, partial / "predictions.parquet")
    write_table(results, partial / "results.csv")
    write_table(run_summary(predictions, results), partial / "summary.csv")
    write_table(folds, partial / "folds.csv")
    run = dict(runs[0])
    run["split"] = {**run.get("split", {}), "rounds": len(runs)}
    run.update(
        name=name,
        rounds=[int(r) for r in sorted(results["round"].unique())],
        units=[
            {"folder": str(f), "command": r.get("command")}
            for f, r in zip(unit_folders, runs, strict=True)
        ],
        **extra,
    )
    (partial / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True, default=str) + "\n")
    if out.exists():  # an older merge of the same units (e.g. after adding a seed)
        shutil.rmtree(out)
    os.replace(partial, out)
    return out


def _predictions(folder: Path) -> pd.DataFrame:
    for name in ("predictions.parquet", "predictions.csv"):
        if (folder / name).exists():
            return read_table(folder / name)
    raise FileNotFoundError(f"{folder}: no predictions table")


def _merged_folds(unit_folders: Sequence[Path]) -> pd.DataFrame:
    """One folds table: image/patient/fold once, and each unit's ``round_k`` column."""
    tables = [read_table(f / "folds.csv") for f in unit_folders]
    merged = tables[0][["image_id", "patient_id", "fold"]].copy()
    for table in tables:
        if not table["image_id"].equals(merged["image_id"]) or not table["fold"].equals(
            merged["fold"]
        ):
            raise ValueError(
                f"units of one run disagree on the fold assignment: {unit_folders[0]} vs others"
            )
        for column in table.columns:
            if column.startswith("round_"):
                merged[column] = table[column].fillna("")
    return merged
