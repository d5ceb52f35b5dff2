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

From compact targets (uint8 masks; what the probe's training stream makes) the loss at the mask
resolution is tiled (:func:`_partial_tiled`): per image the low-resolution logit map is
upsampled by two small products with the interpolation matrices one row tile at a time, the
tile's loss and gradient are taken while it is in cache (one sigmoid per pixel; logarithms of
products of 64), and the gradient is pulled back to the grid by the transposed products. No
full-resolution tensor of a minibatch exists: at 512 x 512 masks that was most of the epoch
(issue 12).

Used when: CPU, two classes, one grid, no Dice term. Everything else takes autograd.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["TILED_MIN_PIXELS", "fused_binary_scores", "fused_binary_step", "softplus"]

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
            output resolution: per-pixel ``sign`` (1 - 2y) and class ``weight``, and ``counts``;
            or with ``compact=True``, the uint8 ``mask`` and the ``class_weights`` (tiled path).
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


def _partial(head, grid, targets, w, b, lo: int, hi: int):
    """(weight gradient, bias gradient, NLL) of rows ``lo..hi``, unscaled."""
    if "mask" in targets:
        return _partial_tiled(head, grid, targets, w, b, lo, hi)
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


#: Mask pixels per tile of the full-resolution loss (256 rows of a 512-wide mask: each of the
#: five float32 temporaries is 512 KB; smaller tiles lose more to per-op overhead than cache).
TILE_PIXELS = 1 << 17

#: Mask size (pixels) from which the probe's training takes the tiled path (compact targets):
#: measured per step at 32x32 grids, 1 ms an image at 512x512 vs 2 ms; at 256x256 (the
#: crossover) equal; at 128x128 the full-map path is 10-20% faster.
TILED_MIN_PIXELS = 1 << 16

#: Pixels per partial product of the NLL's logarithms (0.5 ** 64 is still a normal float32).
_PRODUCT = 64


def _partial_tiled(head, grid, targets, w, b, lo: int, hi: int):
    """:func:`_partial` from compact targets (a uint8 ``mask``), the loss and its gradient at
    the mask resolution computed one row tile at a time while the tile is in cache.

    Per image, the logit differences at the mask resolution are ``A z B^T`` (``A``, ``B`` the
    bilinear interpolation matrices, ``z`` the ``(h, w)`` low-resolution map): ``z B^T`` once,
    then each row tile ``A[rows, band] (z B^T)[band]`` (``band``: the few columns of ``A``
    nonzero in those rows), its loss and gradient ``G`` taken, and ``A[rows, band]^T G`` added
    up; the gradient at the grid resolution is then ``(A^T G) B``. No full-resolution tensor of
    a whole minibatch exists. Per pixel (label ``y``, class weight ``c``, ``t = (1 - 2y) d``,
    ``s = sigmoid(t)``): loss ``c softplus(t) = c relu(t) - c log(max(s, 1 - s))`` and gradient
    ``c (1 - 2y) s``: one transcendental per pixel, as the logarithms are taken of products
    of 64 factors in [1/2, 1] (exact to float32 rounding of the products, a relative error of
    about 64 ulp on a term of 64 pixels' loss)."""
    w0, w1 = (float(v) for v in targets["class_weights"])
    mask = targets["mask"]
    grad_w = torch.zeros(len(w))
    grad_b = torch.zeros((), dtype=torch.float64)
    nll = torch.zeros((), dtype=torch.float64)
    out_h, out_w = mask.shape[1:]
    tiles = _row_tiles(head, out_h, out_w)
    # the tile's temporaries, allocated once (fresh large tensors cost page faults)
    buffers = torch.empty(5, tiles[0][1] - tiles[0][0], out_w)
    if head.upsample:
        bt = head.out_cols.T.contiguous()  # (w, W)
    for start, k, part, z in _forward_groups(head, grid, w, b, lo, hi, upsample=False):
        grad_lo = torch.empty_like(z)  # (k, h, w)
        for j in range(k):
            y_img = mask[start + j]
            if head.upsample:
                zb = torch.matmul(z[j], bt)  # (h, W): the columns upsampled
                ag = torch.zeros_like(zb)  # A^T G, accumulated over the row tiles
            for r0, r1, c0, c1, a_tile in tiles:
                d, sign, t, s, q = buffers[:, : r1 - r0]
                if head.upsample:  # the rows: A's band of nonzero columns (bilinear: 2 a row)
                    torch.matmul(a_tile, zb[c0:c1], out=d)
                else:
                    d = z[j, r0:r1]
                sign.copy_(y_img[r0:r1])
                if w0 != w1:
                    sw = torch.mul(sign, -(w0 + w1)).add_(w0)  # weight * (1 - 2y), y in {0, 1}
                sign.mul_(-2.0).add_(1.0)
                torch.sigmoid(torch.mul(d, sign, out=t), out=s)
                if w0 != w1:
                    nll += _rowsum(torch.mul(d, sw, out=t).clamp_(min=0))  # relu(weight * t)
                else:
                    nll += w0 * _rowsum(t.clamp_(min=0))
                torch.minimum(s, torch.neg(s, out=q).add_(1.0), out=q)  # 1 - sigmoid(|t|)
                nll -= w0 * _logprod(torch.neg(q, out=t).add_(1.0))
                if w0 != w1:  # 1 - y q, y = (1 - sign) / 2
                    nll -= (w1 - w0) * _logprod(sign.sub_(1.0).mul_(-0.5).mul_(q).neg_().add_(1.0))
                    g = s.mul_(sw)  # d loss / d d = weight * sign * s
                else:
                    g = s.mul_(sign).mul_(w0)
                if head.upsample:
                    ag[c0:c1].addmm_(a_tile.T, g)
                else:
                    grad_lo[j, r0:r1] = g
            if head.upsample:
                torch.matmul(ag, head.out_cols, out=grad_lo[j])  # (A^T G) B
        grad_w.addmv_(part.T, grad_lo.reshape(-1))
        grad_b += grad_lo.sum(dtype=torch.float64)
    return grad_w, grad_b, nll


def _row_tiles(head, out_h: int, out_w: int) -> list[tuple]:
    """Row tiles ``(r0, r1, c0, c1, A[r0:r1, c0:c1])`` of the mask: ``c0:c1`` the band of
    columns of the row interpolation matrix ``A`` that are nonzero in the tile's rows (the
    other terms of the products are exact zeros)."""
    rows = max(1, min(out_h, TILE_PIXELS // out_w))
    tiles = []
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        if not head.upsample:
            tiles.append((r0, r1, 0, 0, None))
            continue
        nonzero = head.out_rows[r0:r1].abs().sum(0).nonzero()
        c0, c1 = int(nonzero.min()), int(nonzero.max()) + 1
        tiles.append((r0, r1, c0, c1, head.out_rows[r0:r1, c0:c1].contiguous()))
    return tiles


def _rowsum(x: torch.Tensor) -> torch.Tensor:
    """Float64 sum of ``x`` in a fixed order (partial float32 sums of fixed runs): the same bits
    whatever the thread count."""
    x = x.reshape(-1)
    n = len(x) - len(x) % _PRODUCT
    total = x[:n].view(-1, _PRODUCT).sum(1).sum(dtype=torch.float64)
    return total + x[n:].sum(dtype=torch.float64) if n < len(x) else total


def _logprod(m: torch.Tensor) -> torch.Tensor:
    """``sum(log(m))`` for ``m`` in [1/2, 1], as float64: logarithms of products of 64."""
    m = m.reshape(-1)
    n = len(m) - len(m) % _PRODUCT
    total = torch.log(m[:n].view(-1, _PRODUCT).prod(1)).sum(dtype=torch.float64)
    return total + torch.log(m[n:]).sum(dtype=torch.float64) if n < len(m) else total


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
