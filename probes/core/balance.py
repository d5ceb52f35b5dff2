"""Confounder-balanced training rows: the largest subset of a round's training rows in which a
binary confounder (a chest tube) is independent of the label, so a probe cannot learn the
confounder as a shortcut. Used by :func:`probes.core.results.cross_predict` (``balance=``)
and the shortcut check (:mod:`probes.analysis.shortcuts`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["MAX_DENOMINATOR", "balanced_rows"]

#: Largest denominator r of the common confounder rate p/r that :func:`balanced_rows` searches:
#: the exact maximum whenever the smaller label has at most this many training rows (above, the
#: best rate with such a denominator). Keeps the search to ~35 ms per call.
MAX_DENOMINATOR = 2000


def balanced_rows(
    labels: np.ndarray, confounder: np.ndarray, rows: np.ndarray, *, seed: int = 0
) -> np.ndarray:
    """The largest subset of training ``rows`` in which a binary confounder is independent of a
    binary label.

    Rule: every (label, confounder) cell is downsampled at random (without replacement, seeded)
    so that the kept counts ``k[label, confounder]`` satisfy
    ``k[0, 1] / (k[0, 0] + k[0, 1]) == k[1, 1] / (k[1, 0] + k[1, 1])`` exactly, i.e. P(confounder
    | label) is the same for both labels, every cell keeps at least one row, and the total kept is
    as large as possible. The common rate is a fraction p/r; each label keeps ``m * r`` rows of
    which ``m * p`` have the confounder, so the search over p/r (r up to
    :data:`MAX_DENOMINATOR`, vectorised over p) finds the exact optimum. The result is close to
    keeping one label whole and trimming the other to that label's rate (the continuous optimum
    lies at one of the two labels' own rates). Example: 100 positives (75 with a chest tube) and
    100 negatives (11 with one) -> 99 negatives (11 with a tube) and 27 positives (3 with a tube):
    rate 1/9 in both, 126 rows, where trimming the negatives to the positives' 3/4 keeps 112.

    Args:
        labels, confounder: ``(n,)`` values over all rows of the data (two distinct values each
            among ``rows``; the larger value is "present").
        rows: ``(m,)`` positions of the training rows; only these are resampled.
        seed: seed of the random choice within each cell.

    Returns:
        Sorted ``int64`` positions, a subset of ``rows``.

    Raises:
        ValueError naming the empty (label, confounder) cell(s) when balance is impossible (a
        cell without rows leaves no subset where both labels see both confounder values).
    """
    labels, confounder = np.asarray(labels), np.asarray(confounder)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if labels.shape[0] != confounder.shape[0] or labels.ndim != 1 or confounder.ndim != 1:
        raise ValueError(
            f"labels {labels.shape} and confounder {confounder.shape} must be (n,) of one length"
        )
    y, label_values = _binary(labels[rows], "label")
    c, conf_values = _binary(confounder[rows], "confounder")
    cells = [[rows[(y == a) & (c == b)] for b in (0, 1)] for a in (0, 1)]
    counts = np.array([[len(cell) for cell in pair] for pair in cells])
    named = {
        (a, b): f"label={label_values[a]!r}, confounder={conf_values[b]!r}"
        for a in (0, 1)
        for b in (0, 1)
    }
    empty = [named[a, b] for a in (0, 1) for b in (0, 1) if counts[a, b] == 0]
    if empty:
        sizes = "; ".join(f"{named[a, b]}: {counts[a, b]}" for a in (0, 1) for b in (0, 1))
        raise ValueError(
            f"cannot balance the confounder against the label: no training rows with "
            f"{' or '.join(empty)} (training rows per cell: {sizes})"
        )
    kept = _largest_balanced_counts(counts)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(cells[a][b], size=kept[a, b], replace=False) for a in (0, 1) for b in (0, 1)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _binary(values: np.ndarray, what: str) -> tuple[np.ndarray, list]:
    """0/1 codes (1 = the larger of the two values) and the two values, sorted."""
    if pd.isna(values).any():
        raise ValueError(f"the {what} is missing (NaN/None) in some training rows")
    classes, codes = np.unique(values, return_inverse=True)
    if len(classes) > 2:
        raise ValueError(
            f"the {what} must be binary among the training rows; got {len(classes)} values "
            f"({classes[:5].tolist()})"
        )
    if len(classes) == 1:
        raise ValueError(
            f"cannot balance: the {what} is {classes[0].item()!r} in all {len(values)} training rows, "
            f"so the cells with {what} != {classes[0].item()!r} are empty"
        )
    return codes.reshape(-1), classes.tolist()


def _largest_balanced_counts(counts: np.ndarray) -> np.ndarray:
    """``(2, 2)`` kept counts maximising their sum under ``k <= counts``, ``k >= 1`` and equal
    confounder rates in both label rows (see :func:`balanced_rows`).

    Hand-rolled: this is a small integer programme (no library solves "largest independent
    2x2 sub-table"); the search over rates p/r is exhaustive for r <= MAX_DENOMINATOR.
    """
    without, with_ = counts[:, 0], counts[:, 1]  # (2,) per label
    best_total, best = 0, None
    for r in range(2, min(int(counts.sum(axis=1).min()), MAX_DENOMINATOR) + 1):
        p = np.arange(1, r)  # confounder-present rows per block of r
        blocks = np.minimum(with_[:, None] // p, without[:, None] // (r - p))  # (2, r - 1)
        total = r * blocks.sum(axis=0) * (blocks.min(axis=0) >= 1)
        j = int(np.argmax(total))
        if total[j] > best_total:
            best_total = int(total[j])
            best = np.column_stack([blocks[:, j] * (r - p[j]), blocks[:, j] * p[j]])
    assert best is not None  # r = 2, p = 1 is feasible when every cell holds a row
    return best
