"""The per-pixel loop of the segmentation probe's full-resolution loss, compiled by numba.

Why by hand: at the encoder's input resolution (512 x 512 masks from 32 x 32 grids) the probe's
CPU epoch is spent on pixels, not features. Written as torch operations, the upsampling, the
loss and its gradient took ten passes over each tile of pixels, each a separate operation that
costs ~6 us to dispatch and hands the GIL between the two compute threads: the epoch cost
5-6x a read of its grids (issue 12). Here one loop per row does all of it while the row is in
registers, vectorised across the columns, and releases the GIL. No library offers this fused
loss: torch.compile's code measured 0.63 ms an image (512 x 512) after an 18 s compile; this
loop 0.26 ms after a 1.5 s compile (then cached on disk: ~0.4 s to load in a new process).

One piece is written out that a library would normally give: ``exp``. numba calls the C
library's scalar ``exp`` unless Intel's SVML is installed, which stops the loop vectorising (a
scalar sigmoid alone cost 0.72 ms an image, torch's SIMD one 0.12). :func:`_exp_parts` is the
Cephes ``expf`` (range reduction by ln 2, a degree-5 polynomial: ~1 ulp), split in two loops
so the power of two can be built from its bits.

Conventions (float32 unless said): a row interpolation is given per output row ``r`` as two
input rows ``lo[r]``, ``hi[r]`` and their weights ``weights[r] = (a0, a1)`` (bilinear: every
output row mixes at most two neighbouring input rows); ``zb`` is the low-resolution logit map
already upsampled along the columns, ``(h, W)``. Loops keep per-column accumulators over a band
of :data:`BAND` rows and reduce them per band, so every inner loop is elementwise across the
columns (SIMD) and every sum has a fixed order: the same bits whatever the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Rows whose per-column products are taken before a logarithm: 8 factors in [1/2, 1] per
#: column, then 8 columns (64 factors, >= 2**-64: a normal float32), then up to 8 of those in
#: float64 (>= 2**-512) per logarithm: one logarithm per 512 pixels.
BAND = 8

#: Reassociation (SIMD reductions) and contraction (FMA), but NaN and infinity keep their
#: meaning: a diverging probe still shows as a NaN loss.
_FAST = {"reassoc", "contract", "nsz", "arcp"}

# Cephes expf: exp(x) = 2**n * exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts).
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0, _P1, _P2 = (
    np.float32(1.9875691500e-4),
    np.float32(1.3981999507e-3),
    np.float32(8.3334519073e-3),
)
_P3, _P4, _P5 = (
    np.float32(4.1665795894e-2),
    np.float32(1.6666665459e-1),
    np.float32(5.0000001201e-1),
)
#: exp(x) for x below this is taken as exp(_MIN_X) ~ 1.6e-38 (2**n stays a normal float32).
_MIN_X = np.float32(-87.0)


@njit(nogil=True, cache=True, fastmath=_FAST, error_model="numpy")
def _exp_parts(x, poly, bits):  # pragma: no cover - compiled
    """For ``x <= 0`` (``(W,)``): ``poly = exp(r)`` and ``bits`` the int32 bit pattern of the
    float32 ``2**n``, so that ``exp(x) = poly * bits.view(float32)``."""
    one = np.float32(1.0)
    half = np.float32(0.5)
    for c in range(x.shape[0]):
        v = x[c] if x[c] > _MIN_X else _MIN_X
        n = np.floor(v * _LOG2E + half)
        r = v - n * _LN2_HI - n * _LN2_LO
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        poly[c] = p * r * r + r + one
        bits[c] = (np.int32(n) + np.int32(127)) << np.int32(23)


@njit(nogil=True, cache=True, fastmath=_FAST, error_model="numpy")
def image_nll(zb, mask, lo, hi, weights, w0, w1, grad_rows, scratch, bits):  # pragma: no cover
    """Class-weighted binary cross-entropy of one image at the mask resolution, and its
    gradient pulled back through the row interpolation.

    Args:
        zb: ``(h, W)`` the logit differences upsampled along the columns.
        mask: ``(H, W)`` uint8 labels (0/1).
        lo, hi, weights: the row interpolation (module docstring): ``(H,)``, ``(H,)``,
            ``(H, 2)``; the logit difference of row ``r`` is
            ``d = weights[r, 0] zb[lo[r]] + weights[r, 1] zb[hi[r]]``.
        w0, w1: the class weights (float32).
        grad_rows: ``(h, W)`` zeros on entry: ``A^T G`` on return, ``G = w_y (s - y)`` the
            gradient of the loss with respect to ``d`` (``s = sigmoid(d)``).
        scratch: ``(7, W)`` float32 and ``bits`` ``(W,)`` int32 work rows.

    Returns the loss (float64): ``sum w_y softplus((1 - 2y) d)`` over the image, computed as
    ``w_y relu((1 - 2y) d) - w_y log(sigmoid(|d|))`` (the logarithms of products, see
    :data:`BAND`).
    """
    height = mask.shape[0]
    width = zb.shape[1]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    gap = w1 - w0
    d, poly, relu, prod0, prod1, g = (
        scratch[0],
        scratch[1],
        scratch[2],
        scratch[3],
        scratch[4],
        scratch[5],
    )
    power = bits.view(np.float32)
    total = 0.0
    for b0 in range(0, height, BAND):
        relu[:] = zero
        prod0[:] = one
        prod1[:] = one
        for r in range(b0, min(b0 + BAND, height)):
            a0, a1 = weights[r, 0], weights[r, 1]
            first, second, y_row = zb[lo[r]], zb[hi[r]], mask[r]
            # Loops of few arrays each: with more, LLVM cannot rule out their overlap cheaply
            # and leaves the loop scalar (measured 0.7 ms an image as one loop, 0.1 split).
            for c in range(width):
                d[c] = a0 * first[c] + a1 * second[c]
                g[c] = -abs(d[c])
            _exp_parts(g, poly, bits)  # exp(-|d|) = poly * power
            for c in range(width):
                e = poly[c] * power[c]
                q = one / (one + e)  # sigmoid(|d|)
                poly[c] = q
                g[c] = q if d[c] >= zero else e * q  # sigmoid(d)
            for c in range(width):
                x = d[c]
                y = np.float32(y_row[c])
                weight = w0 + gap * y
                t = x - (y + y) * x  # (1 - 2y) d
                relu[c] += weight * (t + abs(t))  # 2 w_y relu(t), halved below
                g[c] = weight * (g[c] - y)  # w_y (s - y)
            for c in range(width):
                q = poly[c]
                y = np.float32(y_row[c])
                prod0[c] *= q
                prod1[c] *= one - y * (one - q)  # q where y = 1, else 1
            first, second = grad_rows[lo[r]], grad_rows[hi[r]]
            for c in range(width):
                first[c] += a0 * g[c]
            for c in range(width):
                second[c] += a1 * g[c]
        linear = 0.0
        for c in range(width):
            linear += relu[c]
        logs0 = 0.0
        logs1 = 0.0
        for c0 in range(0, width, 8 * BAND):
            part0 = 1.0
            part1 = 1.0
            for c1 in range(c0, min(c0 + 8 * BAND, width), BAND):
                run0 = one
                run1 = one
                for c in range(c1, min(c1 + BAND, width)):
                    run0 *= prod0[c]
                    run1 *= prod1[c]
                part0 *= run0
                part1 *= run1
            logs0 += np.log(part0)
            logs1 += np.log(part1)
        total += 0.5 * linear - w0 * logs0 - gap * logs1
    return total
