"""Grounding of classification probes: do their per-patch maps point at the lesion?

For each test image with a non-empty mask (SIIM-ACR pneumothorax, a phantom's ``ptx_mask``) and
each patch map of a probe (:mod:`probes.core.patchmaps`):

- **pointing game**: a hit when the top-scoring patch overlaps the mask (its coverage > 0: with
  patches of 14-32 input pixels, the "within 15 pixels" tolerance of Zhang et al.'s pointing
  game is about one patch);
- **patch AUROC**: the AUROC of the patch scores against the patches' mask coverage, each patch
  counting as positive with weight ``coverage`` and as negative with weight ``1 - coverage``.
  That is the pixel-level AUROC of the score map upsampled nearest-neighbour to the mask's
  raster, with no threshold on the coverage; NaN when the mask covers no patch or every patch.

Coverage is the fraction of each patch under the mask, the mask brought to the encoder's input
geometry (as the segmentation probe does) at ``subsample`` x the grid resolution::

    coverage = mask_coverage(fs, "ptx_rle", (h, w), rows=test_rows)      # (n, h, w) in [0, 1]
    table = grounding_table(maps, dict(zip(fs.ids[test_rows], coverage)))
    grounding_summary(table)        # per label x map: pointing-game rate, mean patch AUROC, CIs
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from probes.core.bootstrap import clustered_mean_ci, weighted_metrics
from probes.core.patchmaps import maps_array
from probes.core.sizes import parse_size

__all__ = [
    "GROUNDING",
    "ground_maps",
    "grounding_extras",
    "grounding_summary",
    "grounding_table",
    "mask_coverage",
    "patch_auroc",
    "pointing_hit",
]

#: The per-image grounding table's file name in a run folder.
GROUNDING = "grounding.csv"
#: Mask pixels per patch side when measuring coverage (4: coverage in steps of 1/16).
SUBSAMPLE = 4


def mask_coverage(
    features: Any,
    column: str,
    grid_shape: tuple[int, int],
    *,
    rows: Sequence[int] | np.ndarray | None = None,
    kind: str = "auto",
    image_size: tuple[int, int] | None = None,
    height_column: str | None = None,
    width_column: str | None = None,
    subsample: int = SUBSAMPLE,
) -> np.ndarray:
    """``(n, h, w)`` float32 fraction of each patch under the mask, for FeatureSet positions
    ``rows`` (default all), the masks of ``column`` aligned with the encoder's input as the
    segmentation probe aligns them (the store group's preprocessing)."""
    from probes.segmentation.masks import MaskSource

    h, w = (int(v) for v in grid_shape)
    attrs = features.group.attrs
    geometry = (attrs.get("encoder") or attrs.get("key_material") or {}).get("preprocessing")
    source = MaskSource(
        features.manifest,
        column,
        table=features.table,
        kind=kind,  # type: ignore[arg-type]
        image_size=image_size,
        height_column=height_column,
        width_column=width_column,
    )
    packed = source.load((h * subsample, w * subsample), index=rows, preprocessing=geometry)
    masks = packed.take(np.arange(len(packed))).astype(np.float32)
    return masks.reshape(len(masks), h, subsample, w, subsample).mean(axis=(2, 4))


def pointing_hit(score: np.ndarray, coverage: np.ndarray) -> bool:
    """Whether the top patch of ``score`` ``(h, w)`` (the first one on ties) overlaps the
    mask (``coverage`` ``(h, w)`` > 0)."""
    return bool(np.asarray(coverage).reshape(-1)[int(np.argmax(score))] > 0)


def patch_auroc(score: np.ndarray, coverage: np.ndarray) -> float:
    """AUROC of patch scores against patch mask coverage (coverage-weighted positives,
    ``1 - coverage``-weighted negatives; ties count half); NaN without both kinds."""
    s = np.asarray(score, np.float64).reshape(-1)
    c = np.clip(np.asarray(coverage, np.float64).reshape(-1), 0.0, 1.0)
    if not (c > 0).any() or not (c < 1).any():
        return float("nan")
    truth = np.r_[np.ones_like(s), np.zeros_like(s)]
    weights = np.r_[c, 1.0 - c][None]
    return float(weighted_metrics(truth, np.r_[s, s], weights)["auroc"][0])


def grounding_table(maps: pd.DataFrame, coverage: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per image x label x map with a non-empty mask: ``image_id``, ``patient_id``,
    ``round``, ``label``, ``map``, ``mask_fraction`` (of the grid), ``pointing_hit`` (0/1),
    ``patch_auroc``.

    Args:
        maps: a patch-map table (:func:`probes.core.patchmaps.maps_frame` rows).
        coverage: image id -> ``(h, w)`` coverage (:func:`mask_coverage`); images missing or
            with an empty mask are not scored.
    """
    rows = []
    for (label, kind), part in maps.groupby(["label", "map"], sort=True):
        values = maps_array(part)
        for record, score in zip(part.itertuples(index=False), values, strict=True):
            cover = coverage.get(str(record.image_id))
            if cover is None or not (cover > 0).any():
                continue
            rows.append(
                {
                    "image_id": record.image_id,
                    "patient_id": record.patient_id,
                    "round": int(record.round),
                    "label": label,
                    "map": kind,
                    "mask_fraction": float(cover.mean()),
                    "pointing_hit": int(pointing_hit(score, cover)),
                    "patch_auroc": patch_auroc(score, cover),
                }
            )
    columns = ["image_id", "patient_id", "round", "label", "map", "mask_fraction"]
    return pd.DataFrame(rows, columns=[*columns, "pointing_hit", "patch_auroc"])


def grounding_summary(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per label x map: images scored, pointing-game hit rate and mean patch AUROC, each with a
    95% bootstrap CI over patients (:func:`probes.core.bootstrap.clustered_mean_ci`), test rows
    of all rounds pooled."""
    rows = []
    for (label, kind), part in table.groupby(["label", "map"], sort=True):
        patients = part["patient_id"].astype(str).to_numpy()
        hits = part["pointing_hit"].to_numpy(float)
        auroc = part["patch_auroc"].to_numpy(float)
        scored = np.isfinite(auroc)
        row: dict[str, Any] = {"label": label, "map": kind, "images": len(part)}
        row["pointing_game"] = float(hits.mean()) if len(hits) else float("nan")
        low, high = _ci(hits, patients, n_boot, seed)
        row.update(pointing_game_ci_low=low, pointing_game_ci_high=high)
        row["patch_auroc"] = float(auroc[scored].mean()) if scored.any() else float("nan")
        low, high = _ci(auroc[scored], patients[scored], n_boot, seed)
        row.update(patch_auroc_ci_low=low, patch_auroc_ci_high=high)
        rows.append(row)
    return pd.DataFrame(rows)


def _ci(values: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    if not len(values) or n_boot < 1:
        return float("nan"), float("nan")
    return clustered_mean_ci(values, patients, n_boot=n_boot, seed=seed)


def ground_maps(
    features: Any,
    maps: pd.DataFrame,
    column: str,
    *,
    kind: str = "auto",
    image_size: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """:func:`grounding_table` of a patch-map table against mask ``column`` of the
    FeatureSet ``features`` (coverage measured once per image)."""
    ids = pd.unique(maps["image_id"].astype(str))
    position = pd.Index(np.asarray(features.ids, dtype=str)).get_indexer(ids)
    if (position < 0).any():
        raise ValueError(f"patch maps of images not in the features: {ids[position < 0][:5]}")
    shape = (int(maps["height"].iat[0]), int(maps["width"].iat[0]))
    cover = mask_coverage(features, column, shape, rows=position, kind=kind, image_size=image_size)
    return grounding_table(maps, dict(zip(ids, cover, strict=True)))


def grounding_extras(
    features: Any, maps: pd.DataFrame, options: Mapping[str, Any]
) -> dict[str, pd.DataFrame]:
    """A run's extras from its patch maps: ``patch_maps.parquet``, and ``grounding.csv`` when
    ``options`` name a ``grounding_mask`` column (read as ``mask_format``, RLE rasters of
    ``image_size`` ``N``/``HxW`` when given)."""
    from probes.core.patchmaps import PATCH_MAPS

    extras = {PATCH_MAPS: maps}
    column = options.get("grounding_mask")
    if column:
        extras[GROUNDING] = ground_maps(
            features,
            maps,
            str(column),
            kind=str(options.get("mask_format") or "auto"),
            image_size=parse_size(options.get("image_size"), "image_size"),
        )
    return extras
