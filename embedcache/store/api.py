"""Public store API: open a store, list its encoder groups, read or write one group.

``open_store(path)`` is all a notebook needs::

    store = open_store("cohort.zarr")
    group = store.group(store.keys()[0])
    group.array("grid16")          # a plain zarr.Array / h5py.Dataset
    group.read_rows("grid16", [3, 17, 42])   # (3, h, w, C), fast random access
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedcache.store.backends import detect_format, open_backend
from embedcache.store.layout import (
    DONE,
    FORMAT_VERSION,
    IDS,
    IMAGE,
    SKIPPED,
    GroupLayout,
    check_fits,
    ids_array_name,
)
from embedcache.store.progress import (
    COUNTS,
    WRITING,
    GroupCounts,
    recorded_counts,
    scanned_counts,
)
from embedcache.store.shards import RowReader, local_shard_layout, write_shard
from embedcache.store.urls import StoreLocation, locate


class StoreMismatchError(ValueError):
    """The existing group was made from other inputs than this run's."""


class StoreGroup:
    """One encoder group of a store.

    Attributes:
        key: group name (the encoder key).
        node: the underlying ``zarr.Group`` / ``h5py.Group``.
        layout: shapes and dtype (:class:`GroupLayout`).
        records_counts: bump the ``counts`` attribute as rows are flagged (the attributes'
            writer does; a torchrun rank other than 0 does not, see
            :mod:`embedcache.store.progress`).
    """

    def __init__(self, backend: Any, key: str, node: Any = None):
        self._backend = backend
        self.key = key
        self.node = backend.group(key) if node is None else node
        attrs = self.attrs
        if "layout" not in attrs:
            raise StoreMismatchError(
                f"encoder group {key} was never completely created (its creation was "
                "interrupted); run the extraction again to recreate it"
            )
        self.layout = GroupLayout.from_attrs(attrs["layout"])
        #: 1 (ids array ``ids``, no dimension names, no counts) or 2, see store.layout
        self.format_version = int(attrs.get("format_version", 1))
        self._ids_name = ids_array_name(attrs)
        self.records_counts = True
        self._session: GroupCounts | None = None  # running counts while this process writes
        self._readers: dict[str, RowReader] = {}
        self._arrays: dict[str, Any] = {}
        self._shard_layouts: dict[str, Any] = {}
        self._ids: np.ndarray | None = None

    @property
    def store_path(self) -> Path | str:
        """The store's path (local) or URL (remote)."""
        return self._backend.path

    @property
    def attrs(self) -> dict[str, Any]:
        """Provenance and layout attributes (a copy)."""
        return self._backend.get_attrs(self.node)

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        self._backend.set_attrs(self.node, attrs)

    def array(self, name: str) -> Any:
        """The plain ``zarr.Array`` / ``h5py.Dataset`` called ``name`` (``ids`` and ``image``
        both name the image-id array, whatever its name on disk)."""
        if name in (IDS, IMAGE):
            name = self._ids_name
        if name not in self._arrays:
            self._arrays[name] = self.node[name]
        return self._arrays[name]

    @property
    def ids(self) -> np.ndarray:
        """Image ids ``(N,)`` in manifest order."""
        if self._ids is None:
            self._ids = self._backend.read_ids(self.array(IDS))
        return self._ids

    @property
    def done(self) -> np.ndarray:
        """``(N,)`` bool: rows durably written or recorded as skipped."""
        return np.asarray(self.array(DONE)[:], dtype=bool)

    @property
    def skipped(self) -> np.ndarray:
        """``(N,)`` bool: rows recorded as unreadable (``--skip-bad``)."""
        return np.asarray(self.array(SKIPPED)[:], dtype=bool)

    def counts(self) -> GroupCounts:
        """Rows, done and skipped counts: from the metadata (one read, whatever N), or for a
        format-1 group by reading the flag arrays (``scanned``). In the process writing the
        group, its own running counts. See :mod:`embedcache.store.progress` for when recorded
        counts are exact."""
        if self._session is not None:
            return self._session
        return recorded_counts(self.attrs) or self.scan_counts()

    def scan_counts(self) -> GroupCounts:
        """Counts read from the ``done`` and ``skipped`` arrays (a full read of both)."""
        return scanned_counts(self.done, self.skipped)

    def begin_writing(self, done: np.ndarray, world_size: int = 1) -> GroupCounts:
        """Mark the group as being written (readers then treat the counts as a lower bound),
        recounting first where a killed run (or a hand edit of the flags) left the counts
        behind. Call under the writer lock, as the attributes' writer.

        Args:
            done: the ``(N,)`` done flags, as the caller just read them (to find what is
                pending); ``skipped`` is read only when the counts need recounting.
            world_size: processes about to write.
        """
        counts = recorded_counts(self.attrs)
        if counts is None or not counts.exact or counts.done != int(np.count_nonzero(done)):
            counts = scanned_counts(done, self.skipped)
        owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
            "world_size": world_size,
        }
        self.update_attrs({COUNTS: counts.to_attrs(), WRITING: owner})
        self._backend.flush()
        self._session = GroupCounts(counts.rows, counts.done, counts.skipped, owner)
        return self._session

    def end_writing(self, recount: bool) -> GroupCounts:
        """Record the final counts (rescanned with ``recount``: rows other processes flagged)
        and clear the ``writing`` mark: from here on the counts are exact."""
        counts = self.scan_counts() if recount else self.counts()
        self.update_attrs({COUNTS: counts.to_attrs(), WRITING: None})
        self._backend.flush()
        self._session = None
        return GroupCounts(counts.rows, counts.done, counts.skipped)

    def skip_reasons(self) -> dict[str, str]:
        """``{image_id: reason}`` for every skipped row."""
        return dict(self.attrs.get("skip_reasons", {}))

    def read_rows(self, name: str, rows: Any) -> np.ndarray:
        """Rows of one feature array, any order, as ``(len(rows), ...)``."""
        return self._reader(name).read(rows)

    def row_views(self, name: str, rows: Any) -> list[np.ndarray]:
        """Rows of one feature array as a list of read-only ``(...)`` arrays, views of the
        memory-mapped shard files where the store is local (zero-copy streaming)."""
        return self._reader(name).row_views(rows)

    def _reader(self, name: str) -> RowReader:
        if name not in self._readers:
            self._readers[name] = RowReader(self.array(name))
        return self._readers[name]

    # -- writing (used by the extractor; one writer per group, see store.lock) --

    def write_rows(self, start: int, features: dict[str, np.ndarray]) -> None:
        """Write consecutive rows ``start .. start + n`` of every feature array.

        Args:
            start: first row.
            features: ``{"global": (n, D), "grid16": (n, h, w, C), "grid32": ...}`` (and
                ``tap<b>``: (n, D') when the group has taps), either in
                the store dtype already or float32 (then checked with :func:`check_fits` and
                cast).
        """
        cast = {}
        for name in self.layout.feature_names():
            values = features[name]
            if values.dtype != np.dtype(self.layout.dtype):
                check_fits(values, self.layout.dtype, f"{self.key}/{name} from row {start}")
                values = values.astype(self.layout.dtype)
            cast[name] = values
        if len({len(v) for v in cast.values()}) != 1:
            raise ValueError("feature arrays of one write must have the same row count")
        self._backend.check_present(self.key)
        for name, values in cast.items():
            self._write_array(name, start, values)

    def _write_array(self, name: str, start: int, values: np.ndarray) -> None:
        """Whole shards of our own local zarr layout are written as one buffer each (see
        :mod:`embedcache.store.shards`); anything else goes through zarr / h5py."""
        array = self.array(name)
        if name not in self._shard_layouts:  # parsed once per array, not per shard write
            self._shard_layouts[name] = local_shard_layout(array)
        layout = self._shard_layouts[name]
        stop = start + len(values)
        if layout is not None:
            folder, rows = layout
            n_rows = array.shape[0]
            whole = start % rows == 0 and (stop % rows == 0 or stop == n_rows)
            if whole:
                for lo in range(start, stop, rows):
                    write_shard(folder, rows, lo // rows, values[lo - start : lo - start + rows])
                return
        array[start:stop] = values

    def mark_done(self, rows: np.ndarray) -> None:
        """Set ``done`` for ``rows`` (after their features were written), then the counts."""
        self._count(done=self._set_flags(DONE, rows))

    def mark_skipped(self, rows: np.ndarray, reasons: dict[str, str]) -> None:
        """Record unreadable rows: ``skipped`` and ``done`` flags and ``{image_id: reason}``.

        An empty ``reasons`` leaves the attributes alone (a distributed rank's reasons are
        recorded by rank 0, the attributes' one writer, see :meth:`record_skip_reasons`).
        """
        if len(rows) == 0:
            return
        self.record_skip_reasons(reasons)
        skipped = self._set_flags(SKIPPED, rows)
        self._count(done=self._set_flags(DONE, rows), skipped=skipped)

    def record_skip_reasons(self, reasons: dict[str, str]) -> None:
        """Merge ``{image_id: reason}`` into the group's ``skip_reasons`` attribute."""
        if reasons:
            self.update_attrs({"skip_reasons": {**self.skip_reasons(), **reasons}})

    def _set_flags(self, name: str, rows: np.ndarray) -> int:
        """Set flag array ``name`` at ``rows``; returns how many were not set before."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) == 0:
            return 0
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        self._backend.check_present(self.key)
        flags = np.asarray(self.array(name)[lo:hi], dtype=bool)
        new = int(np.count_nonzero(~flags[rows - lo]))
        flags[rows - lo] = True
        self.array(name)[lo:hi] = flags
        self._backend.flush()
        return new

    def _count(self, done: int, skipped: int = 0) -> None:
        """Add newly flagged rows to the recorded counts (after the flags are written, so a
        kill in between leaves the counts low, never high).

        During an extraction (:meth:`begin_writing`) an HDF5 group keeps them in memory until
        :meth:`end_writing`: nobody can read the file while it is written (HDF5's file lock),
        and an attribute write changes file metadata, which row writes never do (a kill
        mid-write cannot damage it). A zarr group records them at once, for its readers.
        """
        if not self.records_counts or not (done or skipped):
            return
        if self._session is not None:
            self._session = self._session.bumped(done, skipped)
            if self._backend.live_counts:
                self.update_attrs({COUNTS: self._session.to_attrs()})
            return
        counts = recorded_counts(self.attrs)
        if counts is not None:  # a format-1 group gets its counts when it is upgraded
            self.update_attrs({COUNTS: counts.bumped(done, skipped).to_attrs()})
            self._backend.flush()


class EmbeddingStore:
    """A store file/folder (or object-store prefix) holding one group per encoder key.

    Use :func:`open_store`. Closing matters for HDF5 only; the object is a context manager.
    """

    def __init__(
        self,
        path: str | os.PathLike | StoreLocation,
        mode: str = "r",
        fmt: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        self.location = locate(path, storage_options)
        self.mode = mode
        self._backend = open_backend(self.location, mode, fmt)
        #: a ``Path`` for a local store, the URL string for a remote one
        self.path: Path | str = self._backend.path
        self.format = self._backend.name

    def keys(self) -> list[str]:
        """Encoder group keys in the store."""
        return self._backend.keys()

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def group(self, key: str) -> StoreGroup:
        """The encoder group ``key`` (reads its metadata only: no listing of the store)."""
        try:
            if not key or "/" in key:  # a group of the root, not a path into one
                raise KeyError(key)
            node = self._backend.group(key)
        except KeyError:
            known = ", ".join(self.keys()) or "(none)"
            raise KeyError(f"no encoder group {key!r} in {self.path}; groups: {known}") from None
        return StoreGroup(self._backend, key, node)

    def is_complete(self, key: str) -> bool:
        """False for a group whose creation was interrupted (its layout attribute, written
        last, is missing)."""
        return "layout" in self._backend.get_attrs(self._backend.group(key))

    def clear_partial_writes(self, key: str) -> int:
        """Remove temp files left by writes a crash cut short (call under the writer lock)."""
        return self._backend.clear_partial_writes(key)

    def upgrade_group(self, key: str) -> bool:
        """Bring a group written in store format 1 to the current format (image ids as the
        ``image`` coordinate, dimension names, recorded counts); True if it changed. Call under
        the group's writer lock (see :mod:`embedcache.store.migrate`)."""
        from embedcache.store.migrate import upgrade_group

        return upgrade_group(self._backend, key)

    def delete_group(self, key: str) -> None:
        """Remove a group and its arrays (used for half-created groups, under the lock)."""
        del self._backend.root[key]
        self._backend.flush()

    def create_group(
        self, key: str, layout: GroupLayout, ids: np.ndarray, attrs: dict[str, Any]
    ) -> StoreGroup:
        """Create an empty group (all rows not done) with its provenance attributes.

        The ``layout`` attribute is written last and marks the group as complete: a creation
        killed half-way is detected by :meth:`is_complete` and redone.
        """
        node = self._backend.create_group(key, layout, ids)
        counts = GroupCounts(layout.n_rows, 0, 0)
        self._backend.set_attrs(
            node,
            {
                **attrs,
                "format_version": FORMAT_VERSION,
                COUNTS: counts.to_attrs(),
                "layout": layout.to_attrs(),
                "created": time.time(),
            },
        )
        self._backend.flush()
        return StoreGroup(self._backend, key)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(
    path: str | os.PathLike | StoreLocation,
    mode: str = "r",
    fmt: str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> EmbeddingStore:
    """Open a store for reading (``mode="r"``) or appending (``"a"``, created if missing).

    Args:
        path: a zarr folder (default format), an HDF5 file (``.h5``/``.hdf5``), or the URL of a
            zarr store on any fsspec filesystem (``s3://bucket/cohort.zarr``, ``gs://...``,
            ``memory://...``; ``file://`` is a local path).
        fmt: ``zarr`` or ``hdf5``; detected from the path when omitted.
        storage_options: fsspec options of a URL (``endpoint_url``, credentials...); ``None``
            reads the JSON in ``$EMBEDCACHE_STORAGE_OPTIONS``.
    """
    location = locate(path, storage_options)
    return EmbeddingStore(location, mode, fmt or detect_format(location))
