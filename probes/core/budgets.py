"""Label budgets: each round's training rows cut to a fraction (``0.01,0.1,1.0``) or a count
per class (``1,4,16``), drawn by patient, stratified, nested, with validation and test untouched.

One function, :func:`over_budgets`, applies a :class:`~probes.core.run.SplitSpec`'s budgets
to any protocol: it calls the protocol's ``predict(split)`` once per (budget, draw) with the
training rows of every round cut down, and tags the rows it returns with ``budget``, ``draw``
and ``n_train``::

    predictions = over_budgets(lambda s: cross_predict(probe, X, Y, s, ...),
                               split, strata=Y, patient_ids=fs.patient_ids, spec=spec.split)

How a draw is made (:func:`nested_draw`): the round's training patients are grouped by stratum
(their label, or label combination; a patient with a positive image counts as positive) and
shuffled within each stratum by a generator seeded with ``(seed, round, draw)``; a budget takes
a prefix of every stratum's order. So a smaller budget's patients lie inside every larger
budget's (nested), every stratum keeps at least one patient, the draw is the same for every
encoder (paired comparisons at each budget), and a patient is never split.

- fraction ``f``: ``max(1, round(f x patients))`` patients of each stratum;
- count ``k``: patients of each stratum until it holds at least ``k`` training images (``k``
  images per class when each patient has one image); all of them when it has fewer.

A budget that keeps every training row of every round (``1.0``) is fitted once, as draw 0:
its draws would be identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from probes.core.splits import Round, Split

__all__ = [
    "BUDGET_COLUMNS",
    "BUDGET_UNITS",
    "budget_label",
    "budget_options",
    "budget_splits",
    "largest_budget",
    "nested_draw",
    "over_budgets",
    "parse_budgets",
]

#: Columns a budgeted run adds to its predictions (after ``split``) and results.
BUDGET_COLUMNS = ("budget", "draw", "n_train")
BUDGET_UNITS = ("fraction", "count")


def parse_budgets(
    value: str | Sequence[float] | None, unit: str | None = None
) -> tuple[tuple[float, ...] | None, str]:
    """``(budgets, unit)`` from ``"0.01,0.1,1.0"`` (fractions of the training fold) or
    ``"1,4,16"`` (images per class), or a sequence of numbers.

    Without ``unit``: values written with a decimal point (or Python floats) are fractions in
    (0, 1], integers are counts >= 1. Budgets come back sorted ascending, duplicates dropped.
    ``None`` or empty: ``(None, "fraction")``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, unit or "fraction"
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items:
        return None, unit or "fraction"
    texts = [str(v).strip() for v in items]
    try:
        numbers = [float(t) for t in texts]
    except ValueError:
        raise ValueError(
            f"budgets must be numbers such as 0.01,0.1,1.0 (fractions) or 1,4,16 (per class), "
            f"got {value!r}"
        ) from None
    if unit is None:
        fractional = ["." in t or "e" in t.lower() for t in texts]  # str(1.0) is "1.0"
        unit = "fraction" if all(fractional) else "count" if not any(fractional) else ""
        if not unit:
            raise ValueError(
                f"budgets {value!r} mix fractions (with a decimal point) and counts; give all "
                "as fractions (0.1,1.0) or all as counts per class (4,16)"
            )
    if unit not in BUDGET_UNITS:
        raise ValueError(f"budget unit must be one of {BUDGET_UNITS}, got {unit!r}")
    if unit == "fraction" and not all(0 < n <= 1 for n in numbers):
        raise ValueError(f"fraction budgets must lie in (0, 1], got {value!r}")
    if unit == "count" and not all(n >= 1 and n == int(n) for n in numbers):
        raise ValueError(f"count budgets must be whole numbers >= 1, got {value!r}")
    return tuple(sorted(set(numbers))), unit


def budget_label(budget: float, unit: str) -> str:
    """``10%`` / ``0.5%`` for fractions, ``16/class`` for counts."""
    if unit == "count":
        return f"{int(budget)}/class"
    return f"{100 * budget:g}%"


def _patient_strata(
    rows: np.ndarray, strata: np.ndarray, patient_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patients of ``rows`` (sorted ids), each one's stratum code (its label combination, a
    column counting positive if any of its images is) and image count."""
    labels = strata.reshape(len(strata), -1)[rows]
    patients, codes = np.unique(patient_ids[rows], return_inverse=True)
    per_patient = np.zeros((len(patients), labels.shape[1]), dtype=labels.dtype)
    np.maximum.at(per_patient, codes.reshape(-1), labels)
    stratum = np.unique(per_patient, axis=0, return_inverse=True)[1].reshape(-1)
    return patients, stratum, np.bincount(codes.reshape(-1), minlength=len(patients))


def nested_draw(
    train: np.ndarray,
    strata: np.ndarray,
    patient_ids: np.ndarray,
    budgets: Sequence[float],
    unit: str,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """The training rows of each budget in one draw, nested: ``out[i]`` is a subset of
    ``out[j]`` for ``budgets[i] <= budgets[j]``.

    Args:
        train: ``(m,)`` the round's training row positions. strata: ``(n,)`` or ``(n, k)``
            labels of every row. patient_ids: ``(n,)``. budgets: fractions or counts (``unit``).
        rng: the draw's generator (one permutation per stratum, in stratum order).

    Returns one sorted ``int64`` array of row positions per budget, in the order given.
    """
    train = np.asarray(train, dtype=np.int64)
    patient_ids = np.asarray(patient_ids).astype(str)
    patients, stratum, images = _patient_strata(train, np.asarray(strata), patient_ids)
    orders = [rng.permutation(np.flatnonzero(stratum == s)) for s in range(stratum.max() + 1)]
    out = []
    for budget in budgets:
        chosen = []
        for order in orders:
            if unit == "fraction":
                take = max(1, int(np.floor(budget * len(order) + 0.5)))
            else:  # patients until the stratum holds `budget` images
                take = int(np.searchsorted(np.cumsum(images[order]), budget) + 1)
            chosen.append(order[: min(take, len(order))])
        keep = patients[np.concatenate(chosen)] if chosen else patients[:0]
        out.append(train[np.isin(patient_ids[train], keep)])
    return out


def budget_splits(
    split: Split,
    strata: np.ndarray,
    patient_ids: np.ndarray,
    budgets: Sequence[float],
    unit: str,
    draws: int,
    seed: int,
) -> Iterator[tuple[float, int, Split]]:
    """``(budget, draw, split)`` for every budget (ascending) and draw: ``split`` with every
    round's training rows cut by :func:`nested_draw` (seed ``(seed, round, draw)``). A budget
    that keeps every training row of every round yields draw 0 only."""
    if draws < 1:
        raise ValueError(f"budget draws must be at least 1, got {draws}")
    budgets = sorted(budgets)
    cut: dict[tuple[int, int], list[np.ndarray]] = {}
    for d in range(draws):
        for r in split:
            rng = np.random.default_rng([int(seed), int(r.index), d])
            cut[(d, r.index)] = nested_draw(r.train, strata, patient_ids, budgets, unit, rng)
    for i, budget in enumerate(budgets):
        full = all(len(cut[(0, r.index)][i]) == len(r.train) for r in split)
        for d in range(1 if full else draws):
            rounds = tuple(
                Round(r.index, cut[(d, r.index)][i], r.val, r.test) for r in split.rounds
            )
            yield budget, d, replace(split, rounds=rounds)


def over_budgets(
    predict: Callable[[Split], pd.DataFrame],
    split: Split,
    *,
    strata: np.ndarray,
    patient_ids: np.ndarray,
    budgets: Sequence[float] | None,
    unit: str = "fraction",
    draws: int = 1,
    seed: int = 0,
    on_budget: Callable[[float, int], None] | None = None,
) -> pd.DataFrame:
    """``predict(split)`` once, or once per (budget, draw) with the training rows cut.

    With budgets, the rows of each call get ``budget``, ``draw`` (inserted after ``split``)
    and ``n_train`` (training images of that round) columns and are concatenated in budget,
    draw order; ``on_budget(budget, draw)`` is called before each call (a protocol that keeps
    more than predictions, such as patch maps, learns which budget it is fitting). Without
    budgets the table is ``predict(split)`` unchanged.
    """
    if not budgets:
        return predict(split)
    frames = []
    for budget, draw, sub in budget_splits(split, strata, patient_ids, budgets, unit, draws, seed):
        if on_budget is not None:
            on_budget(float(budget), int(draw))
        frame = predict(sub)
        n_train = {r.index: len(r.train) for r in sub}
        at = list(frame.columns).index("split") + 1
        frame.insert(at, "budget", float(budget))
        frame.insert(at + 1, "draw", int(draw))
        frame["n_train"] = frame["round"].map(n_train).astype(np.int64)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def largest_budget(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the largest budget's draw 0 (the whole table when it has no budgets): what
    a report shows beside runs without budgets."""
    if "budget" not in table.columns or table.empty:
        return table
    keep = (table["budget"] == table["budget"].max()) & (table["draw"] == 0)
    return table[keep].reset_index(drop=True)


def budget_options(split: object) -> dict:
    """:func:`over_budgets`'s keywords from a :class:`~probes.core.run.SplitSpec` (its
    budgets, unit and draws; the split seed)."""
    return {
        "budgets": getattr(split, "budgets", None),
        "unit": getattr(split, "budget_unit", "fraction"),
        "draws": getattr(split, "budget_draws", 1),
        "seed": getattr(split, "seed", 0),
    }
