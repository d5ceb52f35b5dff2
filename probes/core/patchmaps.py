"""Per-patch maps of classification probes, as a run-folder extra (``patch_maps.parquet``).

A patch map is one number per grid cell of one image: for the linear probe on a pooled grid the
logit of each patch (their mean is the image's logit), for the attentive probe each patch's
contribution to the logit and its attention weight. The table is long, one row per image x
label x map, the map flattened row-major into a list column, so any Parquet reader opens it::

    maps = run.extras["patch_maps.parquet"]
    maps_array(maps[maps["map"] == "score"])          # (n, h, w) float32

Only test rows are kept: each image once per round it was tested in (once, for k-fold).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "MAP_COLUMNS",
    "PATCH_MAPS",
    "maps_array",
    "maps_frame",
]

#: The extra's file name in a run folder.
PATCH_MAPS = "patch_maps.parquet"
MAP_COLUMNS = ("image_id", "patient_id", "round", "label", "map", "height", "width", "values")


def maps_frame(
    ids: np.ndarray,
    patient_ids: np.ndarray,
    maps: np.ndarray,
    *,
    round_index: int,
    label: str,
    kind: str,
) -> pd.DataFrame:
    """Rows of the patch-map table for ``maps`` ``(n, h, w)`` of images ``ids`` ``(n,)``."""
    maps = np.asarray(maps, dtype=np.float32)
    n, h, w = maps.shape
    return pd.DataFrame(
        {
            "image_id": np.asarray(ids, dtype=str),
            "patient_id": np.asarray(patient_ids, dtype=str),
            "round": int(round_index),
            "label": label,
            "map": kind,
            "height": h,
            "width": w,
            "values": list(maps.reshape(n, h * w)),
        },
        columns=list(MAP_COLUMNS),
    )


def maps_array(frame: pd.DataFrame) -> np.ndarray:
    """``(n, h, w)`` float32 maps of ``frame``'s rows (all of one grid shape)."""
    if frame.empty:
        return np.zeros((0, 0, 0), np.float32)
    shapes = frame[["height", "width"]].drop_duplicates()
    if len(shapes) != 1:
        raise ValueError(f"patch maps of several grid shapes: {shapes.values.tolist()}")
    h, w = (int(v) for v in shapes.iloc[0])
    return np.stack([np.asarray(v, np.float32) for v in frame["values"]]).reshape(-1, h, w)
