"""What a run is: its inputs, split, task, probe and options, as frozen dataclasses that
``run.json`` records (``RunSpec.to_dict`` / ``from_dict``) and a run function is called with.

::

    spec = RunSpec("linear", Inputs.make("cohort.zarr", "manifest.csv"), SplitSpec(),
                   TaskSpec(CLASSIFICATION, labels=("pneumothorax",)))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from probes.core.splits import REFERENCE_SEED

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "Inputs",
    "RunSpec",
    "SplitSpec",
    "TaskKind",
    "TaskSpec",
    "jsonable",
]

TaskKind = Literal["classification", "segmentation"]
CLASSIFICATION: TaskKind = "classification"
SEGMENTATION: TaskKind = "segmentation"


@dataclass(frozen=True)
class Inputs:
    """Where the features come from.

    Attributes:
        store: store path or URL. manifest: manifest CSV/TSV/Parquet.
        encoder: group key, key prefix or preset name (``None``: the store's only group).
        feature: array read (``global``, ``grid16``, ``grid32``; a segmentation probe's grid).
        root: folder for the manifest's relative paths.
        allow_subset: the store may hold images the manifest does not list.
        allow_partial: read a group still being extracted (its done rows only).
    """

    store: str
    manifest: str
    encoder: str | None = None
    feature: str = "global"
    root: str | None = None
    allow_subset: bool = False
    allow_partial: bool = False

    @classmethod
    def make(
        cls,
        store: str | os.PathLike,
        manifest: str | os.PathLike,
        encoder: str | None = None,
        feature: str = "global",
        root: str | os.PathLike | None = None,
        allow_subset: bool = False,
        allow_partial: bool = False,
    ) -> Inputs:
        """Inputs from a run function's keywords (paths as text, for run.json)."""
        return cls(
            str(store),
            str(manifest),
            encoder,
            feature,
            None if root is None else str(root),
            allow_subset,
            allow_partial,
        )


@dataclass(frozen=True)
class SplitSpec:
    """The cross-validation: ``folds`` is ``patient`` (stratified, grouped by patient id),
    ``reference`` (the study's seeded rotation) or a manifest column; ``rounds`` runs a subset
    (0-based); ``allow_leakage`` warns instead of failing on a patient in two roles.

    ``budgets`` (ascending; ``None``: the whole training fold) cut every round's training rows
    to fractions (``budget_unit`` ``fraction``) or images per class (``count``), drawn
    ``budget_draws`` times by patient, stratified and nested (:mod:`probes.core.budgets`).
    """

    folds: str = "patient"
    n_folds: int = 5
    seed: int = REFERENCE_SEED
    rounds: tuple[int, ...] | None = None
    allow_leakage: bool = False
    budgets: tuple[float, ...] | None = None
    budget_unit: str = "fraction"
    budget_draws: int = 1

    @classmethod
    def make(
        cls,
        folds: str = "patient",
        n_folds: int = 5,
        seed: int = REFERENCE_SEED,
        rounds=None,
        allow_leakage: bool = False,
        budgets=None,
        budget_draws: int = 1,
        budget_unit: str | None = None,
    ) -> SplitSpec:
        """A SplitSpec from a run function's keywords: ``rounds`` any sequence, ``budgets``
        text (``"0.1,1.0"``, ``"4,16"``) or numbers (:func:`probes.core.budgets.parse_budgets`)."""
        from probes.core.budgets import parse_budgets

        values, unit = parse_budgets(budgets, budget_unit)
        if budget_draws < 1:
            raise ValueError(f"budget_draws must be at least 1, got {budget_draws}")
        return cls(
            folds,
            n_folds,
            seed,
            None if not rounds else tuple(int(r) for r in rounds),
            allow_leakage,
            values,
            unit,
            int(budget_draws),
        )


@dataclass(frozen=True)
class TaskSpec:
    """What is predicted: binary ``labels`` (classification) or a ``mask`` column."""

    kind: TaskKind
    labels: tuple[str, ...] = ()
    mask: str | None = None

    def __post_init__(self) -> None:
        if self.kind == CLASSIFICATION and not self.labels:
            raise ValueError("a classification task needs at least one label column")
        if self.kind == SEGMENTATION and not self.mask:
            raise ValueError("a segmentation task needs a mask column")


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run: ``protocol`` (``linear``, ``seg``, ``shortcut``,
    ``finetune``), its inputs, split and task, the probe's name and parameters, the protocol's
    own options, and the bootstrap resamples of its CIs."""

    protocol: str
    inputs: Inputs
    split: SplitSpec
    task: TaskSpec
    probe: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    n_boot: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        split = dict(data.get("split") or {})
        for key in ("rounds", "budgets"):
            if split.get(key) is not None:
                split[key] = tuple(split[key])
        task = dict(data["task"])
        task["labels"] = tuple(task.get("labels") or ())
        return cls(
            protocol=data["protocol"],
            inputs=Inputs(**data["inputs"]),
            split=SplitSpec(**split),
            task=TaskSpec(**task),
            probe=data.get("probe", ""),
            params=dict(data.get("params") or {}),
            options=dict(data.get("options") or {}),
            n_boot=int(data.get("n_boot", 1000)),
        )


def jsonable(value: Any) -> Any:
    """Tuples -> lists and NaN -> None, so ``run.json`` is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
