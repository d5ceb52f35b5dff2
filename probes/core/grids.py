"""Patch grids read by row index, and a background read-ahead of minibatches.

A :class:`GridSource` serves rows of one or more patch grids (``grid16``, ``grid32``) as
``(b, h, w, C)`` arrays in their storage dtype: :class:`StoreGrids` streams them from a store
group (one ``read_rows`` call per grid and batch), :class:`ArrayGrids` from arrays in memory.
:class:`_Stream` prepares the next minibatches in a background thread while the current one
trains, so memory holds a fixed number of batches whatever the number of rows.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["GRID_CHOICES", "ArrayGrids", "GridSource", "StoreGrids", "as_grids", "grid_names"]

GRID_CHOICES = {
    "grid16": ("grid16",),
    "grid32": ("grid32",),
    "grid16+grid32": ("grid16", "grid32"),
}


def grid_names(grid: str) -> tuple[str, ...]:
    """Store arrays for a grid choice: ``16``/``grid16``, ``32``, ``16+32``/``grid16+grid32``."""
    spelled = "+".join(p if p.startswith("grid") else f"grid{p}" for p in str(grid).split("+"))
    if spelled not in GRID_CHOICES:
        raise ValueError(f"grid must be one of {sorted(GRID_CHOICES)} (or 16, 32, 16+32)")
    return GRID_CHOICES[spelled]


class GridSource:
    """Rows of one or more patch grids, read by index: ``read(index) -> [(b, h, w, C), ...]``."""

    names: tuple[str, ...]
    shapes: list[tuple[int, int, int]]

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def read_views(self, index: np.ndarray) -> list[list[np.ndarray]]:
        """Per grid, the rows as a list of ``(h, w, C)`` arrays: views without a copy where
        the source allows (memory-mapped store shards, in-memory arrays)."""
        return [list(a) for a in self.read(index)]

    def subset(self, index: Any) -> GridSource:
        raise NotImplementedError


class StoreGrids(GridSource):
    """Grids of a store group, streamed: one ``group.read_rows`` call per grid and batch.

    Args:
        group: a :class:`~embedcache.store.api.StoreGroup`.
        rows: store rows served, in order (e.g. ``FeatureSet.rows`` or a fold's part of it).
        names: grid arrays, e.g. ``("grid16", "grid32")``.
    """

    def __init__(self, group: Any, rows: Sequence[int] | np.ndarray, names: Sequence[str]):
        self.group, self.names = group, tuple(names)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shapes = [tuple(group.array(n).shape[1:]) for n in self.names]

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: np.ndarray) -> list[np.ndarray]:
        rows = self.rows[index]
        return [self.group.read_rows(name, rows) for name in self.names]

    def read_views(self, index: np.ndarray) -> list[list[np.ndarray]]:
        rows = self.rows[index]
        return [self.group.row_views(name, rows) for name in self.names]

    def subset(self, index: Any) -> StoreGrids:
        return StoreGrids(self.group, self.rows[np.asarray(index, dtype=np.int64)], self.names)


class ArrayGrids(GridSource):
    """In-memory grids (or anything indexable by an integer array, e.g. a memmap)."""

    def __init__(self, *arrays: np.ndarray, names: Sequence[str] | None = None):
        if not arrays or any(a.ndim != 4 or len(a) != len(arrays[0]) for a in arrays):
            raise ValueError("expected one or more (n, h, w, C) arrays of equal length")
        self.arrays = arrays
        self.names = tuple(names or [f"grid{i}" for i in range(len(arrays))])
        self.shapes = [tuple(a.shape[1:]) for a in arrays]

    def __len__(self) -> int:
        return len(self.arrays[0])

    def read(self, index: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(a[index]) for a in self.arrays]

    def read_views(self, index: np.ndarray) -> list[list[np.ndarray]]:
        return [[a[int(i)] for i in index] for a in self.arrays]

    def subset(self, index: Any) -> ArrayGrids:
        index = np.asarray(index, dtype=np.int64)
        return ArrayGrids(*(a[index] for a in self.arrays), names=self.names)


def as_grids(X: Any, names: Sequence[str]) -> GridSource:
    """A :class:`GridSource` for X: a GridSource, a FeatureSet (streamed from its store group),
    an ``(n, h, w, C)`` array, or a tuple of arrays (one per grid in ``names``)."""
    if isinstance(X, GridSource):
        source = X
    elif hasattr(X, "group") and hasattr(X, "rows"):  # FeatureSet
        return StoreGrids(X.group, X.rows, names)
    elif isinstance(X, (tuple, list)):
        source = ArrayGrids(*X, names=names)
    else:
        source = ArrayGrids(np.asarray(X), names=names)
    if len(source.shapes) != len(names):
        raise ValueError(f"grid choice {'+'.join(names)} needs {len(names)} grid array(s)")
    return source


class _Stream:
    """Batches ``load(index)`` for each index array, read ahead by a background thread."""

    _END = object()

    def __init__(self, batches: list[np.ndarray], load: Callable, prefetch: int):
        self.batches, self.load, self.depth = batches, load, prefetch

    def __iter__(self) -> Iterator[Any]:
        if self.depth <= 0:
            for index in self.batches:
                yield self.load(index)
            return
        slots: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    slots.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                for index in self.batches:
                    if stop.is_set():
                        return
                    put(self.load(index))
            except BaseException as error:  # handed to the consumer, raised there
                put(_Failure(error))
            finally:
                put(self._END)

        thread = threading.Thread(target=work, name="probe-prefetch", daemon=True)
        thread.start()
        try:
            while (item := slots.get()) is not self._END:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            thread.join()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error
