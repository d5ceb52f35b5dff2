"""The attentive probe's model: learned-query attention pooling over grid tokens, then a linear
classifier, with its gradient written out.

For an image with tokens ``x_p`` (``P = h * w`` of them, ``C`` channels, standardised per
channel: ``x~ = (x - mean) * scale``) and ``Q`` learned queries::

    a_pq = softmax_p(x~_p . u_q)             attention of query q over the patches
    r_q  = sum_p a_pq x~_p                    the pooled vector of query q      (C,)
    z    = sum_q w_q . r_q + b                the logit

This is single-layer cross-attention with linear keys and values and a linear classifier: a key
projection ``W_k`` and a query ``q`` only ever meet as the product ``W_k q``, and a value
projection followed by a linear classifier is one linear map, so ``u_q`` and ``w_q`` (``C``
each) are the whole model, without loss of generality. The rewrite makes it cheap: with
``M = [scale * u, scale * w]`` ``(C, 2Q)`` on the raw tokens, one product ``S = X M``
``(P, 2Q)`` per image gives everything (computed as ``M^T X^T``: on CPU the thin products
are an order of magnitude faster with the long dimension last) (the mean shifts every attention logit of a query
equally, so softmax ignores it; for the values it is a constant folded into the bias), and the
gradient is one more product ``X^T G``. Per image and query, with ``t_p = S_p,Q+q`` and
``dz`` the loss gradient of the logit::

    dL/dS_p,q     = dz * a_pq * (t_p - sum_p' a_p'q t_p')       (through the softmax)
    dL/dS_p,Q+q   = dz * a_pq

Patch maps come from the same product: the attention ``a_pq`` (mean over queries) and each
patch's contribution to the logit ``c_p = sum_q a_pq w_q . x~_p`` (``sum_p c_p = z - b``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AttentionPool", "patch_contributions", "pool_gradient", "pool_outputs"]

#: Initial scale of queries and classifier weights: an attention logit (and a token's value)
#: starts with a standard deviation of INIT_STD over standardised tokens.
INIT_STD = 0.5


class AttentionPool(nn.Module):
    """Queries ``u`` ``(Q, C)``, classifier ``w`` ``(Q, C)`` and bias on standardised tokens;
    the standardisation (``mean``, ``scale`` ``(C,)``) is held as buffers.

    Initialisation (seeded by ``generator``): small random queries, so attention starts close
    to uniform (the probe starts as a linear probe on the mean-pooled grid) while the queries
    differ; zero classifier and bias.
    """

    def __init__(self, channels: int, n_queries: int, generator: torch.Generator):
        super().__init__()
        std = INIT_STD / math.sqrt(channels)
        self.queries = nn.Parameter(torch.randn(n_queries, channels, generator=generator) * std)
        self.weight = nn.Parameter(torch.randn(n_queries, channels, generator=generator) * std)
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))

    @property
    def n_queries(self) -> int:
        return len(self.queries)

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``M^T`` ``(2Q, C)`` on raw tokens (attention rows, then value rows) and the logit's
        bias with the standardisation folded in (differentiable in the parameters)."""
        u = self.queries * self.scale
        w = self.weight * self.scale
        bias = self.bias - (w @ self.mean).sum()
        return torch.cat([u, w]), bias

    def value_offsets(self) -> torch.Tensor:
        """``(Q,)`` ``mean . (scale * w_q)``: what the value columns of ``S`` carry beyond the
        standardised tokens' contributions."""
        return (self.weight * self.scale) @ self.mean


def pool_outputs(
    S: torch.Tensor, bias: torch.Tensor, n_queries: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From ``S`` ``(2Q, B, P)`` (query-major: the layout whose products run fast on CPU):
    logits ``(B,)``, attention ``(Q, B, P)`` and values ``t`` ``(Q, B, P)``."""
    attention = torch.softmax(S[:n_queries], dim=2)
    values = S[n_queries:]
    logits = (attention * values).sum(dim=(0, 2)) + bias
    return logits, attention, values


def pool_gradient(attention: torch.Tensor, values: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """``dL/dS`` ``(2Q, B, P)`` for logit gradients ``dz`` ``(B,)`` (see the module)."""
    pooled = (attention * values).sum(dim=2, keepdim=True)  # (Q, B, 1)
    scale = dz[None, :, None] * attention
    return torch.cat([scale * (values - pooled), scale], dim=0)


def patch_contributions(
    attention: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """``(B, P)`` each patch's contribution to the logit, ``sum_q a_pq (t_pq - offset_q)``."""
    return (attention * (values - offsets[:, None, None])).sum(dim=0)
