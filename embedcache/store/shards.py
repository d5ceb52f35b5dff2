"""Fast row reads and whole-shard writes for the store's own zarr layout.

Probes read random minibatches of whole images (``grid16[rows]``); extraction writes whole
shards. Through zarr's codec pipeline one sharded row read costs ~1 ms of overhead (8x a numpy
memmap, docs/benchmarks.md) and a shard write makes extra passes over the data. For the one
layout this package writes — uncompressed little-endian, one image per inner chunk, shard index
(offset, nbytes per inner chunk, then a CRC32C) at the end, as the zarr v3 sharding codec
specifies — a shard file is simply the rows' bytes followed by the index. This module reads rows
as slices of memory-mapped shard files and writes whole shards as one buffer, after checking the
array metadata is exactly that layout; anything else (compressed arrays, remote stores, HDF5,
partial shards) goes through the library's own indexing. Tests check both directions bitwise
against zarr itself.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

_EMPTY = np.iinfo(np.uint64).max  # offset/nbytes of a chunk that was never written
_INDEX_ENTRY = 16  # two little-endian uint64 per inner chunk: offset, nbytes
_CRC = 4


def shard_path(folder: Path, shard: int, ndim: int) -> Path:
    """File of shard ``shard`` of an array whose chunk grid is split along axis 0 only."""
    return folder / "c" / str(shard) / "/".join("0" * (ndim - 1))


def local_shard_layout(array: Any) -> tuple[Path, int] | None:
    """``(array folder, rows per shard)`` when ``array`` is a local zarr v3 array in our sharded,
    uncompressed, one-row-per-inner-chunk layout; else ``None``."""
    try:
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr is a dependency
        return None
    store = getattr(array, "store", None)
    meta = getattr(array, "metadata", None)
    if not isinstance(store, LocalStore) or getattr(meta, "zarr_format", None) != 3:
        return None
    meta_dict = meta.to_dict()
    codecs = meta_dict.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = codecs[0]["configuration"]
    inner = conf["codecs"]
    index_codecs = [c.get("name") for c in conf["index_codecs"]]
    shard_shape = meta_dict["chunk_grid"]["configuration"]["chunk_shape"]
    key_enc = meta_dict["chunk_key_encoding"]
    if (
        len(inner) != 1
        or inner[0]["name"] != "bytes"
        or inner[0].get("configuration", {}).get("endian", "little") != "little"
        or conf.get("index_location", "end") != "end"
        or index_codecs != ["bytes", "crc32c"]
        or list(conf["chunk_shape"]) != [1, *array.shape[1:]]
        or list(shard_shape[1:]) != list(array.shape[1:])
        or key_enc.get("name") != "default"
        or key_enc.get("configuration", {}).get("separator", "/") != "/"
    ):
        return None
    return Path(store.root) / array.path, int(shard_shape[0])


class RowReader:
    """Reads whole rows (images) of one array by index.

    Args:
        array: a ``zarr.Array`` or ``h5py.Dataset`` with rows along axis 0.
        max_open_shards: shard files kept memory-mapped at once.

    ``reader.read(rows)`` returns ``(len(rows), *array.shape[1:])`` in the array's dtype.
    """

    def __init__(self, array: Any, max_open_shards: int = 256):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(str(array.dtype))
        self._fast = local_shard_layout(array) if self.dtype.kind == "f" else None
        self._open: OrderedDict[int, tuple[np.memmap, np.ndarray] | None] = OrderedDict()
        self._max_open = max_open_shards

    @property
    def fast(self) -> bool:
        """True when rows are read straight from memory-mapped shard files."""
        return self._fast is not None

    def _shard(self, shard: int) -> tuple[np.memmap, np.ndarray] | None:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        folder, rows = self._fast  # type: ignore[misc]
        path = shard_path(folder, shard, len(self.shape))
        entry = None
        if path.exists():
            # Copy-on-write ("c"), not "r": the pages are the same page cache, but the views are
            # writable arrays, so torch.from_numpy takes them without a copy or a warning. A
            # write to a view would stay private to this process; the file never changes.
            data = np.memmap(path, dtype=np.uint8, mode="c")
            index_bytes = bytes(data[-(rows * _INDEX_ENTRY + _CRC) : -_CRC])
            crc = int.from_bytes(bytes(data[-_CRC:]), "little")
            if google_crc32c.value(index_bytes) != crc:
                raise OSError(f"shard index checksum mismatch in {path}: the file is damaged")
            entry = (data, np.frombuffer(index_bytes, dtype="<u8").reshape(rows, 2))
        self._open[shard] = entry
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return entry

    def read_row(self, row: int) -> np.ndarray:
        if self._fast is None:
            return np.asarray(self.array[row])
        rows = self._fast[1]
        if not 0 <= row < self.shape[0]:
            raise IndexError(f"row {row} out of range for {self.shape[0]} rows")
        entry = self._shard(row // rows)
        inner = self.shape[1:]
        if entry is None:
            return np.zeros(inner, self.dtype)
        data, index = entry
        offset, nbytes = index[row % rows]
        if offset == _EMPTY:
            return np.zeros(inner, self.dtype)
        return data[offset : offset + nbytes].view(self.dtype).reshape(inner)

    def row_views(self, rows: Any) -> list[np.ndarray]:
        """Each row as a read-only array: for local shards a view of the memory-mapped file
        (no copy: the consumer's own pass over the bytes is the only one), else a copy."""
        return [self.read_row(int(row)) for row in np.asarray(rows, dtype=np.int64).reshape(-1)]

    def read(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for i, row in enumerate(rows):
            out[i] = self.read_row(int(row))
        return out


def write_shard(folder: Path, rows_per_shard: int, shard: int, values: np.ndarray) -> None:
    """Write one whole shard file: the rows' bytes, then the index and its CRC32C.

    Args:
        folder: the array's folder (from :func:`local_shard_layout`).
        rows_per_shard: rows in a full shard.
        shard: shard number.
        values: ``(n, ...)`` rows of this shard, in the array's dtype, little-endian;
            ``n == rows_per_shard`` except for the last shard of the array.

    The file is written to a temporary name and renamed into place (as zarr does), so a reader
    or a crash never sees half a shard.
    """
    n = len(values)
    data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    row_bytes = data[0].nbytes if n else 0
    index = np.full((rows_per_shard, 2), _EMPTY, dtype="<u8")
    index[:n, 0] = np.arange(n, dtype=np.uint64) * np.uint64(row_bytes)
    index[:n, 1] = row_bytes
    index_bytes = index.tobytes()
    crc = google_crc32c.value(index_bytes).to_bytes(_CRC, "little")
    if not folder.is_dir():  # never recreate a vanished store beneath an emptied mount point
        raise FileNotFoundError(errno.ENOENT, "the store's array folder is gone", str(folder))
    path = shard_path(folder, shard, data.ndim)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(data.reshape(-1).view(np.uint8)))
            f.write(index_bytes)
            f.write(crc)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
