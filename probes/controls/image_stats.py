"""Features without an encoder: intensity histogram and size of each image, and manifest
metadata columns.

Images are read exactly as extraction reads them (:func:`embedcache.intake.read_image`:
float32 ``(H, W)`` in [0, 1], VOI LUT and MONOCHROME1 handled), never through an encoder::

    X, names = image_stats_features(fs.table, metadata=["view", "age"])
    X.shape        # (n, 32 + 2 + metadata columns)

Per image: ``hist_00 .. hist_31``, the fraction of pixels in each of 32 equal-width intensity
bins over [0, 1]; ``height`` and ``width`` in pixels as stored. Per metadata column: numeric
(and boolean) columns as they are, a missing value replaced by the column's mean over all rows
with a ``<col>_missing`` 0/1 column beside it; other columns one-hot over their values
(``<col>=<value>``, a missing value its own ``<col>=missing``). No label enters these
features; the probe standardises them on each round's training rows.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

__all__ = ["HISTOGRAM_BINS", "image_statistics", "image_stats_features", "metadata_features"]

#: Intensity histogram bins over [0, 1].
HISTOGRAM_BINS = 32
#: Computed statistics kept per process (a study runs one unit per round on the same images).
_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHE_SIZE = 4


def _one_image(path: str, bins: int) -> np.ndarray:
    from embedcache.intake import read_image

    image = read_image(path)
    counts, _ = np.histogram(image, bins=bins, range=(0.0, 1.0))
    return np.r_[counts / max(image.size, 1), image.shape[0], image.shape[1]]


def image_statistics(
    paths: Sequence[str],
    bins: int = HISTOGRAM_BINS,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``(n, bins + 2)`` float64: each image's intensity histogram (fractions of its pixels in
    ``bins`` equal-width bins over [0, 1]), height and width.

    Images decode in ``workers`` threads (default: up to 4). Results are kept for the last few
    path lists in this process, so a study's rounds read the images once. An unreadable image
    raises :class:`embedcache.intake.ImageReadError` naming it.
    """
    key = (tuple(paths), int(bins))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].copy()
    workers = workers or min(4, os.cpu_count() or 1)
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(
            tqdm(
                pool.map(lambda p: _one_image(p, bins), paths),
                total=len(paths),
                desc="image statistics",
                disable=not progress,
            )
        )
    out = np.vstack(rows) if rows else np.empty((0, bins + 2))
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out.copy()


def metadata_features(table: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, list]:
    """``(X (n, m), names)``: manifest ``columns`` as numbers (see the module docstring).

    Raises ``ValueError`` naming a column the manifest lacks.
    """
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"metadata column(s) {missing} not in the manifest; columns: "
            + ", ".join(map(repr, table.columns))
        )
    parts, names = [], []
    for column in columns:
        values = table[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            numbers = values.astype(np.float64).to_numpy()
            absent = np.isnan(numbers)
            fill = float(np.nanmean(numbers)) if (~absent).any() else 0.0
            parts.append(np.where(absent, fill, numbers)[:, None])
            names.append(column)
            if absent.any():
                parts.append(absent.astype(np.float64)[:, None])
                names.append(f"{column}_missing")
            continue
        text = values.astype(object).where(values.notna(), "missing").astype(str)
        for level in sorted(text.unique()):
            parts.append((text == level).to_numpy(np.float64)[:, None])
            names.append(f"{column}={level}")
    n = len(table)
    return (np.hstack(parts) if parts else np.empty((n, 0))), names


def image_stats_features(
    table: pd.DataFrame,
    metadata: Sequence[str] = (),
    bins: int = HISTOGRAM_BINS,
    *,
    progress: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """``(X, names)``: :func:`image_statistics` of the table's ``path`` column, then
    :func:`metadata_features` of ``metadata``; ``X`` is ``(n, bins + 2 + m)`` float64."""
    stats = image_statistics(table["path"].astype(str).tolist(), bins, progress=progress)
    names = [f"hist_{i:02d}" for i in range(bins)] + ["height", "width"]
    extra, extra_names = metadata_features(table, metadata)
    return np.hstack([stats, extra]), names + extra_names
