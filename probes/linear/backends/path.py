"""The L2 logistic regularisation path, shared by the numpy and torch backends.

Objective for one label, on standardised features ``X`` (n, d) and labels ``y`` in {0, 1}::

    f(w, b) = mean(log(1 + exp(z)) - y * z) + lam / 2 * |w|^2,   z = X w + b,   lam = 1 / (C n)

which is exactly scikit-learn's ``LogisticRegression(C=C)`` objective (intercept unpenalised),
so ``C`` and ``tol`` (inf-norm of the gradient) mean the same in every backend.

Speed comes from four things (benchmarks/probe_linear.py measures them):
- the C values are solved from strong to weak regularisation, each warm-started from the last
  (and starting from the last solution's data term, so a new C costs no extra evaluation);
- L-BFGS runs in coordinates whitened by a spectral model of the Gram matrix ``G = X'X / n``
  (:class:`Preconditioner`): with ``w = P x`` and ``P ~ (c G + lam I)^-1/2`` (``c`` the mean of
  p(1-p) at the warm start) the Hessian in ``x`` is close to the identity, so each C needs a
  handful of iterations even on strongly correlated embeddings, where plain L-BFGS needs
  hundreds. One model per feature matrix serves every C value and every label column;
- the model is cheap: the Gram matrix of a row sketch, its leading eigenpairs by randomised
  subspace iteration, and the rest of the spectrum by its mean;
- the two passes over ``X`` per evaluation run in the backend's dtype (float32 by default).
The solution does not depend on the preconditioner, only the number of iterations does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.linalg

from probes.linear.backends.lbfgs import minimize_lbfgs

#: Extra random directions and subspace iterations of the randomised eigen-decomposition.
OVERSAMPLE = 16
POWER_STEPS = 2
#: Leading eigenpairs modelled exactly when d is larger than twice this (else all of them).
#: 128 was the fastest of 128/256 with 2/4 subspace steps on benchmarks/probe_linear.py.
RANK = 128
#: Relative precision of the objective's value when the data passes run in this dtype.
VALUE_NOISE = {"float32": 2e-6, "float64": 1e-13}


def sketch_rows(n: int, d: int) -> np.ndarray:
    """Rows that estimate the Gram matrix for the preconditioner: ``max(2048, 2 d)`` evenly
    spaced rows (all when fewer). The preconditioner only needs the spectrum's shape; the
    solution does not depend on it (only the iteration count does)."""
    m = max(2048, 2 * d)
    return np.arange(n) if n <= m else np.linspace(0, n - 1, m).astype(np.int64)


class DataObjective(Protocol):
    """The logistic loss of one label on one feature matrix, evaluated by a backend."""

    n: int
    d: int
    value_noise: float

    def value_grad(self, w: np.ndarray, b: float) -> tuple[float, np.ndarray, float, float]:
        """Data term ``mean(log(1 + exp(z)) - y z)``: ``(value, d/dw (d,), d/db, mean p(1-p))``
        at float64 ``w`` (d,) and ``b`` (the L2 term is added by the path)."""
        ...


@dataclass(frozen=True)
class Preconditioner:
    """Spectral model of the standardised Gram matrix ``G = X'X / n``.

    ``G ~ U diag(top) U' + tail (I - U U')``: the leading eigenpairs exactly, the remaining
    spectrum by its mean. With every eigenpair (``U`` square) the model is exact.

    Attributes:
        top: ``(k,)`` leading eigenvalues. vectors: ``(d, k)`` float64 orthonormal columns.
        tail: mean of the other ``d - k`` eigenvalues (unused when ``k == d``).
    """

    top: np.ndarray
    vectors: np.ndarray
    tail: float

    @classmethod
    def from_gram(cls, gram: np.ndarray, rank: int | None = RANK, seed: int = 0) -> Preconditioner:
        """Exact (``rank`` None or >= d/2: LAPACK ``syevd`` in ``gram``'s dtype) or the leading
        ``rank`` eigenpairs by randomised subspace iteration (a few ``d x d x rank`` products,
        several times cheaper than a full decomposition at d = 1024)."""
        d = gram.shape[0]
        if rank is None or 2 * rank >= d:
            values, vectors = scipy.linalg.eigh(gram, driver="evd", check_finite=False)
            return cls(
                np.clip(values, 0.0, None).astype(np.float64), vectors.astype(np.float64), 0.0
            )
        width = min(d, rank + OVERSAMPLE)
        basis = np.random.default_rng(seed).standard_normal((d, width)).astype(gram.dtype)
        for _ in range(POWER_STEPS):
            basis = _orthonormal(gram @ basis)
        small = basis.T @ gram @ basis
        values, rotation = np.linalg.eigh((small + small.T) / 2)
        keep = np.argsort(values)[::-1][:rank]
        top = np.clip(values[keep], 0.0, None).astype(np.float64)
        vectors = (basis @ rotation[:, keep]).astype(np.float64)
        tail = max(float(np.trace(gram)) - float(top.sum()), 0.0) / (d - rank)
        return cls(top, vectors, tail)

    def maps(self, curvature: float, lam: float):
        """``(to_x, from_x, grad_x)`` for Hessian model ``curvature * G + lam I``.

        ``w = P x`` with the symmetric ``P = U diag(a - t) U' + t I``, ``a = (c top + lam)^-1/2``
        and ``t = (c tail + lam)^-1/2``; ``grad_x = P grad_w``. The intercept is scaled by
        ``c^-1/2`` (standardised columns are centred, so it is nearly decoupled).
        """
        U = self.vectors
        a = 1.0 / np.sqrt(curvature * self.top + lam)
        t = 1.0 / np.sqrt(curvature * self.tail + lam)
        root_c = np.sqrt(curvature)

        def apply(v, top_scale, rest_scale):
            return U @ ((top_scale - rest_scale) * (U.T @ v)) + rest_scale * v

        return (
            lambda w, b: np.append(apply(w, 1.0 / a, 1.0 / t), root_c * b),
            lambda x: (apply(x[:-1], a, t), float(x[-1] / root_c)),
            lambda gw, gb: np.append(apply(gw, a, t), gb / root_c),
        )


@dataclass
class PathResult:
    """Solutions along the C path for one label (standardised feature space).

    Attributes:
        Cs: ``(m,)`` in the caller's order. coef: ``(m, d)``. intercept: ``(m,)``.
        n_iter: ``(m,)`` L-BFGS iterations. converged: ``(m,)`` bool.
    """

    Cs: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray


def logistic_path(
    objective: DataObjective,
    Cs: np.ndarray,
    y_mean: float,
    *,
    tol: float,
    max_iter: int,
    preconditioner: Preconditioner | None = None,
) -> PathResult:
    """Solve the objective for every C, from the smallest C up, each warm-started.

    Args:
        objective: the backend's loss for one label.
        Cs: ``(m,)`` positive inverse regularisation strengths, any order.
        y_mean: fraction of positive labels (the starting intercept is its logit).
        tol: gradient inf-norm at which a C counts as solved.
        max_iter: most L-BFGS iterations per C.
        preconditioner: whitening eigen-decomposition, or ``None`` for plain coordinates.
    """
    Cs = np.asarray(Cs, dtype=np.float64)
    n, d = objective.n, objective.d
    coef = np.zeros((len(Cs), d))
    intercept = np.zeros(len(Cs))
    n_iter = np.zeros(len(Cs), dtype=np.int64)
    converged = np.zeros(len(Cs), dtype=bool)
    w = np.zeros(d)
    b = float(np.log(y_mean / (1.0 - y_mean)))
    data = objective.value_grad(w, b)  # data term at the current point, reused across C
    for j in np.argsort(Cs, kind="stable"):
        lam = 1.0 / (Cs[j] * n)
        to_x, from_x, grad_x = _coordinates(preconditioner, max(data[3], 1e-4), lam)
        seen: dict[bytes, tuple] = {}

        def total(w_, b_, data_, lam=lam, grad_x=grad_x):
            """Objective, gradient in x and stopping norm from the data term at (w_, b_)."""
            value, gw, gb, _ = data_
            gw = gw + lam * w_
            return value + 0.5 * lam * float(w_ @ w_), grad_x(gw, gb), max(_inf(gw), abs(gb))

        def fun(x, seen=seen, from_x=from_x, total=total):
            w_, b_ = from_x(x)
            data_ = objective.value_grad(w_, b_)
            seen[x.tobytes()] = (w_, b_, data_)
            return total(w_, b_, data_)

        result = minimize_lbfgs(
            fun,
            to_x(w, b),
            first=total(w, b, data),  # the previous solution's data term: no evaluation
            tol=tol,
            max_iter=max_iter,
            value_noise=objective.value_noise,
        )
        w, b, data = seen.get(result.x.tobytes(), (w, b, data))
        coef[j], intercept[j] = w, b
        n_iter[j], converged[j] = result.n_iter, result.converged
    return PathResult(Cs, coef, intercept, n_iter, converged)


def label_paths(
    objective: Callable[[np.ndarray], DataObjective],
    Y: np.ndarray,
    Cs: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    preconditioner: Preconditioner | None = None,
) -> list[PathResult]:
    """One :func:`logistic_path` per column ``y`` of ``Y`` (n, k), on ``objective(y)``; the
    preconditioner (a model of the features, not the labels) serves every column."""
    return [
        logistic_path(
            objective(y),
            Cs,
            float(np.mean(y)),
            tol=tol,
            max_iter=max_iter,
            preconditioner=preconditioner,
        )
        for y in np.asarray(Y).T
    ]


def _inf(v: np.ndarray) -> float:
    return float(np.abs(v).max(initial=0.0))


def _orthonormal(Y: np.ndarray) -> np.ndarray:
    """Orthonormal basis of ``Y``'s columns by Cholesky-QR in float64 (a few times faster than
    Householder QR for tall ``Y``); Householder when ``Y'Y`` is too ill-conditioned."""
    Y64 = Y.astype(np.float64)
    try:
        R = np.linalg.cholesky(Y64.T @ Y64).T
        Q = scipy.linalg.solve_triangular(R, Y64.T, trans="T").T
    except np.linalg.LinAlgError:
        Q = np.linalg.qr(Y64)[0]
    return Q.astype(Y.dtype)


def _coordinates(pre: Preconditioner | None, curvature: float, lam: float):
    """Maps between ``(w, b)`` and the solver's coordinates ``x``, and the gradient map."""
    if pre is None:
        return (
            lambda w, b: np.append(w, b),
            lambda x: (x[:-1], float(x[-1])),
            lambda gw, gb: np.append(gw, gb),
        )
    return pre.maps(curvature, lam)
