"""The two on-disk formats with one tree: zarr v3 (default) and HDF5.

Only creation, attributes and id decoding differ; reads and writes are plain ``array[a:b]``
slicing on ``zarr.Array`` / ``h5py.Dataset`` objects that any notebook can use directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from embedcache.store.layout import (
    DONE,
    FORMAT,
    FORMAT_VERSION,
    GLOBAL,
    GRID_ARRAYS,
    IDS,
    SKIPPED,
    GroupLayout,
)

FORMATS = ("zarr", "hdf5")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


#: Write every chunk as given: zarr's default first scans each chunk for "all fill value" to
#: skip it, a full extra pass over the data that embeddings never pass (30% of write time).
_WRITE_ALL = {"write_empty_chunks": True}


def detect_format(path: str | os.PathLike) -> str:
    """``hdf5`` for an HDF5 file or a path ending in .h5/.hdf5, else ``zarr``."""
    p = Path(path)
    if p.is_file():
        with p.open("rb") as f:
            return "hdf5" if f.read(8) == b"\x89HDF\r\n\x1a\n" else "zarr"
    return "hdf5" if p.suffix.lower() in HDF5_SUFFIXES else "zarr"


class ZarrBackend:
    """Zarr v3 directory store. Grids: one image per inner chunk, ``rows_per_shard`` per shard
    (so a 400k-image cohort is thousands of files, not 400k), no compression (embeddings gain
    5-16% from compression at 1.3-20x the write time; see docs/benchmarks.md)."""

    name = "zarr"

    def __init__(self, path: str | os.PathLike, mode: str):
        import zarr

        self.path = Path(path)
        if mode == "r" and not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"no zarr store at {self.path}")
        self.root = zarr.open_group(str(self.path), mode="r" if mode == "r" else "a")
        if mode != "r" and "format" not in self.root.attrs:
            self.root.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION})

    def keys(self) -> list[str]:
        return sorted(name for name, _ in self.root.groups())

    def group(self, key: str) -> Any:
        return self.root[key]

    def create_group(self, key: str, layout: GroupLayout, ids: np.ndarray) -> Any:
        node = self.root.create_group(key)
        rows, n = layout.rows_per_shard, layout.n_rows
        node.create_array(IDS, shape=(n,), dtype=str, chunks=(max(rows, 1024),))
        node[IDS][:] = np.asarray(ids, dtype=str)
        for name in (DONE, SKIPPED):
            node.create_array(name, shape=(n,), dtype=bool, chunks=(rows,), fill_value=False)
        node.create_array(
            GLOBAL,
            shape=(n, layout.global_dim),
            dtype=layout.dtype,
            chunks=(rows, layout.global_dim),
            compressors=None,
            fill_value=0,
            config=_WRITE_ALL,
        )
        for level, name in GRID_ARRAYS.items():
            shape = layout.grid_shapes[level]
            node.create_array(
                name,
                shape=(n, *shape),
                dtype=layout.dtype,
                chunks=(1, *shape),
                shards=(rows, *shape),
                compressors=None,
                fill_value=0,
                config=_WRITE_ALL,
            )
        return node

    @staticmethod
    def get_attrs(node: Any) -> dict[str, Any]:
        return dict(node.attrs)

    @staticmethod
    def set_attrs(node: Any, attrs: dict[str, Any]) -> None:
        node.attrs.update(json.loads(json.dumps(attrs, default=str)))

    @staticmethod
    def read_ids(node: Any) -> np.ndarray:
        return np.array(node[IDS][:].tolist(), dtype=str)

    def clear_partial_writes(self, key: str) -> int:
        """Delete temp files of chunk writes cut short by a crash; returns how many.

        Zarr writes each chunk file to ``<name>.<uuid>.partial`` and renames it into place, so a
        killed writer leaves the old chunk intact plus an orphan temp file. Only safe under the
        group's writer lock. The store's own top-level temp files (its metadata is written once,
        at creation) are cleared too; other groups' folders are left to their writers.
        """
        orphans = [*self.path.glob("*.partial"), *(self.path / key).rglob("*.partial")]
        for orphan in orphans:
            orphan.unlink(missing_ok=True)
        return len(orphans)

    def flush(self) -> None:
        """Zarr writes each chunk file atomically (temp file + rename) as it goes."""

    def close(self) -> None:
        pass


class Hdf5Backend:
    """One HDF5 file with the same tree. Attributes are JSON strings (HDF5 attributes cannot
    hold nested mappings). Feature datasets are contiguous with their space allocated at
    creation, so writing rows never changes file metadata (an interrupted run cannot leave a
    half-written chunk index behind), and random row reads are as fast as a memmap."""

    name = "hdf5"

    def __init__(self, path: str | os.PathLike, mode: str):
        import h5py

        self.path = Path(path)
        self.file = h5py.File(self.path, "r" if mode == "r" else "a")
        if mode != "r" and "format" not in self.file.attrs:
            self.set_attrs(self.file, {"format": FORMAT, "format_version": FORMAT_VERSION})
        self.root = self.file

    def keys(self) -> list[str]:
        return sorted(self.file.keys())

    def group(self, key: str) -> Any:
        return self.file[key]

    def create_group(self, key: str, layout: GroupLayout, ids: np.ndarray) -> Any:
        import h5py

        node = self.file.create_group(key)
        n = layout.n_rows
        node.create_dataset(IDS, data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
        for name in (DONE, SKIPPED):
            node.create_dataset(name, shape=(n,), dtype=bool, fillvalue=False)
        shapes = layout.feature_shapes()
        for name, shape in shapes.items():
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
            node.create_dataset(name, shape=shape, dtype=layout.dtype, dcpl=dcpl)
        self.file.flush()
        return node

    @staticmethod
    def get_attrs(node: Any) -> dict[str, Any]:
        out = {}
        for name, value in node.attrs.items():
            try:
                out[name] = json.loads(value)
            except (TypeError, ValueError):
                out[name] = value
        return out

    @staticmethod
    def set_attrs(node: Any, attrs: dict[str, Any]) -> None:
        for name, value in attrs.items():
            node.attrs[name] = json.dumps(value, default=str)

    @staticmethod
    def read_ids(node: Any) -> np.ndarray:
        return np.asarray(node[IDS].asstr()[:], dtype=str)

    def clear_partial_writes(self, key: str) -> int:
        """Nothing to clear: feature datasets are preallocated and written in place."""
        return 0

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def open_backend(path: str | os.PathLike, mode: str = "r", fmt: str | None = None):
    """Open (or, with mode ``a``, create) a store in the given or detected format."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"store format must be one of {FORMATS}, got {fmt!r}")
    if mode == "r" and not Path(path).exists():
        raise FileNotFoundError(f"no store at {path}")
    return (ZarrBackend if fmt == "zarr" else Hdf5Backend)(path, mode)
