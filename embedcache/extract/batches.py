"""What the DataLoader workers do: read and resize images, in a fixed batch plan.

Batches never cross a shard boundary and are cut from the rows still pending in each shard.
After an interruption only whole shards are redone, so a resumed run feeds the encoder exactly
the batches an uninterrupted run would, and its store is bitwise identical (batch composition
can change the last bits of a CPU matmul).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from embedcache.intake.images import ImageReadError, read_image


def plan_batches(pending: np.ndarray, rows_per_shard: int, batch_size: int) -> list[list[int]]:
    """Cut the pending rows into batches of at most ``batch_size`` that stay inside one shard.

    Args:
        pending: sorted row indices still to extract.
        rows_per_shard: shard length of the store.
        batch_size: largest batch.
    """
    batches: list[list[int]] = []
    if len(pending) == 0:
        return batches
    shard_of = np.asarray(pending) // rows_per_shard
    cuts = np.flatnonzero(np.diff(shard_of)) + 1
    for shard_rows in np.split(np.asarray(pending), cuts):
        for start in range(0, len(shard_rows), batch_size):
            batches.append(shard_rows[start : start + batch_size].tolist())
    return batches


class CohortImages(Dataset):
    """Row index -> ``(row, pixels (1, S, S) | None, error | None)``.

    An unreadable image is returned as its reason instead of raising, so the main process can
    stop with the image's id and path, or record a skip, without losing the batch.
    """

    def __init__(self, paths: Sequence[str], prepare: Callable[[np.ndarray], torch.Tensor]):
        self.paths = list(paths)
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = read_image(self.paths[row])
        except ImageReadError as err:
            return row, None, err.reason
        return row, self.prepare(image), None


@dataclass
class Batch:
    """A collated batch: readable rows with their pixels, and unreadable rows with reasons."""

    rows: list[int]
    pixels: torch.Tensor | None  # (b, 1, S, S) float32 in [0, 1]
    failed: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        """This batch with its pixels in page-locked memory. The DataLoader's pin-memory
        thread calls it (it pins only tensors, mappings, sequences and objects with this
        method), so that ``.to(device, non_blocking=True)`` is truly asynchronous."""
        if self.pixels is None:
            return self
        return Batch(self.rows, self.pixels.pin_memory(), self.failed)


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    good = [(row, px) for row, px, err in items if err is None]
    failed = [(row, err) for row, _, err in items if err is not None]
    pixels = torch.stack([px for _, px in good]) if good else None
    return Batch([row for row, _ in good], pixels, failed)
