"""``sklearn`` backend: scikit-learn's own lbfgs ``LogisticRegression``, warm-started along C.

The reference implementation the other backends are tested against (same objective, same
meaning of ``C`` and ``tol``).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from probes.linear.backends.path import PathResult


def fit_paths(
    X: np.ndarray,
    Y: np.ndarray,
    Cs: np.ndarray,
    *,
    dtype: str = "float64",
    device: str | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    precondition: bool = True,
) -> list[PathResult]:
    """One path per label column; ``precondition`` is ignored (lbfgs has none)."""
    if device not in (None, "cpu"):
        raise ValueError(f"backend 'sklearn' runs on the CPU only, not {device!r}")
    X = np.asarray(X, dtype=np.dtype(dtype))
    Cs = np.asarray(Cs, dtype=np.float64)
    results = []
    for y in np.asarray(Y).T:
        model = LogisticRegression(tol=tol, max_iter=max_iter, warm_start=True)
        coef = np.zeros((len(Cs), X.shape[1]))
        intercept, n_iter = np.zeros(len(Cs)), np.zeros(len(Cs), dtype=np.int64)
        for j in np.argsort(Cs, kind="stable"):
            model.set_params(C=float(Cs[j]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # reported via converged
                model.fit(X, y)
            coef[j], intercept[j], n_iter[j] = model.coef_[0], model.intercept_[0], model.n_iter_[0]
        results.append(PathResult(Cs, coef, intercept, n_iter, n_iter < max_iter))
    return results
