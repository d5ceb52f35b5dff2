"""Fast random row reads from a store.

Probes read random minibatches of whole images (``grid16[rows]``). Through zarr's codec
pipeline one sharded row costs ~1 ms of overhead, 2-4x a numpy memmap, and fancy indexing over
many rows is slower still (docs/benchmarks.md). For the one layout this package writes —
uncompressed, one image per inner chunk, shard index at the end — the bytes of a row are a plain
little-endian slice of the shard file at an offset the shard index gives. This module memory-maps
the shard files and reads that slice, after checking the array metadata is exactly that layout
and the index checksum is right; anything else (compressed arrays, remote stores, HDF5) is read
through the library's own indexing. Tests compare it bitwise with zarr's reads.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

_EMPTY = np.iinfo(np.uint64).max  # offset/nbytes of a chunk that was never written
_INDEX_ENTRY = 16  # two little-endian uint64 per inner chunk: offset, nbytes
_CRC = 4


def _local_shard_layout(array: Any) -> tuple[Path, int] | None:
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
        self._fast = _local_shard_layout(array) if self.dtype.kind == "f" else None
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
        path = folder / "c" / str(shard) / "/".join("0" * (len(self.shape) - 1))
        entry = None
        if path.exists():
            import google_crc32c

            data = np.memmap(path, dtype=np.uint8, mode="r")
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

    def read(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for i, row in enumerate(rows):
            out[i] = self.read_row(int(row))
        return out
