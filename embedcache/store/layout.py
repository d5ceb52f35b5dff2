"""Store layout: array names, the encoder key, and shapes of one encoder group.

One store holds one group per encoder key::

    <store>/                      attrs: format, format_version
      <encoder key>/              attrs: encoder provenance, preprocessing, library versions,
                                  manifest digest, dtype, grid specs, created, format_version,
                                  counts (rows, done, skipped; see embedcache.store.progress)
        image    (N,)             image ids, manifest order (strings); ``ids`` in format 1
        global   (N, D)
        grid16   (N, h, w, C)     one image per inner chunk, ``rows_per_shard`` images per shard
        grid32   (N, h', w', C')
        tap<b>   (N, D')          optional (``extract --taps``): block b's class or pooled token
        done     (N,)             True once the row is durably written (or recorded as skipped)
        skipped  (N,)             True for rows recorded as unreadable under ``--skip-bad``

Every array carries its dimension names (zarr v3 ``dimension_names``; HDF5 dimension scales),
with the image ids as the ``image`` coordinate, so ``xarray.open_zarr(store, group=key)`` gives
a Dataset indexed by image id without this package (:func:`dimension_names`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT = "embedcache-store"
#: 2: the ids array is called ``image`` (the xarray coordinate), every array names its
#: dimensions and the group records its row counts. Format-1 groups (ids array ``ids``, no
#: dimension names, no counts) are still read, and brought to format 2 by the next extraction
#: into them (embedcache.store.migrate).
FORMAT_VERSION = 2

#: ``ids`` is the API name of the image-id array (``StoreGroup.array("ids")``); on disk it is
#: :data:`IMAGE` from format 2 on, :data:`LEGACY_IDS` before.
IDS, GLOBAL, DONE, SKIPPED = "ids", "global", "done", "skipped"
IMAGE = "image"
LEGACY_IDS = "ids"
GRID_ARRAYS = {16: "grid16", 32: "grid32"}
#: The arrays every group holds; a group extracted with taps holds ``tap<b>`` arrays besides
#: (see :meth:`GroupLayout.feature_names`).
FEATURE_ARRAYS = (GLOBAL, *GRID_ARRAYS.values())
#: Name of the array of block ``b``'s tap.
TAP_ARRAY = re.compile(r"^tap(\d+)$")


def tap_name(block: int) -> str:
    """The array holding the tap of block ``block`` (0-based): ``tap11``."""
    return f"tap{int(block)}"


#: Storage dtypes a user may choose. float16 halves the store; values outside its range are
#: refused (never written as inf): see :func:`check_fits`.
STORE_DTYPES = ("float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504

DEFAULT_ROWS_PER_SHARD = 64


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def encoder_key(preset_name: str, material: dict[str, Any]) -> str:
    """Readable, collision-resistant group name: ``<preset>-<12 hex of sha256(material)>``.

    ``material`` holds everything that changes the stored numbers (weights identity,
    preprocessing, adapter version, compute precision, storage dtype).
    """
    digest = hashlib.sha256(canonical_json(material).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", preset_name).strip("_") or "encoder"
    return f"{name}-{digest}"


#: ``<preset>-<12 hex>``: the only place a group key is taken apart (:func:`parse_key`).
_KEY = re.compile(r"^(?P<preset>.+)-(?P<digest>[0-9a-f]{12})$")


def parse_key(key: str) -> tuple[str, str]:
    """``(preset, digest)`` of a key made by :func:`encoder_key`; ``(key, "")`` for a group
    named otherwise (a store written by hand)."""
    match = _KEY.match(key)
    return (match["preset"], match["digest"]) if match else (key, "")


@dataclass(frozen=True)
class GroupLayout:
    """Shapes of one encoder group.

    Attributes:
        n_rows: N, images in the manifest.
        global_dim: D.
        grid_shapes: ``{16: (h, w, C), 32: (h', w', C')}``.
        dtype: storage dtype of the feature arrays (``float16`` or ``float32``).
        rows_per_shard: images per shard file (and per write); also the chunk length of the
            1-D arrays.
        taps: blocks whose class or pooled token is stored (``tap<b>`` arrays), ascending.
        tap_dim: D' of each tap.
    """

    n_rows: int
    global_dim: int
    grid_shapes: dict[int, tuple[int, int, int]]
    dtype: str = "float16"
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    taps: tuple[int, ...] = ()
    tap_dim: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {self.dtype!r}")
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")

    def feature_names(self) -> tuple[str, ...]:
        """Every feature array of the group: global, the grids, then the taps."""
        return (*FEATURE_ARRAYS, *(tap_name(b) for b in self.taps))

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Full array shape of each feature array, by name."""
        shapes: dict[str, tuple[int, ...]] = {GLOBAL: (self.n_rows, self.global_dim)}
        for level, name in GRID_ARRAYS.items():
            shapes[name] = (self.n_rows, *self.grid_shapes[level])
        for block in self.taps:
            shapes[tap_name(block)] = (self.n_rows, self.tap_dim)
        return shapes

    def bytes_per_row(self) -> int:
        itemsize = np.dtype(self.dtype).itemsize
        return sum(int(np.prod(s[1:])) * itemsize for s in self.feature_shapes().values())

    def to_attrs(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "global_dim": self.global_dim,
            "grid_shapes": {str(k): list(v) for k, v in self.grid_shapes.items()},
            "dtype": self.dtype,
            "rows_per_shard": self.rows_per_shard,
            **({"taps": list(self.taps), "tap_dim": self.tap_dim} if self.taps else {}),
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> GroupLayout:
        return cls(
            n_rows=int(attrs["n_rows"]),
            global_dim=int(attrs["global_dim"]),
            grid_shapes={int(k): tuple(v) for k, v in attrs["grid_shapes"].items()},
            dtype=attrs["dtype"],
            rows_per_shard=int(attrs["rows_per_shard"]),
            taps=tuple(int(b) for b in attrs.get("taps", ())),
            tap_dim=int(attrs.get("tap_dim", 0)),
        )


def dimension_names(name: str) -> tuple[str, ...]:
    """Dimension names of array ``name`` (its on-disk name): ``image`` first for every array,
    ``channel`` for the global vector, ``y16, x16, channel16`` for grid16 (``32`` likewise),
    ``tap_channel`` for the taps.

    The grids' axes get their own names because their sizes differ between grids (and from the
    global vector) for most encoders, and a name has one size across a Dataset.
    """
    if name in (IMAGE, LEGACY_IDS, DONE, SKIPPED):
        return (IMAGE,)
    if name == GLOBAL:
        return (IMAGE, "channel")
    for level, grid in GRID_ARRAYS.items():
        if name == grid:
            return (IMAGE, f"y{level}", f"x{level}", f"channel{level}")
    if TAP_ARRAY.match(name):  # every tap of a group has the same width
        return (IMAGE, "tap_channel")
    raise KeyError(f"no array {name!r} in the store layout")


def ids_array_name(group_attrs: dict[str, Any]) -> str:
    """On-disk name of a group's image-id array: :data:`IMAGE` from format 2, else ``ids``."""
    return IMAGE if int(group_attrs.get("format_version", 1)) >= 2 else LEGACY_IDS


class StoreOverflowError(ValueError):
    """A value does not fit the store's dtype (it would become inf)."""


def check_fits(values: np.ndarray, dtype: str, what: str) -> None:
    """Refuse finite values that the storage dtype would turn into inf.

    Args:
        values: float32 array about to be cast to ``dtype``.
        dtype: storage dtype.
        what: description for the message (array name and image ids).
    """
    if dtype != "float16" or values.size == 0:
        return
    # Fast path without temporaries (this runs on every extracted batch): NaN fails both
    # comparisons and falls through to the exact check below.
    if values.min() >= -FLOAT16_MAX and values.max() <= FLOAT16_MAX:
        return
    finite = np.isfinite(values)
    peak = float(np.abs(np.where(finite, values, 0)).max())
    if peak > FLOAT16_MAX:
        raise StoreOverflowError(
            f"{what}: value {peak:.4g} exceeds the float16 range (max {FLOAT16_MAX:.0f}) and "
            "would be stored as inf; re-extract into a new group with --dtype float32"
        )
