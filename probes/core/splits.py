"""Cross-validation splits: patient-level folds, the reference rotation, a user fold column.

A :class:`Split` holds a fold id per row and, per round, train/validation/test row positions.
Every kind uses the reference study's rotation over K folds: in round k fold k is the test set,
fold (k + 1) mod K the validation set and the others train (60/20/20 for K = 5)::

    split = patient_split(labels, patient_ids)          # stratified, grouped by patient
    check_no_leakage(split, patient_ids)                  # raises LeakageError if not
    for r in split: r.train, r.val, r.test
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

__all__ = [
    "REFERENCE_SEED",
    "LeakageError",
    "Round",
    "Split",
    "check_no_leakage",
    "holdout",
    "column_split",
    "patient_folds",
    "patient_split",
    "reference_folds",
    "reference_rotation",
]

#: Seed of the reference study's shuffle (and of its balanced sampling).
REFERENCE_SEED = 5656
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


class LeakageError(ValueError):
    """A patient's images fall in two of train / validation / test of one round."""


@dataclass(frozen=True)
class Round:
    """One cross-validation round: row positions of each set (sorted ``int64`` arrays)."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sets(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class Split:
    """Fold assignment of ``n`` rows and the rounds built from it.

    Attributes:
        folds: ``(n,)`` fold id per row (``-1``: in no fold, used only for training when a
            split column says so).
        rounds: the rounds, in order.
        kind: ``patient``, ``reference`` or ``column:<name>``. seed: shuffle seed or None.
    """

    folds: np.ndarray
    rounds: tuple[Round, ...]
    kind: str
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.rounds)

    def __iter__(self) -> Iterator[Round]:
        return iter(self.rounds)

    def __getitem__(self, k: int) -> Round:
        return self.rounds[k]

    @classmethod
    def rotation(cls, folds: np.ndarray, kind: str, seed: int | None = None) -> Split:
        """Rounds from fold ids ``0..K-1``: test fold k, validation fold (k+1) mod K."""
        folds = np.asarray(folds, dtype=np.int64)
        n_folds = int(folds.max()) + 1
        if n_folds < 3:
            raise ValueError(f"the rotation needs at least 3 folds, got {n_folds}")
        rounds = []
        for k in range(n_folds):
            test, val = folds == k, folds == (k + 1) % n_folds
            rounds.append(Round(k, _where(~(test | val)), _where(val), _where(test)))
        return cls(folds, tuple(rounds), kind, seed)

    def only(self, indices) -> Split:
        """The same fold assignment with only the rounds numbered ``indices`` (a study runs
        one round per unit of work); an unknown round is a ValueError naming it."""
        wanted = sorted({int(k) for k in indices})
        known = {r.index: r for r in self.rounds}
        missing = [k for k in wanted if k not in known]
        if missing:
            raise ValueError(f"round(s) {missing} not in this split (rounds 0..{len(self) - 1})")
        return Split(self.folds, tuple(known[k] for k in wanted), self.kind, self.seed)

    def assignments(self) -> pd.DataFrame:
        """One row per data row: ``fold`` and, per round k, ``round_k`` in train/val/test."""
        table = {"fold": self.folds}
        for r in self.rounds:
            names = np.full(len(self.folds), "", dtype=object)
            for name, rows in r.sets().items():
                names[rows] = name
            table[f"round_{r.index}"] = names
        return pd.DataFrame(table)


def patient_folds(
    labels: np.ndarray,
    patient_ids: np.ndarray,
    n_splits: int = 5,
    seed: int = REFERENCE_SEED,
) -> np.ndarray:
    """``(n,)`` fold id per row: stratified group k-fold, every patient in one fold.

    Args:
        labels: ``(n,)`` or ``(n, k)``; with several columns the combination is stratified.
        patient_ids: ``(n,)`` group of each row.
        seed: shuffle seed (scikit-learn's ``StratifiedGroupKFold(shuffle=True)``).
    """
    labels = np.asarray(labels)
    patient_ids = np.asarray(patient_ids)
    if len(labels) != len(patient_ids):
        raise ValueError(f"{len(labels)} labels but {len(patient_ids)} patient ids")
    n_patients = len(np.unique(patient_ids))
    if n_patients < n_splits:
        raise ValueError(f"{n_patients} patients cannot fill {n_splits} patient-level folds")
    strata = np.unique(labels.reshape(len(labels), -1), axis=0, return_inverse=True)[1]
    splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    for k, (_, test) in enumerate(
        splitter.split(np.zeros(len(labels)), strata.ravel(), patient_ids)
    ):
        folds[test] = k
    return folds


def patient_split(labels, patient_ids, n_splits: int = 5, seed: int = REFERENCE_SEED) -> Split:
    """:func:`patient_folds` with the reference rotation (validation = next fold)."""
    return Split.rotation(patient_folds(labels, patient_ids, n_splits, seed), "patient", seed)


def reference_folds(n: int, n_splits: int = 5, seed: int = REFERENCE_SEED) -> np.ndarray:
    """``(n,)`` fold id per row, exactly as the reference study's notebook assigned them.

    The notebook shuffled its table with ``df.sample(frac=1, random_state=seed)`` and cut the
    shuffled rows into ``n_splits`` contiguous folds, the first ``n % n_splits`` one row longer.
    pandas draws that shuffle as ``np.random.RandomState(seed).permutation(n)`` (a test checks
    the equivalence against pandas itself), so row ``perm[j]`` of the input lands in the fold
    of position ``j``. Rows must be in the order of the table the study shuffled.
    """
    perm = np.random.RandomState(seed).permutation(n)
    sizes = np.full(n_splits, n // n_splits) + (np.arange(n_splits) < n % n_splits)
    folds = np.empty(n, dtype=np.int64)
    folds[perm] = np.repeat(np.arange(n_splits), sizes)
    return folds


def reference_rotation(n: int, n_splits: int = 5, seed: int = REFERENCE_SEED) -> Split:
    """The reference split of ``n`` rows: :func:`reference_folds` + rotation (60/20/20)."""
    return Split.rotation(reference_folds(n, n_splits, seed), "reference", seed)


def column_split(values, name: str = "fold") -> Split:
    """A split from a user column: fold ids (any labels, sorted) or train/val/test words.

    Fold ids give the rotation over their sorted distinct values. A column of the words
    train/val(id)(ation)/test (any case) gives a single round with exactly those sets.
    """
    values = pd.Series(values)
    if values.isna().any():
        rows = np.flatnonzero(values.isna().to_numpy())
        raise ValueError(f"split column {name!r} is empty in rows {rows[:10].tolist()}")
    words = values.astype(str).str.strip().str.lower()
    if words.isin(list(_SPLIT_WORDS)).all():
        sets = words.map(_SPLIT_WORDS).to_numpy()
        folds = np.select([sets == "test", sets == "val"], [0, 1], -1)
        only = Round(0, _where(sets == "train"), _where(sets == "val"), _where(sets == "test"))
        if not (len(only.train) and len(only.test)):
            raise ValueError(f"split column {name!r} needs train and test rows")
        return Split(folds, (only,), f"column:{name}")
    codes, uniques = pd.factorize(values, sort=True)
    if len(uniques) < 3:
        raise ValueError(
            f"fold column {name!r} has {len(uniques)} distinct value(s); the rotation needs 3+"
        )
    return Split.rotation(codes, f"column:{name}")


def check_no_leakage(split: Split, patient_ids) -> None:
    """Raise :class:`LeakageError` if a patient appears in two sets of any round.

    The message names the round, the two sets and the patients (up to ten).
    """
    patient_ids = np.asarray(patient_ids)
    for r in split:
        sets = {name: set(patient_ids[rows].tolist()) for name, rows in r.sets().items()}
        for i, a in enumerate(SPLIT_NAMES):
            for b in SPLIT_NAMES[i + 1 :]:
                shared = sorted(sets[a] & sets[b])
                if shared:
                    shown = ", ".join(map(repr, shared[:10]))
                    more = f" and {len(shared) - 10} more" if len(shared) > 10 else ""
                    raise LeakageError(
                        f"patient leakage in round {r.index} of the {split.kind} split: "
                        f"{len(shared)} patient(s) in both {a} and {b}: {shown}{more}; "
                        "use patient-level folds (--folds patient)"
                    )


def _where(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask).astype(np.int64)


def holdout(n: int, fraction: float, groups, rng) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row positions, ``fraction`` held out at random (``rng``); whole
    groups (patients) go to validation when ``groups`` is given."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {fraction}")
    if groups is None:
        order = rng.permutation(n)
        n_val = max(1, int(round(fraction * n)))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} rows")
    unique = rng.permutation(np.unique(groups))
    n_val = max(1, int(round(fraction * len(unique))))
    is_val = np.isin(groups, unique[:n_val])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
