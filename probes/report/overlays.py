"""Segmentation cases for the overlay figure: the best and worst test images of a run by Dice,
each read from the manifest, brought to the encoder's input geometry, with its true and
predicted masks on the same field of view.

The predicted masks come from the run's ``pred_rle`` (``probes seg --save-masks``): SIIM RLE at
``mask_size`` over the model input. The true masks are decoded again from the manifest column
the run named, through :class:`probes.segmentation.masks.MaskSource` with the encoder's preprocessing (read
from the store group, as the probe did), so both lie on the model-input raster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from embedcache.geometry import Frame, to_frame
from embedcache.intake.images import read_image
from embedcache.intake.manifest import Manifest
from embedcache.intake.masks import siim_rle_decode
from probes.core.sizes import parse_size
from probes.report.figures import OverlayCase
from probes.report.runs import Run
from probes.segmentation.masks import MaskSource

__all__ = ["extreme_cases", "load_cases", "model_view", "store_preprocessing"]


def extreme_cases(run: Run, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``k`` best and ``k`` worst test rows by Dice (NaN Dice left out; an image tested in
    several rounds counts once, with its first round). Best descending, worst ascending."""
    test = run.test.dropna(subset=["dice"]).drop_duplicates("image_id")
    ordered = test.sort_values(["dice", "image_id"], kind="stable")
    worst = ordered.head(k)
    best = ordered[~ordered["image_id"].isin(worst["image_id"])].tail(k).iloc[::-1]
    return best, worst


def store_preprocessing(run: Run) -> dict[str, Any] | None:
    """The encoder's preprocessing dict: the run's own (a fine-tune records it in run.json),
    else its store group's; None if neither can be read or its geometry is refused
    (:class:`embedcache.geometry.Frame`; then images and masks are shown stretched)."""
    from embedcache.store import open_store

    try:
        found = run.info.get("preprocessing")
        if found is None:
            with open_store(run.info["store"]) as store:
                attrs = store.group(run.encoder).attrs
            found = (attrs.get("encoder") or attrs.get("key_material") or {}).get("preprocessing")
        if found is None:
            return None
        Frame.of(found)
    except Exception:  # a moved, deleted or foreign store: the report still renders, stretched
        return None
    return dict(found)


def load_cases(
    run: Run,
    rows: pd.DataFrame,
    manifest: Manifest,
    preprocessing: dict[str, Any] | None,
) -> tuple[list[OverlayCase], list[str]]:
    """Overlay cases for prediction ``rows`` of ``run``; returns ``(cases, problems)``, one
    problem line per image or mask that could not be read (the case is kept without it, or
    dropped when the image itself is unreadable)."""
    height, width = (int(v) for v in run.info.get("mask_size") or _size(rows))
    positions = pd.Series(np.arange(len(manifest.table)), index=manifest.table["image_id"])
    problems: list[str] = []
    truths = _true_masks(run, rows, manifest, positions, (height, width), preprocessing, problems)
    cases = []
    for (_, row), truth in zip(rows.iterrows(), truths, strict=True):
        image_id = str(row["image_id"])
        try:
            image = read_image(manifest.table["path"].iat[positions[image_id]])
        except (KeyError, OSError, ValueError) as exc:
            problems.append(f"{image_id}: image not read ({exc})")
            continue
        cases.append(
            OverlayCase(
                image_id=image_id,
                dice=float(row["dice"]),
                image=model_view(image, preprocessing, (height, width)),
                truth=truth,
                predicted=siim_rle_decode(row["pred_rle"], height, width),
            )
        )
    return cases, problems


def _true_masks(run, rows, manifest, positions, size, preprocessing, problems) -> list:
    column = run.info.get("mask")
    try:
        source = MaskSource(manifest, column, kind=run.info.get("mask_kind", "auto"))
        index = positions.loc[rows["image_id"].astype(str)].to_numpy()
        packed = source.load(size, index=index, preprocessing=preprocessing, workers=1)
    except (KeyError, OSError, ValueError) as exc:
        problems.append(f"true masks of column {column!r} not read ({exc}); predictions only")
        return [None] * len(rows)
    return list(packed.take(np.arange(len(packed))))


def model_view(
    image: np.ndarray, preprocessing: dict[str, Any] | None, mask_size: tuple[int, int]
) -> np.ndarray:
    """The image on the model-input raster, ``(S, S)`` (the encoder's own resize/crop/pad, from
    :mod:`embedcache.geometry`, the mapping the masks take), or stretched to a multiple of the
    masks' size when the preprocessing is unknown. Sampled at up to 4x4 points per output pixel
    and averaged, so a large X-ray is shown smoothly yet on exactly the masks' pixels."""
    if preprocessing:
        side = int(Frame.of(preprocessing).input_size)
        size = (side, side)
    else:
        h, w = mask_size
        scale = max(1, round(256 / max(h, w)))
        size = (h * scale, w * scale)
    k = int(min(4, max(1, -(-max(image.shape) // max(size)))))  # points per pixel and axis
    fine = to_frame(np.asarray(image, np.float32), (size[0] * k, size[1] * k), preprocessing)
    view = fine.reshape(size[0], k, size[1], k).mean(axis=(1, 3))
    return np.clip(view, 0.0, 1.0)


def _size(rows: pd.DataFrame) -> tuple[int, int]:
    return parse_size(str(rows["mask_size"].iat[0]), "mask_size")  # type: ignore[return-value]
