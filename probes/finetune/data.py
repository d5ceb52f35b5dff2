"""The rows a fine-tune trains on: manifest images through the encoder's own preprocessing, with
their labels or masks, in a seeded order.

Images are decoded and resized by the extractor's own dataset
(:class:`embedcache.extract.batches.CohortImages` with ``Preprocessing.prepare``), so a fine-tune
sees exactly the pixels extraction did. Every epoch's order comes from a
:class:`~torch.utils.data.DistributedSampler` seeded with the run's seed and the epoch number:
one process or many, a resumed run reads the same batches as an uninterrupted one without
keeping any sampler state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from embedcache.extract.batches import Batch, CohortImages, collate
from embedcache.intake.images import ImageReadError
from embedcache.intake.manifest import Manifest
from probes.core.features import FeatureSet, binary_labels


class ManifestRows:
    """A manifest's images as the rows of a fine-tune, in manifest order.

    Shaped like a :class:`probes.core.features.FeatureSet` where the probes' split and
    provenance helpers (:mod:`probes.core.protocol`) read one: ``ids``,
    ``patient_ids``, ``table``, ``manifest``, ``key`` (the encoder key its run records),
    ``feature`` (what the head reads), ``excluded`` (always 0: every image must be readable)
    and :meth:`labels`.
    """

    #: The same column reading as the probes' (errors name the column or the empty rows).
    labels = FeatureSet.labels

    def __init__(self, manifest: Manifest, key: str = "", feature: str = "global"):
        self.manifest = manifest
        self.key = key
        self.feature = feature
        self.table = manifest.table.reset_index(drop=True)
        self.ids = self.table["image_id"].to_numpy(dtype=str)
        if "patient_id" in self.table.columns:
            self.patient_ids = self.table["patient_id"].to_numpy(dtype=str)
        else:  # a cohort without patient ids: every image its own patient (as FeatureSet)
            self.patient_ids = self.ids.copy()
        self.excluded = 0
        self.excluded_reasons: dict[str, str] = {}
        self.paths = list(manifest.paths)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Targets:
    """What the rows are trained to predict.

    Attributes:
        labels: classification: ``(n, k)`` 0/1 float32, manifest order; else ``None``.
        masks: segmentation: :class:`probes.segmentation.masks.PackedMasks` aligned with the rows; else ``None``.
    """

    labels: np.ndarray | None = None
    masks: Any = None

    def take(self, rows: Sequence[int]) -> np.ndarray:
        """``(b, k)`` labels or ``(b, H, W)`` bool masks of ``rows``."""
        if self.labels is not None:
            return self.labels[np.asarray(rows, dtype=np.int64)]
        return self.masks.take(rows)


@dataclass(frozen=True)
class Plan:
    """Where this process's batches come from.

    Attributes:
        world_size, rank: the DDP group (1, 0 without one).
        batch_size: images per batch and process.
        num_workers: DataLoader decode workers (0 decodes in the main process).
        seed: sampler seed (each epoch's permutation is seeded ``seed + epoch``).
    """

    world_size: int = 1
    rank: int = 0
    batch_size: int = 16
    num_workers: int = 0
    seed: int = 0


def _loader(dataset, plan: Plan, sampler) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=plan.batch_size,
        sampler=sampler,
        num_workers=plan.num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=4 if plan.num_workers > 0 else None,
    )


def train_batches(
    images: CohortImages, rows: np.ndarray, plan: Plan, epoch: int
) -> Iterator[Batch]:
    """This process's shuffled batches of ``rows`` for ``epoch`` (every row once per epoch over
    the group; DistributedSampler pads the last few with repeats when ``world_size`` does not
    divide them)."""
    subset = Subset(images, np.asarray(rows, dtype=np.int64).tolist())
    sampler = DistributedSampler(
        subset, num_replicas=plan.world_size, rank=plan.rank, shuffle=True, seed=plan.seed
    )
    sampler.set_epoch(epoch)
    return _checked(_loader(subset, plan, sampler), images)


def eval_batches(images: CohortImages, rows: np.ndarray, plan: Plan) -> Iterator[Batch]:
    """This process's share of ``rows`` (``rows[rank::world_size]``, nothing repeated), in
    order, for validation losses and predictions."""
    mine = np.asarray(rows, dtype=np.int64)[plan.rank :: plan.world_size]
    return _checked(_loader(Subset(images, mine.tolist()), plan, None), images)


def _checked(loader: DataLoader, images: CohortImages) -> Iterator[Batch]:
    """Batches, stopping at the first unreadable image with its path and reason."""
    for batch in loader:
        if batch.failed:
            row, reason = batch.failed[0]
            raise ImageReadError(
                images.paths[row],
                f"{reason} (manifest row {row + 1}); fine-tuning needs every image: fix or remove "
                "it from the manifest",
            )
        yield batch


def cohort_images(rows: ManifestRows, prepare) -> CohortImages:
    """The extractor's dataset over ``rows``' image paths with the encoder's ``prepare``."""
    return CohortImages(rows.paths, prepare)


def default_workers() -> int:
    """Decode workers: leave one core to training, at most as many as extraction
    (:data:`embedcache.extract.runner.MAX_DECODE_WORKERS`)."""
    from embedcache.extract.runner import MAX_DECODE_WORKERS

    return max(0, min(MAX_DECODE_WORKERS, (os.cpu_count() or 1) - 1))


def label_table(rows: ManifestRows, columns: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """``(n, k)`` 0/1 float32 labels (positive = the larger of two values, as the probes) and the
    positive value of each column."""
    labels, positives = binary_labels(rows.labels, columns)
    return labels.astype(np.float32), positives
