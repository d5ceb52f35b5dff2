"""What differs between a classification and a segmentation fine-tune: targets, the strata the
folds are drawn on, the objective, the head's size, the prediction table and the metric tables
(each the matching probe command's own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from probes.core.results import results_table, summary_table
from probes.finetune.config import FinetuneConfig
from probes.finetune.data import ManifestRows, Targets, label_table
from probes.finetune.objectives import ClassificationObjective, SegmentationObjective
from probes.finetune.predict import classification_rows, segmentation_rows


@dataclass
class TaskSetup:
    """What differs between classification and segmentation in a run.

    Attributes:
        targets: labels or masks of every row. strata: what the folds stratify on (as the
            probes: the 0/1 labels, or empty/non-empty masks). objective: loss and metric.
        n_outputs: head outputs. mask_shape: segmentation: ``(H, W)``. feature: what the head
            reads (``global``, the grid choice, or ``segformer-head``).
        table: ``(split, round, parts, best_epoch) -> predictions`` in the probes' schema.
        tables: ``predictions -> (results, summary)``, as the matching probe command.
        fields: the task's own ``run.json`` entries.
    """

    targets: Targets
    strata: np.ndarray
    objective: Any
    n_outputs: int
    mask_shape: tuple[int, int] | None
    feature: str
    table: Callable[..., pd.DataFrame]
    tables: Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]
    fields: dict[str, Any]


def classification(
    rows: ManifestRows, config: FinetuneConfig, *, n_boot, labels, provenance, **_
) -> TaskSetup:
    """Binary ``labels`` columns of ``rows`` (one head output each), BCE, AUROC; prediction
    rows carry ``provenance``; ``n_boot`` bootstrap resamples per round in results.csv."""
    truths, positives = label_table(rows, labels)

    def table(split, r, parts, best_epoch):
        scores = [(name, part, outputs["score"]) for name, part, outputs in parts]
        ids, patients = rows.ids, rows.patient_ids
        return classification_rows(scores, truths, labels, ids, patients, split, r, provenance)

    def tables(predictions):
        results = results_table(predictions, n_boot=n_boot, seed=config.seed)
        return results, summary_table(results)

    return TaskSetup(
        Targets(labels=truths),
        truths.astype(np.int64),
        ClassificationObjective(),
        truths.shape[1],
        None,
        "global",
        table,
        tables,
        {"labels": list(labels), "positive_class": positives},
    )


def segmentation(
    rows: ManifestRows,
    config: FinetuneConfig,
    *,
    n_boot,
    mask,
    provenance,
    masks,
    both_empty,
    kind,
    **_,
) -> TaskSetup:
    """``masks`` (:class:`~probes.segmentation.masks.PackedMasks` of column ``mask``, read as ``kind``, at
    ``config.mask_size``) of ``rows``, two classes, the segmentation probe's loss, Dice;
    ``both_empty`` scores images empty in truth and prediction as ``probes seg`` does."""
    from probes.core.metrics import segmentation_summary
    from probes.segmentation.run import results_by_round

    mask_shape = tuple(config.mask_size)
    area = masks.area()

    def table(split, r, parts, best_epoch):
        ids, patients = rows.ids, rows.patient_ids
        return segmentation_rows(
            parts,
            area,
            mask_shape,
            mask,
            ids,
            patients,
            split,
            r,
            best_epoch,
            provenance,
            both_empty,
        )

    def tables(predictions):
        results = results_by_round(predictions, n_boot=n_boot, seed=config.seed)
        return results, segmentation_summary(predictions)

    return TaskSetup(
        Targets(masks=masks),
        (area > 0).astype(np.int64),
        SegmentationObjective(2, config.class_weights, config.dice_weight),
        2,
        mask_shape,
        provenance.feature,
        table,
        tables,
        {
            "mask": mask,
            "mask_kind": kind,
            "mask_size": list(mask_shape),
            "grid": provenance.feature,
            "both_empty": both_empty,
        },
    )


#: Task name -> the function setting it up (keyword arguments: see each).
TASK_SETUPS: dict[str, Callable[..., TaskSetup]] = {
    "classification": classification,
    "segmentation": segmentation,
}
