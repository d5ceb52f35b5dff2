"""Patch maps of the linear probe on a pooled grid: the fitted probe applied to each patch.

The probe on ``grid16``/``grid32`` is fitted on the mean over patches, so its logit is linear in
that mean: applying its weights to each patch gives per-patch logits whose mean is the image's
logit, the natural score map of a linear probe (a patch's evidence for the label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from probes.core.patchmaps import maps_frame

__all__ = ["ROWS_PER_READ", "linear_patch_maps"]

#: Grid rows read at once (bounds memory: 256 x 37 x 37 x 768 float32 = 1 GB at most).
ROWS_PER_READ = 256


def linear_patch_maps(
    features: Any, split: Any, models: Mapping[int, Any], labels: Sequence[str]
) -> pd.DataFrame:
    """The patch-map table (map ``score``: per-patch logits) of every round's test rows.

    Args:
        features: the FeatureSet the probe read (a grid: ``grid16``/``grid32``).
        split: its split. models: round -> the round's fitted probe (``coef_`` ``(k, C)``,
            ``intercept_`` ``(k,)`` on raw features). labels: the ``k`` label names.
    """
    frames = []
    ids, patients = np.asarray(features.ids, str), np.asarray(features.patient_ids, str)
    for r in split:
        model = models[r.index]
        coef = np.asarray(model.coef_, np.float32)
        intercept = np.asarray(model.intercept_, np.float32).reshape(-1)
        rows = np.asarray(r.test)
        maps = []
        for start in range(0, len(rows), ROWS_PER_READ):
            grids = features.load(rows[start : start + ROWS_PER_READ])  # (b, h, w, C)
            maps.append(grids @ coef.T + intercept)  # (b, h, w, k)
        if not maps:
            continue
        logits = np.concatenate(maps)
        for j, label in enumerate(labels):
            frames.append(
                maps_frame(
                    ids[rows],
                    patients[rows],
                    logits[..., j],
                    round_index=r.index,
                    label=label,
                    kind="score",
                )
            )
    return pd.concat(frames, ignore_index=True)
