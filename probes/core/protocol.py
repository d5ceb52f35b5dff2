"""What every protocol's run function does around its own fitting: open the features a spec
names, make its split (leakage checked), and record provenance and the fold table.

::

    fs = open_features(spec.inputs)
    split = make_split(fs, spec.split, strata=Y)          # LeakageError on a shared patient
    ...                                                   # the protocol: predictions, results
    Run(spec, predictions, results, summary, folds=folds_table(fs, split),
        info=provenance(spec, fs, split, probe=probe, ...))
"""

from __future__ import annotations

import warnings
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probes.core.features import FeatureError, FeatureSet
from probes.core.run import Inputs, RunSpec, SplitSpec
from probes.core.splits import (
    LeakageError,
    Split,
    check_no_leakage,
    column_split,
    patient_split,
    reference_rotation,
)

__all__ = ["COMMAND_LINE", "folds_table", "make_split", "open_features", "provenance"]

#: The command line a run was started from (set by the ``probes`` command; ``None`` when a
#: function is called from Python), recorded in ``run.json``.
COMMAND_LINE: ContextVar[list[str] | None] = ContextVar("command_line", default=None)


def open_features(inputs: Inputs, feature: str | None = None) -> FeatureSet:
    """The :class:`FeatureSet` that ``inputs`` names, reading array ``feature`` (default
    ``inputs.feature``)."""
    return FeatureSet.open(
        inputs.store,
        inputs.manifest,
        inputs.encoder,
        feature or inputs.feature,
        root=inputs.root,
        allow_subset=inputs.allow_subset,
    )


def make_split(fs: FeatureSet, spec: SplitSpec, strata: np.ndarray) -> Split:
    """The split ``spec`` names over ``fs``'s rows, checked for patient leakage.

    ``patient``: ``n_folds`` folds grouped by patient id, stratified on ``strata`` (``(n,)`` or
    ``(n, k)`` labels); ``reference``: the study's seeded rotation; else a manifest column of
    fold ids or train/val/test. Leakage raises :class:`~probes.core.splits.LeakageError`
    naming the patient, or only warns with ``allow_leakage``.
    """
    if spec.folds == "patient":
        split = patient_split(strata, fs.patient_ids, spec.n_folds, spec.seed)
    elif spec.folds == "reference":
        split = reference_rotation(len(fs), spec.n_folds, spec.seed)
    elif spec.folds in fs.table.columns:
        split = column_split(fs.table[spec.folds], spec.folds)
    else:
        raise FeatureError(
            f"folds {spec.folds!r} is neither 'patient', 'reference' nor a manifest column; "
            f"columns: {', '.join(map(repr, fs.table.columns))}"
        )
    if spec.rounds:
        split = split.only(list(spec.rounds))
    try:
        check_no_leakage(split, fs.patient_ids)
    except LeakageError as exc:
        if not spec.allow_leakage:
            raise
        warnings.warn(str(exc), stacklevel=2)
    return split


def folds_table(fs: FeatureSet, split: Split) -> pd.DataFrame:
    """``folds.csv``: image_id, patient_id, fold and each round's role of every row."""
    folds = split.assignments()
    folds.insert(0, "patient_id", fs.patient_ids)
    folds.insert(0, "image_id", fs.ids)
    return folds


def provenance(spec: RunSpec, fs: FeatureSet, split: Split, **fields: Any) -> dict[str, Any]:
    """``run.json``'s record of where the numbers came from: store, encoder key, manifest and
    its digest, rows and exclusions, split, library versions, git commit, the command line
    (when run from one), plus the protocol's ``fields`` (probe, params, backend...)."""
    from embedcache.provenance import git_commit, library_versions

    return {
        "store": _resolved(spec.inputs.store),
        "encoder": fs.key,
        "manifest": str(fs.manifest.source),
        "manifest_digest": fs.manifest.digest(),
        "rows": len(fs),
        "excluded": fs.excluded_reasons,
        "split": {"kind": split.kind, "seed": split.seed, "rounds": len(split)},
        "seed": spec.split.seed,
        "command": COMMAND_LINE.get(),
        "versions": library_versions(),
        "git_commit": git_commit(),
        **fields,
    }


def _resolved(store: str) -> str:
    return store if "://" in store else str(Path(store).resolve())
