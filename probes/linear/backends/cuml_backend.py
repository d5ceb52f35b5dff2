"""``cuml`` backend: RAPIDS cuML's GPU logistic regression, one fit per C (no warm starts).

Imported only when chosen; the optional extra ``embedcache-probes[gpu]`` installs cuML.
Not exercised by the test suite (no GPU there); the torch backend on CUDA is the tested GPU path.
"""

from __future__ import annotations

import numpy as np

from probes.linear.backends.path import PathResult


def available() -> bool:
    """True when cuML imports and a CUDA device is visible."""
    try:
        import cuml  # noqa: F401
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or a CUDA runtime error without a GPU
        return False


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
    """One path per label column on the GPU; ``precondition`` and ``device`` are ignored.
    ``n_iter`` is -1 (and ``converged`` False) where the cuML release reports no count."""
    try:
        import cupy
        from cuml.linear_model import LogisticRegression
    except ImportError as exc:
        raise ImportError(
            "backend 'cuml' needs RAPIDS cuML and a CUDA GPU (pip install "
            "'embedcache-probes[gpu]'); use backend='torch' (CPU or CUDA) or 'numpy' instead"
        ) from exc
    Xg = cupy.asarray(np.asarray(X, dtype=np.dtype(dtype)))
    Cs = np.asarray(Cs, dtype=np.float64)
    results = []
    for y in np.asarray(Y).T:
        yg = cupy.asarray(np.asarray(y, dtype=np.dtype(dtype)))
        coef = np.zeros((len(Cs), X.shape[1]))
        intercept, n_iter = np.zeros(len(Cs)), np.zeros(len(Cs), dtype=np.int64)
        for j, C in enumerate(Cs):
            model = LogisticRegression(
                penalty="l2", C=float(C), tol=tol, max_iter=max_iter, output_type="numpy"
            )
            model.fit(Xg, yg)
            coef[j] = np.asarray(model.coef_).reshape(-1)
            intercept[j] = float(np.asarray(model.intercept_).reshape(-1)[0])
            n_iter[j] = iterations(model)
        converged = (n_iter >= 0) & (n_iter < max_iter)
        results.append(PathResult(Cs, coef, intercept, n_iter, converged))
    return results


def iterations(model) -> int:
    """Solver iterations of a fitted cuML ``LogisticRegression``: ``n_iter_`` (cuML >= 25.08)
    or its QN solver's ``num_iters`` (earlier releases); -1 when neither exists, which
    :func:`fit_paths` reports as not converged rather than as converged in 0 iterations."""
    value = getattr(model, "n_iter_", None)
    if value is None:
        value = getattr(getattr(model, "solver_model", None), "num_iters", None)
    if value is None:
        return -1
    return int(np.asarray(value).reshape(-1)[0])
