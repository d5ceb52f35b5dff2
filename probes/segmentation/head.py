"""The segmentation probe's model: a 1x1 convolution per grid plus bilinear upsampling.

Kept apart from the estimator (:mod:`probes.segmentation.probe`) so the arithmetic can be read and
tested on its own: interpolation as explicit matrices, and a CPU linear layer that converts
float16 grids to float32 one cache-sized chunk at a time.

Standardisation ``(x - mean) * scale`` is folded into the weights (bias ``-(W * scale) @ mean``)
only on the CPU float32 path, where it saves a pass over memory-bound data. Everywhere else (CUDA,
autocast, fine-tuning) the features are standardised in float32 first: under bf16 autocast the
folded form multiplies raw features (channel means up to ~100 sd in ViT grids) in bf16 and then
subtracts a large bias, which loses whole logits (mean error 1.7 at |mean|/sd = 100, C = 768).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1-D linear interpolation, exactly as ``F.interpolate``."""
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)  # n_in unit signals
    out = F.interpolate(eye, size=n_out, mode="linear", align_corners=align_corners)
    return out[0].T.contiguous().float()


class _ChunkedLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` for ``x`` ``(P, C)`` in its storage dtype (float16 or float32) on
    CPU, converted to float32 one cache-sized chunk at a time; the backward pass converts the
    chunks again instead of keeping a float32 copy.

    On CPU the probe is bound by memory bandwidth: the batch crosses memory twice in its storage
    dtype (forward, weight gradient) and is never copied whole. With one output row (the binary
    logit difference) the products are matrix-vector products, which stream at memory speed
    where a GEMM with two output columns does not.
    """

    @staticmethod
    def _chunks(x: torch.Tensor, chunk: int) -> Iterator[tuple[slice, torch.Tensor]]:
        scratch = None if x.dtype == torch.float32 else torch.empty(min(chunk, len(x)), x.shape[1])
        for start in range(0, len(x), chunk):
            part = x[start : start + chunk]
            if scratch is not None:
                part = scratch[: len(part)].copy_(part)
            yield slice(start, start + len(part)), part

    @staticmethod
    def forward(ctx, x, weight, bias, chunk):  # type: ignore[override]
        out = torch.empty(len(weight), len(x))
        for rows, part in _ChunkedLinear._chunks(x, chunk):
            for k in range(len(weight)):
                torch.mv(part, weight[k], out=out[k, rows])
        ctx.save_for_backward(x, weight)
        ctx.chunk = chunk
        return out.T + bias

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_t = grad.T.contiguous()
        grad_weight = torch.zeros_like(weight)
        for rows, part in _ChunkedLinear._chunks(x, ctx.chunk):
            for k in range(len(weight)):
                grad_weight[k].addmv_(part.T, grad_t[k, rows])
        return None, grad_weight, grad.sum(0), None


#: Pixels per chunk of :class:`_ChunkedLinear` (1024 x 768 float32 = 3 MB, cache-sized).
CHUNK_PIXELS = 1024


class _LinearGridHead(nn.Module):
    """1x1 convolution on each grid (summed at the first grid's size) + bilinear upsampling.

    Returns scores at the mask resolution: for two classes the logit difference
    ``z1 - z0`` ``(B, 1, H, W)`` (softmax over two logits depends on nothing else, and one
    output row halves the work); for more classes the logits ``(B, K, H, W)``.
    """

    def __init__(self, shapes, n_classes, out_shape, align_corners, generator):
        super().__init__()
        channels = [s[2] for s in shapes]
        bound = 1.0 / np.sqrt(sum(channels))  # nn.Conv2d's default init over the concatenation
        self.weight = nn.ParameterList(
            nn.Parameter((torch.rand(n_classes, c, generator=generator) * 2 - 1) * bound)
            for c in channels
        )
        self.bias = nn.Parameter((torch.rand(n_classes, generator=generator) * 2 - 1) * bound)
        self.binary = n_classes == 2
        for g, c in enumerate(channels):
            self.register_buffer(f"mean{g}", torch.zeros(c))
            self.register_buffer(f"scale{g}", torch.ones(c))
        base_h, base_w = shapes[0][:2]
        self.n_grids = len(channels)
        for g, (h, w, _) in enumerate(shapes[1:], start=1):
            self.register_buffer(f"rows{g}", interpolation_matrix(h, base_h, align_corners))
            self.register_buffer(f"cols{g}", interpolation_matrix(w, base_w, align_corners))
        self.upsample = tuple(out_shape) != (base_h, base_w)
        self.register_buffer("out_rows", interpolation_matrix(base_h, out_shape[0], align_corners))
        self.register_buffer("out_cols", interpolation_matrix(base_w, out_shape[1], align_corners))

    def effective(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights ``(K, C)`` and bias of grid ``g`` on raw (unstandardised) features, float32
        even under autocast (the bias is a difference of large terms)."""
        with torch.autocast(self.weight[g].device.type, enabled=False):
            weight = self.weight[g] * getattr(self, f"scale{g}")
            return weight, -(weight @ getattr(self, f"mean{g}"))

    def standardised(self, g: int, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) * scale`` of grid ``g`` in float32, any leading shape ``(..., C)``."""
        with torch.autocast(x.device.type, enabled=False):
            return torch.sub(x.float(), getattr(self, f"mean{g}")).mul_(getattr(self, f"scale{g}"))

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        """``[(B, h, w, C), ...]`` -> scores ``(B, 1 | K, H, W)``, float32 (see the class)."""
        total = None
        for g, x in enumerate(grids):
            # _ChunkedLinear returns no gradient for x: right for cached grids, wrong when the
            # grids come from an encoder being fine-tuned (probes.finetune), which takes F.linear.
            amp = torch.is_autocast_enabled(x.device.type)
            if x.device.type == "cpu" and not x.requires_grad and not amp:
                weight, bias = self.effective(g)  # the fold: exact enough in float32
                if self.binary:
                    weight, bias = weight[1:] - weight[:1], bias[1:] - bias[:1]
                flat = x.reshape(-1, x.shape[-1])
                z = _ChunkedLinear.apply(flat, weight, bias, CHUNK_PIXELS)
                z = z.view(*x.shape[:-1], -1)  # (B, h, w, K')
            else:  # bandwidth is plentiful: standardise in float32, product bf16 under autocast
                weight = self.weight[g]
                if self.binary:
                    weight = weight[1:] - weight[:1]
                z = F.linear(self.standardised(g, x), weight)
            if g:
                rows, cols = getattr(self, f"rows{g}"), getattr(self, f"cols{g}")
                z = torch.einsum("ih,bhwk,jw->bijk", rows.to(z.dtype), z, cols.to(z.dtype))
            total = z if total is None else total + z
        bias = self.bias[1:] - self.bias[:1] if self.binary else self.bias
        with torch.autocast(total.device.type, enabled=False):
            scores = (total.float() + bias).permute(0, 3, 1, 2)
            if self.upsample:
                scores = torch.einsum("ih,bkhw,jw->bkij", self.out_rows, scores, self.out_cols)
        return scores
