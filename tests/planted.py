"""Synthetic stores with planted signals for the probe tests (no images: grids and vectors are
written with the store API; masks, where needed, are SIIM RLE over a small raster)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedcache.intake.masks import siim_rle_encode
from embedcache.store import GroupLayout, open_store

#: Mask raster of the planted cohorts: 4 pixels per patch of a 16 x 16 grid.
RASTER = 64


def write_grid_store(
    path: Path, ids: np.ndarray, grid16: np.ndarray, global_: np.ndarray | None = None
) -> str:
    """One encoder group holding ``grid16`` ``(n, h, w, C)``, its 2x2-pooled grid32 and a
    global vector (default: the mean of grid16's tokens); returns the group key."""
    n, h, w, c = grid16.shape
    grid32 = grid16.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4), dtype=np.float32)
    if global_ is None:
        global_ = grid16.mean((1, 2), dtype=np.float32)
    layout = GroupLayout(
        n, global_.shape[1], {16: (h, w, c), 32: (h // 2, w // 2, c)}, str(grid16.dtype), 64
    )
    with open_store(path, "a") as store:
        group = store.create_group("planted", layout, ids, {"encoder": {"preset": "planted"}})
        group.write_rows(
            0,
            {
                "global": global_.astype(grid16.dtype),
                "grid16": grid16,
                "grid32": grid32.astype(grid16.dtype),
            },
        )
        group.mark_done(np.arange(n))
    return "planted"


def planted_tokens(
    folder: Path, n: int = 400, side: int = 16, channels: int = 16, seed: int = 0
) -> tuple[Path, Path, np.ndarray]:
    """A label carried by 2 of ``side**2`` grid tokens, hidden from the mean.

    Every token is noise ``N(0, 1)``; each image's tokens share a random offset ``N(0, 0.5^2)``
    along channel 0 (a global nuisance, larger than what 2 tokens add to the mean); a positive
    image has two random tokens raised by 5 along channel 0. The manifest marks those tokens
    as a mask (``lesion``, SIIM RLE over a 64 x 64 raster, 4 pixels a patch). Returns
    ``(store, manifest, labels)``.
    """
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(n, side * side, channels)).astype(np.float32)
    label = (rng.random(n) < 0.5).astype(int)
    tokens[:, :, 0] += 0.5 * rng.normal(size=(n, 1))
    masks = np.zeros((n, side, side), bool)
    for i in np.flatnonzero(label):
        where = rng.choice(side * side, 2, replace=False)
        tokens[i, where, 0] += 5.0
        masks[i].reshape(-1)[where] = True
    grid = tokens.reshape(n, side, side, channels).astype(np.float16)
    ids = np.array([f"img{i:04d}" for i in range(n)])
    store = folder / "tokens.zarr"
    write_grid_store(store, ids, grid)
    scale = RASTER // side
    rle = [siim_rle_encode(np.kron(m, np.ones((scale, scale), bool))) for m in masks]
    manifest = folder / "tokens.csv"
    pd.DataFrame(
        {
            "image_id": ids,
            "path": [f"{i}.png" for i in ids],
            "patient_id": [f"p{i:04d}" for i in range(n)],
            "finding": label,
            "lesion": rle,
        }
    ).to_csv(manifest, index=False)
    return store, manifest, label


def planted_vectors(folder: Path, kind: str, n: int = 600, seed: int = 0) -> tuple[Path, Path]:
    """Global vectors with a planted label the linear probe cannot read.

    ``xor``: 8 standard normal features, the label is ``x0 > 0`` XOR ``x1 > 0``.
    ``clusters``: 8 clusters on a circle in the first two features (plus 6 noise features),
    alternately positive and negative: each cluster is pure, no direction separates them.
    Returns ``(store, manifest)`` with label column ``finding``.
    """
    from test_probes_features import write_manifest, write_store

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8))
    if kind == "xor":
        label = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)
    elif kind == "clusters":
        cluster = rng.integers(0, 8, n)
        angle = 2 * np.pi * cluster / 8
        X[:, :2] = 4 * np.column_stack([np.cos(angle), np.sin(angle)]) + 0.4 * X[:, :2]
        label = cluster % 2
    else:
        raise ValueError(kind)
    ids = np.array([f"v{i:04d}" for i in range(n)])
    store = folder / f"{kind}.zarr"
    write_store(store, ids, X.astype(np.float32))
    manifest = write_manifest(
        folder / f"{kind}.csv", ids, [f"p{i}" for i in range(n)], finding=label
    )
    return store, manifest
