"""Per-row predictions of a fine-tuned round, in the probes' own schemas, so that probe and
fine-tune results share one table (``probes report``).

- classification: :data:`probes.core.results.PREDICTION_COLUMNS` (``C`` is NaN: no C was chosen;
  ``feature`` is ``global``), ordered by label, split (val before test) and row, as
  :func:`probes.core.results.cross_predict`;
- segmentation: :data:`probes.segmentation.run.PREDICTION_COLUMNS` (per-image Dice/IoU and
  pixel counts), val before test, as :func:`~probes.segmentation.run.cross_validate_segmentation`.

``probe`` is ``finetune`` on every row; ``params`` holds the fine-tune's settings (both learning
rates among them) as JSON; ``encoder`` the key an extraction of the same weights would have.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from probes.core.calibration import calibrated_scores
from probes.core.results import PREDICTION_COLUMNS as CLASSIFICATION_COLUMNS
from probes.core.results import row_frame
from probes.core.splits import Split
from probes.segmentation.metrics import BothEmpty, segmentation_scores
from probes.segmentation.run import PREDICTION_COLUMNS as SEGMENTATION_COLUMNS

PROBE_NAME = "finetune"


@dataclass(frozen=True)
class Provenance:
    """What every prediction row of a run carries.

    Attributes:
        encoder: the encoder key (or preset name). params: the settings, JSON-able.
        seed: the run's seed. feature: ``global`` (classification) or the grid choice.
    """

    encoder: str
    params: dict[str, Any]
    seed: int
    feature: str

    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)


def classification_rows(
    parts: Sequence[tuple[str, np.ndarray, np.ndarray]],
    truths: np.ndarray,
    label_names: Sequence[str],
    ids: np.ndarray,
    patient_ids: np.ndarray,
    split: Split,
    round_index: int,
    provenance: Provenance,
) -> pd.DataFrame:
    """One row per (image, label) of the round's validation and test sets.

    Args:
        parts: ``(split name, rows, scores (len(rows), k))`` for ``val`` and ``test``.
        truths: ``(n, k)`` 0/1 labels of every row.
    """
    frames = []
    for j, label in enumerate(label_names):
        for part, rows, scores in parts:
            if not len(rows):
                continue
            frames.append(
                row_frame(
                    ids,
                    patient_ids,
                    split.folds,
                    rows,
                    round_index=round_index,
                    split=part,
                    label=label,
                    truth=truths[rows, j].astype(np.int64),
                    score=scores[:, j],
                    C=np.nan,
                )
            )
    table = pd.concat(frames, ignore_index=True)
    table["encoder"], table["feature"], table["probe"] = (
        provenance.encoder,
        provenance.feature,
        PROBE_NAME,
    )
    table["params"], table["seed"] = provenance.params_json(), provenance.seed
    table["score_calibrated"] = calibrated_scores(table)  # the round's val rows, as the probes
    return table[list(CLASSIFICATION_COLUMNS)]


def segmentation_rows(
    parts: Sequence[tuple[str, np.ndarray, dict[str, np.ndarray]]],
    mask_area: np.ndarray,
    mask_shape: tuple[int, int],
    mask_column: str,
    ids: np.ndarray,
    patient_ids: np.ndarray,
    split: Split,
    round_index: int,
    best_epoch: int,
    provenance: Provenance,
    both_empty: BothEmpty = "one",
) -> pd.DataFrame:
    """One row per image of the round's validation and test sets.

    Args:
        parts: ``(split name, rows, {"tp", "fp", "fn"})`` for ``val`` and ``test``.
        mask_area: ``(n,)`` foreground fraction of every row's mask.
    """
    pixels = float(mask_shape[0] * mask_shape[1])
    frames = []
    for part, rows, counts in parts:
        if not len(rows):
            continue
        tp, fp, fn = (counts[k] for k in ("tp", "fp", "fn"))
        frames.append(
            row_frame(
                ids,
                patient_ids,
                split.folds,
                rows,
                round_index=round_index,
                split=part,
                **segmentation_scores(tp, fp, fn, mask_area[rows], pixels, both_empty),
                best_epoch=best_epoch,
            )
        )
        if "pred_rle" in counts:
            frames[-1]["pred_rle"] = counts["pred_rle"]
    table = pd.concat(frames, ignore_index=True)
    table["encoder"], table["grid"], table["mask"] = (
        provenance.encoder,
        provenance.feature,
        mask_column,
    )
    table["mask_size"] = f"{mask_shape[0]}x{mask_shape[1]}"
    table["probe"], table["params"] = PROBE_NAME, provenance.params_json()
    table["seed"] = provenance.seed
    return table[list(SEGMENTATION_COLUMNS) + (["pred_rle"] if "pred_rle" in table else [])]
