"""The two on-disk formats with one tree: zarr v3 (default) and HDF5.

Only creation, attributes, dimension names and id decoding differ; reads and writes are plain
``array[a:b]`` slicing on ``zarr.Array`` / ``h5py.Dataset`` objects that any notebook can use
directly. Dimension names are zarr v3 ``dimension_names`` (what xarray reads) and, in HDF5,
dimension labels with the ``image`` dataset attached as the scale of every array's first axis.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from embedcache.store.layout import (
    DONE,
    FEATURE_ARRAYS,
    FORMAT,
    FORMAT_VERSION,
    GLOBAL,
    GRID_ARRAYS,
    IMAGE,
    SKIPPED,
    GroupLayout,
    dimension_names,
)
from embedcache.store.lock import StoreLockedError
from embedcache.store.urls import StoreLocation, StoreURLError, locate

FORMATS = ("zarr", "hdf5")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


#: Write every chunk as given: zarr's default first scans each chunk for "all fill value" to
#: skip it, a full extra pass over the data that embeddings never pass (30% of write time).
_WRITE_ALL = {"write_empty_chunks": True}


def detect_format(path: str | os.PathLike | StoreLocation) -> str:
    """``hdf5`` for an HDF5 file or a path (or URL) ending in .h5/.hdf5, else ``zarr``."""
    location = locate(path, {})
    if location.local is not None and location.local.is_file():
        with location.local.open("rb") as f:
            return "hdf5" if f.read(8) == b"\x89HDF\r\n\x1a\n" else "zarr"
    return "hdf5" if Path(location.name).suffix.lower() in HDF5_SUFFIXES else "zarr"


class ZarrBackend:
    """Zarr v3 store: a local folder, or any fsspec URL through zarr's ``FsspecStore``. Grids:
    one image per inner chunk, ``rows_per_shard`` per shard (so a 400k-image cohort is
    thousands of files or objects, not 400k), no compression (embeddings gain 5-16% from
    compression at 1.3-20x the write time; see docs/benchmarks.md)."""

    name = "zarr"
    #: readers may open the store while it is written: record row counts as shards finish
    live_counts = True

    def __init__(self, location: StoreLocation, mode: str):
        import zarr
        from zarr.errors import GroupNotFoundError

        self.location = location
        self.path: Path | str = location.local if location.local is not None else str(location)
        if location.local is None:
            try:
                self.root = zarr.open_group(
                    location.zarr_store(read_only=mode == "r"),
                    mode="r" if mode == "r" else "a",
                    zarr_format=3,  # never probe for zarr v2 files (requests on object stores)
                )
            except GroupNotFoundError:
                raise FileNotFoundError(f"no zarr store at {location}") from None
        else:
            if mode == "r" and not (location.local / "zarr.json").exists():
                raise FileNotFoundError(f"no zarr store at {self.path}")
            self.root = zarr.open_group(
                str(location.local), mode="r" if mode == "r" else "a", zarr_format=3
            )
        if mode != "r" and "format" not in self.root.attrs:
            self.root.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION})

    def keys(self) -> list[str]:
        return sorted(name for name, _ in self.root.groups())

    def group(self, key: str) -> Any:
        return self.root[key]

    def create_group(self, key: str, layout: GroupLayout, ids: np.ndarray) -> Any:
        node = self.root.create_group(key)
        rows, n = layout.rows_per_shard, layout.n_rows
        self.write_ids(node, ids, rows)
        for name in (DONE, SKIPPED):
            node.create_array(
                name,
                shape=(n,),
                dtype=bool,
                chunks=(rows,),
                fill_value=False,
                dimension_names=dimension_names(name),
            )
        node.create_array(
            GLOBAL,
            shape=(n, layout.global_dim),
            dtype=layout.dtype,
            chunks=(rows, layout.global_dim),
            compressors=None,
            fill_value=0,
            config=_WRITE_ALL,
            dimension_names=dimension_names(GLOBAL),
        )
        for name in layout.feature_names()[len(FEATURE_ARRAYS) :]:  # the taps, like global
            node.create_array(
                name,
                shape=(n, layout.tap_dim),
                dtype=layout.dtype,
                chunks=(rows, layout.tap_dim),
                compressors=None,
                fill_value=0,
                config=_WRITE_ALL,
                dimension_names=dimension_names(name),
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
                dimension_names=dimension_names(name),
            )
        return node

    @staticmethod
    def write_ids(node: Any, ids: np.ndarray, rows_per_shard: int) -> None:
        """Create (or replace) the ``image`` array holding the image ids."""
        n = len(ids)
        node.create_array(
            IMAGE,
            shape=(n,),
            dtype=str,
            chunks=(max(rows_per_shard, 1024),),
            dimension_names=dimension_names(IMAGE),
            overwrite=True,
        )
        node[IMAGE][:] = np.asarray(ids, dtype=str)

    def name_dimensions(self, key: str, names: list[str]) -> None:
        """Add ``dimension_names`` to the metadata of existing arrays (a format-1 group).

        zarr has no call that edits an array's metadata in place, so the array's ``zarr.json``
        document is rewritten: locally to a temporary file renamed into place, on an object
        store as one PUT (both atomic).
        """
        for name in names:
            if self.location.local is not None:
                path = self.location.local / key / name / "zarr.json"
                meta = json.loads(path.read_bytes())
                meta["dimension_names"] = list(dimension_names(name))
                tmp = path.with_suffix(".json.partial")
                tmp.write_text(json.dumps(meta, indent=2))
                os.replace(tmp, path)
            else:
                fs, root = self.location.filesystem()
                path = f"{root}/{key}/{name}/zarr.json"
                meta = json.loads(fs.cat_file(path))
                meta["dimension_names"] = list(dimension_names(name))
                fs.pipe_file(path, json.dumps(meta, indent=2).encode())

    @staticmethod
    def delete_array(node: Any, name: str) -> None:
        if name in node:
            del node[name]

    def set_format_version(self, version: int) -> None:
        self.root.attrs.update({"format_version": version})

    @staticmethod
    def get_attrs(node: Any) -> dict[str, Any]:
        return dict(node.attrs)

    @staticmethod
    def set_attrs(node: Any, attrs: dict[str, Any]) -> None:
        node.attrs.update(json.loads(json.dumps(attrs, default=str)))

    @staticmethod
    def read_ids(array: Any) -> np.ndarray:
        return np.array(array[:].tolist(), dtype=str)

    def clear_partial_writes(self, key: str) -> int:
        """Delete temp files of chunk writes cut short by a crash; returns how many.

        Zarr writes each local chunk file to ``<name>.<uuid>.partial`` and renames it into place,
        so a killed writer leaves the old chunk intact plus an orphan temp file. Object stores
        have no temp files: an object PUT is atomic. Only safe under the
        group's writer lock. The store's own top-level temp files (its metadata is written once,
        at creation) are cleared too; other groups' folders are left to their writers.
        """
        if self.location.local is None:
            return 0  # object stores write each chunk in one atomic PUT: nothing half-written
        folder = self.location.local
        orphans = [*folder.glob("*.partial"), *(folder / key).rglob("*.partial")]
        for orphan in orphans:
            orphan.unlink(missing_ok=True)
        return len(orphans)

    def check_present(self, key: str) -> None:
        """Raise ``FileNotFoundError`` if a local group's folder is gone (an unmounted disk):
        zarr would otherwise recreate the folders beneath the emptied mount point."""
        if self.location.local is None:
            return
        folder = self.location.local / key
        if not (folder / "zarr.json").is_file():
            raise FileNotFoundError(errno.ENOENT, "the group's folder is gone", str(folder))

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
    #: no reader can open the file while it is written: row counts are recorded at the end
    live_counts = False

    def __init__(self, location: StoreLocation, mode: str):
        import h5py

        resolve_format(location, self.name)  # refuses a URL
        self.location = location
        self.path = location.local
        try:
            self.file = h5py.File(self.path, "r" if mode == "r" else "a")
        except BlockingIOError:  # HDF5's file lock: another process has it open for writing
            raise StoreLockedError(
                f"HDF5 store {self.path} is open for writing by another process (an "
                "extraction?), and an HDF5 file cannot be opened while it is written. Wait for "
                "it to finish, or extract into a zarr store, which readers can open at any time"
            ) from None
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
        self.write_ids(node, ids, layout.rows_per_shard)
        for name in (DONE, SKIPPED):
            node.create_dataset(name, shape=(n,), dtype=bool, fillvalue=False)
        shapes = layout.feature_shapes()
        for name, shape in shapes.items():
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
            node.create_dataset(name, shape=shape, dtype=layout.dtype, dcpl=dcpl)
        self.name_dimensions(key, [DONE, SKIPPED, *shapes])
        self.file.flush()
        return node

    @staticmethod
    def write_ids(node: Any, ids: np.ndarray, rows_per_shard: int) -> None:
        """Create (or replace) the ``image`` dataset: the image ids, made a dimension scale."""
        import h5py

        data = np.asarray(ids, dtype=object)
        if IMAGE in node and node[IMAGE].shape == data.shape:  # an upgrade redone after a kill
            node[IMAGE][...] = data  # in place: the scale may already be attached
        else:
            node.create_dataset(IMAGE, data=data, dtype=h5py.string_dtype())
        node[IMAGE].make_scale(IMAGE)

    def name_dimensions(self, key: str, names: list[str]) -> None:
        """Label every axis of the named datasets and attach the ``image`` scale to axis 0."""
        node = self.file[key]
        scale = node[IMAGE]
        for name in names:
            dataset = node[name]
            for axis, dim in enumerate(dimension_names(name)):
                dataset.dims[axis].label = dim
            if not dataset.dims[0]:  # attached once, also when resumed after a kill
                dataset.dims[0].attach_scale(scale)

    @staticmethod
    def delete_array(node: Any, name: str) -> None:
        if name in node:
            del node[name]

    def set_format_version(self, version: int) -> None:
        self.set_attrs(self.file, {"format_version": version})

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
    def read_ids(array: Any) -> np.ndarray:
        return np.asarray(array.asstr()[:], dtype=str)

    def clear_partial_writes(self, key: str) -> int:
        """Nothing to clear: feature datasets are preallocated and written in place."""
        return 0

    def check_present(self, key: str) -> None:
        """Raise ``FileNotFoundError`` if the file was removed (or its disk unmounted) while
        open: writes through the open handle would silently go nowhere."""
        if not self.path.is_file():
            raise FileNotFoundError(errno.ENOENT, "the HDF5 file is gone", str(self.path))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def resolve_format(location: StoreLocation, fmt: str | None = None) -> str:
    """The format to open ``location`` with (given, or detected), checked: ``zarr`` or
    ``hdf5``, and HDF5 only for local files."""
    fmt = fmt or detect_format(location)
    if fmt not in FORMATS:
        raise ValueError(f"store format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "hdf5" and location.is_remote:
        raise StoreURLError(
            f"HDF5 stores are local files only; {location} is a URL. Use a zarr store for "
            "object storage (a URL not ending in .h5/.hdf5), or a local .h5 path"
        )
    return fmt


def open_backend(
    path: str | os.PathLike | StoreLocation,
    mode: str = "r",
    fmt: str | None = None,
    storage_options: dict[str, Any] | None = None,
):
    """Open (or, with mode ``a``, create) a store in the given or detected format.

    ``path`` may be an fsspec URL (zarr only); ``storage_options`` configure its filesystem
    (``None``: from the environment, see :mod:`embedcache.store.urls`).
    """
    location = locate(path, storage_options)
    fmt = resolve_format(location, fmt)
    if mode == "r" and location.local is not None and not location.local.exists():
        raise FileNotFoundError(f"no store at {location}")
    return (ZarrBackend if fmt == "zarr" else Hdf5Backend)(location, mode)
