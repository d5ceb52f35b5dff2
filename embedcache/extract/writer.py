"""Background writer: overlaps store I/O with the forward pass.

Rows arrive in batches; they are gathered per shard in the store's dtype and written when the
shard's pending rows are all present (zarr shards are written whole, which is 2x faster than
partial writes). ``done`` is set only after a shard's features are written, so a crash at any
point leaves the store consistent: done rows are complete, the rest are redone on resume. A
write the store's location refuses (full disk, read-only, vanished mount) stops the run with a
:class:`~embedcache.store.faults.StoreWriteError` naming the store and the cause.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from embedcache.store.api import StoreGroup
from embedcache.store.faults import store_writes
from embedcache.store.layout import check_fits

_STOP = object()


class ShardWriter:
    """Collects extracted rows per shard and writes whole shards on a background thread.

    Args:
        group: the store group being filled.
        pending: sorted rows this run will produce (extracted or skipped).
        max_queued: batches waiting for the writer before ``put`` blocks (bounds memory).
        defer_reasons: keep the reasons of skipped rows in :attr:`skip_reasons` instead of
            writing them into the group attributes (a distributed rank: the attributes have one
            writer, rank 0, which records every rank's reasons at the end). The ``skipped`` and
            ``done`` flags are written either way.
    """

    def __init__(
        self,
        group: StoreGroup,
        pending: np.ndarray,
        max_queued: int = 8,
        *,
        defer_reasons: bool = False,
    ):
        self.group = group
        self.layout = group.layout
        self.rows_per_shard = self.layout.rows_per_shard
        self._pending = len(pending)
        shards, counts = np.unique(pending // self.rows_per_shard, return_counts=True)
        self._expected = dict(zip(shards.tolist(), counts.tolist(), strict=True))
        self._buffers: dict[int, dict[str, Any]] = {}
        self._queue: queue.Queue = queue.Queue(max_queued)
        self._error: BaseException | None = None
        self.rows_written = 0
        self.rows_skipped = 0
        self._defer_reasons = defer_reasons
        #: ``{image_id: reason}`` of rows skipped by this writer when ``defer_reasons``
        self.skip_reasons: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="embedcache-writer", daemon=True)
        self._thread.start()

    # -- main thread --

    def put(self, rows: list[int], features: dict[str, np.ndarray]) -> None:
        """Queue extracted rows. ``features`` float32 ``{"global": (b, D), "grid16": ...}``."""
        self._raise_if_failed()
        self._queue.put(("rows", rows, features))

    def skip(self, failed: list[tuple[int, str]], image_ids: np.ndarray) -> None:
        """Queue unreadable rows to be recorded as skipped with their reasons."""
        self._raise_if_failed()
        self._queue.put(("skip", failed, image_ids))

    def close(self) -> None:
        """Write everything queued and stop the thread; re-raise a writer error.

        Shards left incomplete (the run stopped early) are not written: they are redone whole on
        resume so the resumed store is identical to an uninterrupted one.
        """
        self._queue.put(_STOP)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer thread --

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drain after a failure; the main thread re-raises
            try:
                with store_writes(self.group.store_path, self._progress):
                    if item[0] == "rows":
                        self._add_rows(item[1], item[2])
                    else:
                        self._add_skips(item[1], item[2])
            except BaseException as err:  # re-raised in the main thread
                self._error = err

    def _progress(self) -> str:
        """What is kept, for the message of a failed write."""
        if self.group.records_counts:
            counts = self.group.counts()
            return f"{counts.done} of {counts.rows} rows done"
        done = self.rows_written + self.rows_skipped
        return f"this rank finished {done} of its {self._pending} rows"

    def _buffer(self, shard: int) -> dict[str, Any]:
        if shard not in self._buffers:
            start = shard * self.rows_per_shard
            length = min(self.rows_per_shard, self.layout.n_rows - start)
            shapes = self.layout.feature_shapes()
            self._buffers[shard] = {
                "features": {
                    name: np.zeros((length, *shapes[name][1:]), self.layout.dtype)
                    for name in self.layout.feature_names()
                },
                "written": [],
                "skipped": [],
                "reasons": {},
            }
        return self._buffers[shard]

    def _add_rows(self, rows: list[int], features: dict[str, np.ndarray]) -> None:
        for name in self.layout.feature_names():
            check_fits(features[name], self.layout.dtype, f"{self.group.key}/{name}, rows {rows}")
        rows_arr = np.asarray(rows)
        for shard in np.unique(rows_arr // self.rows_per_shard).tolist():
            buf = self._buffer(shard)
            sel = np.flatnonzero(rows_arr // self.rows_per_shard == shard)
            local = rows_arr[sel] - shard * self.rows_per_shard
            for name in self.layout.feature_names():
                buf["features"][name][local] = features[name][sel]
            buf["written"].extend(rows_arr[sel].tolist())
            self._maybe_flush(shard)

    def _add_skips(self, failed: list[tuple[int, str]], image_ids: np.ndarray) -> None:
        for row, reason in failed:
            shard = row // self.rows_per_shard
            buf = self._buffer(shard)
            buf["skipped"].append(row)
            buf["reasons"][str(image_ids[row])] = reason
            self._maybe_flush(shard)

    def _maybe_flush(self, shard: int) -> None:
        buf = self._buffers[shard]
        if len(buf["written"]) + len(buf["skipped"]) < self._expected.get(shard, 0):
            return
        start = shard * self.rows_per_shard
        written = np.sort(np.asarray(buf["written"], dtype=np.int64))
        if len(written):
            # Write runs of consecutive rows: normally the whole shard in one call; after a
            # partial earlier run, only the rows that were pending.
            runs = np.split(written, np.flatnonzero(np.diff(written) != 1) + 1)
            for run in runs:
                lo, hi = int(run[0]) - start, int(run[-1]) + 1 - start
                self.group.write_rows(
                    int(run[0]), {n: a[lo:hi] for n, a in buf["features"].items()}
                )
        reasons = buf["reasons"]
        if self._defer_reasons:
            self.skip_reasons.update(reasons)
            reasons = {}
        self.group.mark_skipped(np.asarray(buf["skipped"], dtype=np.int64), reasons)
        self.group.mark_done(written)
        self.rows_written += len(written)
        self.rows_skipped += len(buf["skipped"])
        del self._buffers[shard]
