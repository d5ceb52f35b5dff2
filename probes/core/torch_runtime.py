"""What every probe trained with torch on streamed grids (segmentation, attentive) needs around
its step: the device ``auto`` resolves to, torch's CPU thread count during a fit, the
minibatch order, and the two halves of a minibatch on two cores."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

__all__ = ["cpu_threads", "minibatches", "over_halves", "resolve_device"]

T = TypeVar("T")


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


def over_halves(work: Callable[[int, int], T], n: int, split: bool = True) -> list[T]:
    """``[work(lo, hi)]`` over the two halves of ``n`` rows (one call over all of them without
    ``split``, e.g. on CUDA), the halves on two threads when this process may use two cores:
    the hand-fused CPU steps' BLAS products, torch ops and numba loops release the GIL. The
    caller adds the parts in this fixed order, so the bits do not depend on whether the halves
    ran at once."""
    halves = [(0, (n + 1) // 2), ((n + 1) // 2, n)] if split else [(0, n)]
    halves = [(lo, hi) for lo, hi in halves if hi > lo]
    if len(halves) == 2 and _two_cores():
        return list(_pool().map(lambda half: work(*half), halves))
    return [work(lo, hi) for lo, hi in halves]


_POOL: ThreadPoolExecutor | None = None


def _two_cores() -> bool:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) >= 2


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe-step")
    return _POOL
