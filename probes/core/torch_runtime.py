"""What every probe trained with torch on streamed grids (segmentation, attentive) needs around
its step: the device ``auto`` resolves to, torch's CPU thread count during a fit, and the
minibatch order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["cpu_threads", "minibatches", "resolve_device"]


def resolve_device(device: str | None) -> torch.device:
    """``None``/``auto``: CUDA when present, else the CPU; anything else as torch reads it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` for the block (nothing off the CPU)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def minibatches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Row indices of each minibatch: in order, or shuffled by ``rng``. Sorted within a batch,
    which keeps its composition (the gradient) and reads the store in order."""
    order = np.arange(n) if rng is None else rng.permutation(n)
    return [np.sort(order[i : i + batch_size]) for i in range(0, n, batch_size)]
