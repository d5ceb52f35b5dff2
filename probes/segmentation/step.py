"""The segmentation probe's training step on CPU for the common case, fused by hand.

Why by hand: on CPU the probe is bound by memory traffic and by the pixels of its masks.
Autograd walks each float16 batch twice (forward, then the weight gradient) and keeps the
upsampled logits, their softplus and their gradient as separate full-size tensors. Here each
group of images is converted to float32 once into a cache-sized scratch buffer, and its
forward product and, after the loss, the weight-gradient product happen while that buffer is
hot. Between them, per image, the low-resolution logit map is upsampled along the columns by one
small product, and one compiled loop (:func:`probes.segmentation.kernels.image_nll`) upsamples
each row, takes its sigmoid, class-weighted loss and gradient, and pulls the gradient back
through the row interpolation while the row is in registers: no full-resolution tensor exists
(at 512 x 512 masks the pixels were most of the epoch, issue 12).

The numbers are autograd's (a test compares loss and gradients); the gradient with respect to
the head's parameters is finished by autograd from the gradient of the effective weights, so
standardisation and the binary logit difference are written once, in
:class:`probes.segmentation.head._LinearGridHead`.

Used when: CPU, two classes, one grid, no Dice term. Everything else takes autograd.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from probes.core.torch_runtime import over_halves

__all__ = ["fused_binary_nll", "fused_binary_scores", "fused_binary_step", "row_pairs"]

#: Images per group: two 32x32x768 grids are 6 MB of float32, resident in L2/L3 caches.
GROUP_PIXELS = 2048


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
        targets: ``loss_targets(masks, 2, class_weights, compact=True)``
            (:func:`probes.segmentation.loss.loss_targets`) of the ``(B, H, W)`` masks at the
            head's output resolution: the uint8 ``mask``, ``class_weights`` and ``counts``.
        class_weights: ``(2,)`` float32, the weights ``targets`` were made with.

    Returns the loss (the weighted mean over pixels, as :func:`probes.segmentation.loss.combine_loss`).
    """
    w_eff, b_eff = _logit_difference(head)
    w, b = w_eff.detach(), b_eff.detach()
    parts = over_halves(lambda lo, hi: _partial(head, grid, targets, w, b, lo, hi), len(grid))
    grad_w = sum(p[0] for p in parts)
    grad_b = sum(p[1] for p in parts)
    nll = sum(p[2] for p in parts)
    total_weight = float(targets["counts"] @ class_weights)
    scale = 1.0 / max(total_weight, 1e-12)
    torch.autograd.backward([w_eff, b_eff], [grad_w * scale, (grad_b * scale).to(b_eff.dtype)])
    return (nll * scale).to(torch.float32)


@torch.no_grad()
def fused_binary_nll(head, grid: torch.Tensor | Sequence[torch.Tensor], targets) -> torch.Tensor:
    """The class-weighted NLL *summed* over the pixels of a minibatch (float64), from the same
    compact targets as :func:`fused_binary_step`, without building the scores at the mask
    resolution (validation at 512 x 512 masks)."""
    w, b = _logit_difference(head)
    parts = over_halves(
        lambda lo, hi: _partial(head, grid, targets, w, b, lo, hi, False), len(grid)
    )
    return sum(p[2] for p in parts)


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


def _forward_groups(head, grid, w, b, lo: int, hi: int, upsample: bool = True):
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
        if upsample and head.upsample:
            z = torch.matmul(torch.matmul(head.out_rows, z), head.out_cols.T)
        yield start, k, part, z


def row_pairs(a: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A linear interpolation matrix ``A`` ``(n_out, n_in)`` as, per output row, the two input
    rows it mixes and their weights: ``lo``, ``hi`` ``(n_out,)`` int64 and ``weights``
    ``(n_out, 2)`` float32, with ``A[r] = weights[r, 0] e_lo[r] + weights[r, 1] e_hi[r]``
    exactly (the form :mod:`probes.segmentation.kernels` takes; bilinear rows have at most two
    nonzeros, neighbours)."""
    matrix = a.double().numpy()
    n_out, n_in = matrix.shape
    rows = np.arange(n_out)
    lo = np.minimum((matrix != 0).argmax(1), max(n_in - 2, 0))
    hi = np.minimum(lo + 1, n_in - 1)
    weights = np.stack([matrix[rows, lo], np.where(hi > lo, matrix[rows, hi], 0.0)], 1)
    rebuilt = np.zeros_like(matrix)
    np.add.at(rebuilt, (rows, lo), weights[:, 0])
    np.add.at(rebuilt, (rows, hi), weights[:, 1])
    if not np.array_equal(rebuilt, matrix):
        bad = int(np.flatnonzero((rebuilt != matrix).any(1))[0])
        raise ValueError(f"row {bad} of the interpolation matrix is not two neighbouring terms")
    return lo, hi, weights.astype(np.float32)


def _row_pairs(head) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`row_pairs` of the head's row upsampling (built once per head)."""
    cached = head.__dict__.get("_row_pairs")
    if cached is None:
        cached = head.__dict__["_row_pairs"] = row_pairs(head.out_rows)
    return cached


def _partial(head, grid, targets, w, b, lo: int, hi: int, grad: bool = True):
    """(weight gradient, bias gradient, NLL) of rows ``lo..hi``, unscaled, from compact targets
    (a uint8 ``mask``): the loss and its gradient at the mask resolution computed row by row in
    registers. Without ``grad``, the gradients are ``None`` (the loop's own pull-back is kept:
    it costs little).

    Per image, the logit differences at the mask resolution are ``A z B^T`` (``A``, ``B`` the
    bilinear interpolation matrices, ``z`` the ``(h, w)`` low-resolution map): ``z B^T`` once
    (a small product), then per row the two-term row interpolation, the sigmoid, the loss and
    its gradient ``G`` pulled back to ``A^T G`` in one loop
    (:func:`probes.segmentation.kernels.image_nll`, which releases the GIL: the two halves of a
    minibatch run on two cores); the gradient at the grid resolution is then ``(A^T G) B``."""
    from probes.segmentation import kernels  # numba: compiled on first use, cached on disk

    w0, w1 = (np.float32(v) for v in targets["class_weights"])
    masks = targets["mask"].numpy()
    out_w = masks.shape[2]
    row_lo, row_hi, row_weights = _row_pairs(head)
    grad_w = torch.zeros(len(w))
    grad_b = torch.zeros((), dtype=torch.float64)
    nll = 0.0
    bt = head.out_cols.T.contiguous()  # (w, W)
    scratch = np.empty((6, out_w), np.float32)
    bits = np.empty(out_w, np.int32)
    for start, k, part, z in _forward_groups(head, grid, w, b, lo, hi, upsample=False):
        grad_lo = torch.empty_like(z)  # (k, h, w)
        for j in range(k):
            zb = torch.matmul(z[j], bt).numpy()  # (h, W): the columns upsampled
            ag = np.zeros_like(zb)  # A^T G
            nll += kernels.image_nll(
                zb, masks[start + j], row_lo, row_hi, row_weights, w0, w1, ag, scratch, bits
            )
            if grad:
                torch.matmul(torch.from_numpy(ag), head.out_cols, out=grad_lo[j])  # (A^T G) B
        if grad:
            grad_w.addmv_(part.T, grad_lo.reshape(-1))
            grad_b += grad_lo.sum(dtype=torch.float64)
    nll = torch.tensor(nll, dtype=torch.float64)
    return (grad_w, grad_b, nll) if grad else (None, None, nll)
