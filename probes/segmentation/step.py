"""The segmentation probe's training step on CPU for the common case, fused by hand.

Why by hand: on CPU the probe is bound by memory traffic, and autograd walks each float16 batch
twice (forward, then the weight gradient) and keeps the upsampled logits, their softplus and
their gradient as separate full-size tensors. Here each group of images is converted to float32
once into a cache-sized scratch buffer, and its forward product, its loss, the gradient at the
mask resolution, the transposed upsampling and the weight-gradient product all happen while
that buffer is hot. The numbers are autograd's (a test compares loss and gradients); the
gradient with respect to the head's parameters is finished by autograd from the gradient of
the effective weights, so standardisation and the binary logit difference are written once,
in :class:`probes.segmentation.head._LinearGridHead`.

Used when: CPU, two classes, one grid, no Dice term. Everything else takes autograd.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["fused_binary_scores", "fused_binary_step", "softplus"]

#: Images per group: two 32x32x768 grids are 6 MB of float32, resident in L2/L3 caches.
GROUP_PIXELS = 2048


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(x))`` as ``max(x, 0) - log(sigmoid(|x|))``: exact to float32 rounding,
    several times faster on CPU than ``F.softplus``/``log1p(exp(-|x|))``, whose ``exp`` of
    large negative values produces denormals (measured 6 ms vs 1.6 ms for 32 x 128 x 128)."""
    return x.clamp(min=0) - torch.log(torch.sigmoid(x.abs()))


def fused_binary_step(
    head,
    grid: torch.Tensor | Sequence[torch.Tensor],
    targets: dict[str, torch.Tensor],
    class_weights: torch.Tensor,
) -> torch.Tensor:
    """Class-weighted cross-entropy of one minibatch and its gradient, accumulated into the
    ``.grad`` of ``head``'s parameters (call ``optimizer.zero_grad`` before, ``step`` after).

    Args:
        head: a binary, one-grid :class:`~probes.segmentation.head._LinearGridHead`.
        grid: ``(B, h, w, C)`` float16 or float32 grid rows on CPU, or a sequence of ``B``
            ``(h, w, C)`` rows (e.g. views of memory-mapped store shards: read only here).
        targets: :func:`probes.segmentation.loss.loss_targets` of the ``(B, H, W)`` masks at the head's
            output resolution: per-pixel ``sign`` (1 - 2y) and class ``weight``, and ``counts``.
        class_weights: ``(2,)`` float32, the weights ``targets`` were made with.

    Returns the loss (the weighted mean over pixels, as :func:`probes.segmentation.loss.combine_loss`).
    """
    w_eff, b_eff = _logit_difference(head)
    w, b = w_eff.detach(), b_eff.detach()
    n = len(grid)
    # Two halves of the minibatch, each summed on its own and added in a fixed order: the
    # same bits whether the halves run one after the other or on two cores at once.
    halves = [(0, (n + 1) // 2), ((n + 1) // 2, n)]
    jobs = [(head, grid, targets, w, b, lo, hi) for lo, hi in halves if hi > lo]
    if _parallel() and len(jobs) == 2:
        parts = list(_pool().map(lambda job: _partial(*job), jobs))
    else:
        parts = [_partial(*job) for job in jobs]
    grad_w = sum(p[0] for p in parts)
    grad_b = sum(p[1] for p in parts)
    nll = sum(p[2] for p in parts)
    total_weight = float(targets["counts"] @ class_weights)
    scale = 1.0 / max(total_weight, 1e-12)
    torch.autograd.backward([w_eff, b_eff], [grad_w * scale, (grad_b * scale).to(b_eff.dtype)])
    return (nll * scale).to(torch.float32)


@torch.no_grad()
def fused_binary_scores(head, grid: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``head([grid])`` for a binary one-grid head on CPU: ``(B, 1, H, W)`` logit differences,
    each row converted to float32 once in cache (rows may be views of the store's shards, so
    validation and prediction copy no minibatch either)."""
    w, b = _logit_difference(head)
    out = torch.empty(len(grid), 1, len(head.out_rows), len(head.out_cols))
    for start, k, _, d in _forward_groups(head, grid, w, b, 0, len(grid)):
        out[start : start + k, 0] = d
    return out


def _logit_difference(head) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(C,)`` and bias of the logit difference ``z1 - z0`` on raw grid features
    (standardisation folded in; differentiable in the head's parameters)."""
    weight, bias = head.effective(0)
    return weight[1] - weight[0], bias[1] - bias[0] + head.bias[1] - head.bias[0]


def _forward_groups(head, grid, w, b, lo: int, hi: int):
    """For each group of rows ``lo..hi``: ``(start, k, part, d)``, where ``part`` is the group
    converted to float32 (``(k * h * w, C)``, a reused cache-sized buffer, valid until the next
    group) and ``d`` its logit differences at the mask resolution ``(k, H, W)``."""
    h, wd, c = grid[lo].shape
    per_group = max(1, GROUP_PIXELS // (h * wd))
    scratch = torch.empty(min(per_group, hi - lo) * h * wd, c)
    for start in range(lo, hi, per_group):
        k = min(per_group, hi - start)
        part = scratch[: k * h * wd]
        for j in range(k):  # the only pass over the stored bytes: float16 -> float32, in cache
            part[j * h * wd : (j + 1) * h * wd].copy_(grid[start + j].reshape(h * wd, c))
        z = torch.mv(part, w).add_(b).view(k, h, wd)
        if head.upsample:
            z = torch.matmul(torch.matmul(head.out_rows, z), head.out_cols.T)
        yield start, k, part, z


def _partial(head, grid, targets, w, b, lo: int, hi: int):
    """(weight gradient, bias gradient, NLL) of rows ``lo..hi``, unscaled."""
    grad_w = torch.zeros(len(w))
    grad_b = torch.zeros((), dtype=torch.float64)
    nll = torch.zeros((), dtype=torch.float64)
    for start, k, part, d in _forward_groups(head, grid, w, b, lo, hi):
        sign = targets["sign"][start : start + k]
        pixel_weight = targets["weight"][start : start + k]
        t = d * sign  # the loss of a pixel is weight * softplus(t)
        # (a float64 sum, not BLAS dot: the same bits whatever the thread count)
        nll += softplus(t).mul_(pixel_weight).sum(dtype=torch.float64)
        # d loss / d d = weight * sign * sigmoid(t)
        grad_d = torch.sigmoid(t).mul_(sign).mul_(pixel_weight)
        if head.upsample:  # the transposed upsampling
            grad_d = torch.matmul(torch.matmul(head.out_rows.T, grad_d), head.out_cols)
        grad_w.addmv_(part.T, grad_d.reshape(-1))
        grad_b += grad_d.sum(dtype=torch.float64)
    return grad_w, grad_b, nll


_POOL: ThreadPoolExecutor | None = None


def _parallel() -> bool:
    """Two compute threads when this process may use two cores (torch ops release the GIL)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) >= 2


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seg-step")
    return _POOL
