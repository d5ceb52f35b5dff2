"""``numpy`` backend: our L-BFGS path (probes.linear.backends.path) with numpy/scipy BLAS on the CPU.

The fastest CPU choice measured here (benchmarks/probe_linear.py): float32 products, one BLAS
thread (LinearProbe's ``blas_threads``), and one preconditioner for every C and label.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from probes.linear.backends.path import (
    VALUE_NOISE,
    PathResult,
    Preconditioner,
    label_paths,
    sketch_rows,
)


class NumpyObjective:
    """Logistic loss of labels ``y`` (n,) on standardised ``X`` (n, d), see path.py."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        self.X = X
        self.y = np.asarray(y, dtype=np.float64)
        self.n, self.d = X.shape
        self.value_noise = VALUE_NOISE[X.dtype.name]

    def value_grad(self, w: np.ndarray, b: float) -> tuple[float, np.ndarray, float, float]:
        X, y = self.X, self.y
        z = (X @ w.astype(X.dtype, copy=False)).astype(np.float64) + b
        value = float(np.mean(np.logaddexp(0.0, z) - y * z))
        p = expit(z)
        r = p - y
        grad_w = (X.T @ r.astype(X.dtype)).astype(np.float64) / self.n
        return value, grad_w, float(r.mean()), float(np.mean(p * (1.0 - p)))


def preconditioner(X: np.ndarray) -> Preconditioner:
    """Spectral model of ``X'X / n`` from a row sketch, in ``X``'s dtype (see path.py)."""
    sketch = X[sketch_rows(*X.shape)]
    return Preconditioner.from_gram((sketch.T @ sketch) / X.dtype.type(len(sketch)))


def fit_paths(
    X: np.ndarray,
    Y: np.ndarray,
    Cs: np.ndarray,
    *,
    dtype: str = "float32",
    device: str | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    precondition: bool = True,
) -> list[PathResult]:
    """One regularisation path per label column.

    Args:
        X: ``(n, d)`` standardised features. Y: ``(n, k)`` labels in {0, 1}.
        Cs: ``(m,)`` C values. dtype: ``float32`` or ``float64`` for the products.
        device: must be ``None`` or ``cpu``.
    """
    if device not in (None, "cpu"):
        raise ValueError(f"backend 'numpy' runs on the CPU only, not {device!r}; use 'torch'")
    X = np.ascontiguousarray(X, dtype=np.dtype(dtype))
    pre = preconditioner(X) if precondition else None
    return label_paths(
        lambda y: NumpyObjective(X, y), Y, Cs, tol=tol, max_iter=max_iter, preconditioner=pre
    )
