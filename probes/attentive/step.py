"""The attentive probe's minibatch step and forward pass, streamed through cache on CPU.

On CPU the probe is bound by memory traffic, like the segmentation probe: each group of images
is converted float16 -> float32 once into a cache-sized scratch buffer, and its product
``S = X M``, the softmax, the loss, ``dL/dS`` and the weight-gradient product ``X^T dL/dS`` all
run while that buffer is hot (:mod:`probes.attentive.pool` has the algebra); on CPU the
arithmetic between the two products is one compiled loop (:mod:`probes.attentive.kernels`). The
two halves of a minibatch run on two threads (BLAS and the loop release the GIL) and are added
in a fixed order, so the bits do not depend on whether they ran in parallel. On CUDA the batch is converted whole on the
device. The gradient with respect to the parameters is finished by autograd from the gradient
of the effective weights ``M`` (a test compares the whole step with autograd).

Rows come as a ``(B, h, w, C)`` tensor or as a sequence of ``B`` ``(h, w, C)`` tensors (views of
the store's memory-mapped shards: read only here, never copied whole).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from probes.attentive.pool import (
    AttentionPool,
    patch_contributions,
    pool_gradient,
    pool_outputs,
)
from probes.core.torch_runtime import over_halves
from probes.segmentation.loss import softplus

__all__ = ["GROUP_TOKENS", "batch_loss", "batch_outputs", "batch_step"]

#: Tokens per group on CPU: 1024 x 768 float32 = 3 MB, resident in L3 (with two threads, groups
#: of 2048 tokens measured 0.39 ms an image at 4 queries, of 1024 0.31).
GROUP_TOKENS = 1024

Rows = torch.Tensor | Sequence[torch.Tensor]


def batch_step(pool: AttentionPool, rows: Rows, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of a minibatch; its gradient is accumulated into the ``.grad``
    of ``pool``'s parameters (``optimizer.zero_grad`` before, ``step`` after).

    Args:
        rows: ``B`` grids ``(h, w, C)`` (float16 or float32). target: ``(B,)`` float 0/1.
    """
    MT, bias = pool.effective()
    parts = _halves(rows, target, MT.detach(), bias.detach(), pool.n_queries, grad=True)
    grad_m = sum(p[0] for p in parts)
    grad_b = sum(p[1] for p in parts)
    nll = sum(p[2] for p in parts)
    scale = 1.0 / max(len(rows), 1)
    torch.autograd.backward([MT, bias], [grad_m * scale, (grad_b * scale).to(bias.dtype)])
    return (nll * scale).to(torch.float32)


@torch.no_grad()
def batch_loss(pool: AttentionPool, rows: Rows, target: torch.Tensor) -> float:
    """Summed (not averaged) binary cross-entropy of the rows, float64."""
    MT, bias = pool.effective()
    parts = _halves(rows, target, MT, bias, pool.n_queries, grad=False)
    return float(sum(p[2] for p in parts))


@torch.no_grad()
def batch_outputs(
    pool: AttentionPool, rows: Rows
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits ``(B,)``, attention ``(B, P)`` (mean over queries) and patch contributions to the
    logit ``(B, P)``, float32 on the rows' device."""
    MT, bias = pool.effective()
    offsets = pool.value_offsets()
    n = len(rows)
    logits = torch.empty(n, device=MT.device)
    attention = contribution = None
    for start, k, X in _groups(rows, 0, n):
        z, a, t = pool_outputs(_products(MT, X), bias, pool.n_queries)
        if attention is None:
            attention = torch.empty(n, X.shape[1], device=MT.device)
            contribution = torch.empty_like(attention)
        logits[start : start + k] = z
        attention[start : start + k] = a.mean(dim=0)
        contribution[start : start + k] = patch_contributions(a, t, offsets)
    return logits, attention, contribution  # type: ignore[return-value]


def _products(MT: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``S`` ``(2Q, k, P)`` of tokens ``X`` ``(k, P, C)``: ``M^T X^T``, the long dimension
    last (10x faster on CPU than ``X M``, whose output has 2Q columns)."""
    k, tokens, channels = X.shape
    return torch.mm(MT, X.reshape(k * tokens, channels).T).view(len(MT), k, tokens)


def _halves(rows: Rows, target, M, bias, n_queries: int, *, grad: bool):
    cpu = not isinstance(rows, torch.Tensor) or rows.device.type == "cpu"
    return over_halves(
        lambda lo, hi: _partial(rows, target, M, bias, n_queries, lo, hi, grad), len(rows), cpu
    )


def _partial(rows, target, M, bias, n_queries: int, lo: int, hi: int, grad: bool):
    """(dL/dM^T, dL/dbias, NLL) of rows ``lo..hi``, summed over rows (not averaged)."""
    grad_m = torch.zeros_like(M) if grad else None
    grad_b = torch.zeros((), dtype=torch.float64, device=M.device)
    nll = torch.zeros((), dtype=torch.float64, device=M.device)
    compiled = _compiled(M.device)
    for start, k, X in _groups(rows, lo, hi):
        S = _products(M, X)
        if compiled:  # the arithmetic between the products in one compiled loop (no GIL)
            from probes.attentive import kernels  # numba: compiled on first use, cached on disk

            G = torch.empty_like(S)  # (also the attention's scratch without grad)
            y = target[start : start + k].numpy()
            loss, dz = kernels.attention_loss(S.numpy(), float(bias), y, n_queries, grad, G.numpy())
            nll += loss
            if grad:
                grad_m.addmm_(G.reshape(len(G), -1), X.reshape(-1, X.shape[2]))
                grad_b += dz
            continue
        z, a, t = pool_outputs(S, bias, n_queries)
        y = target[start : start + k].to(z.device)
        # the loss of a row is softplus((1 - 2y) z); its derivative in z is sigmoid(z) - y
        nll += softplus((1 - 2 * y) * z).sum(dtype=torch.float64)
        if grad:
            dz = torch.sigmoid(z) - y
            G = pool_gradient(a, t, dz)  # (2Q, k, P)
            grad_m.addmm_(G.reshape(len(G), -1), X.reshape(-1, X.shape[2]))
            grad_b += dz.sum(dtype=torch.float64)
    return grad_m, grad_b, nll


def _compiled(device: torch.device) -> bool:
    """Whether the step's per-token arithmetic takes the compiled CPU loop
    (:mod:`probes.attentive.kernels`); on CUDA it stays torch operations."""
    return device.type == "cpu"


def _groups(rows: Rows, lo: int, hi: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, k, X)`` for groups of rows ``lo..hi``: ``X`` ``(k, P, C)`` float32 (on CPU a
    reused cache-sized buffer, valid until the next group)."""
    if isinstance(rows, torch.Tensor) and rows.device.type != "cpu":
        h, w, c = rows.shape[1:]
        yield lo, hi - lo, rows[lo:hi].reshape(hi - lo, h * w, c).float()
        return
    h, w, c = rows[lo].shape
    tokens = h * w
    per_group = max(1, GROUP_TOKENS // tokens)
    scratch = torch.empty(min(per_group, hi - lo), tokens, c)
    for start in range(lo, hi, per_group):
        k = min(per_group, hi - start)
        X = scratch[:k]
        for j in range(k):  # the only pass over the stored bytes: float16 -> float32, in cache
            X[j].copy_(rows[start + j].reshape(tokens, c))
        yield start, k, X
