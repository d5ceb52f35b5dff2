"""The attentive probe's per-token arithmetic between its two products, compiled by numba.

Why by hand: between ``S = M^T X^T`` and ``X^T G`` (:mod:`probes.attentive.step`) each group of
images needs the softmax over its tokens, the pooled logit, the loss and ``dL/dS``
(:mod:`probes.attentive.pool` has the algebra). As torch operations that is ~20 small operations
a group, each ~6 us to dispatch and each handing the GIL between the two compute threads: 25-30%
of the CPU epoch (measured 0.07-0.10 ms an image of 1,024 tokens). Here it is one loop that
releases the GIL. The products stay with BLAS. CUDA keeps the torch operations.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, error_model="numpy")
def attention_loss(S, bias, target, n_queries, grad, G):  # pragma: no cover - compiled
    """Binary cross-entropy of attention-pooled logits, and its gradient with respect to ``S``.

    Args:
        S: ``(2Q, k, P)`` float32: per query the attention logits (rows ``:Q``) and the values
            (rows ``Q:``) of ``k`` images of ``P`` tokens.
        bias: the logit's bias (float). target: ``(k,)`` float32 labels 0/1.
        grad: whether to write ``G``.
        G: ``(2Q, k, P)`` float32, on return (with ``grad``) ``dL/dS`` of the *summed* loss:
            ``dz a (t - pooled)`` for the attention rows, ``dz a`` for the value rows.

    Returns the summed loss ``sum_i softplus((1 - 2 y_i) z_i)`` and the summed logit gradient
    ``sum_i dz_i`` (the bias's), float64; ``z_i = sum_q sum_p a_pq t_pq + bias``, ``a`` the
    softmax of the attention logits over the tokens (float64 sums), ``dz = sigmoid(z) - y``.
    """
    q_count = n_queries
    k, tokens = S.shape[1], S.shape[2]
    pooled = np.empty(q_count)
    total = 0.0
    dz_total = 0.0
    for i in range(k):
        z = bias
        for q in range(q_count):
            logits, values, weights = S[q, i], S[q_count + q, i], G[q_count + q, i]
            top = logits[0]
            for p in range(1, tokens):
                top = max(top, logits[p])
            norm = 0.0
            for p in range(tokens):
                e = np.exp(np.float64(logits[p] - top))
                weights[p] = e
                norm += e
            value = 0.0
            for p in range(tokens):
                weights[p] = weights[p] / norm  # the attention a_pq
                value += np.float64(weights[p]) * values[p]
            pooled[q] = value
            z += value
        y = np.float64(target[i])
        t = z - 2.0 * y * z  # (1 - 2y) z
        total += max(t, 0.0) + np.log1p(np.exp(-abs(t)))
        if grad:
            dz = 1.0 / (1.0 + np.exp(-z)) - y
            dz_total += dz
            for q in range(q_count):
                values, attention, shifted = S[q_count + q, i], G[q_count + q, i], G[q, i]
                for p in range(tokens):
                    a = dz * attention[p]
                    shifted[p] = a * (values[p] - pooled[q])
                    attention[p] = a
    return total, dz_total
