"""A small L-BFGS minimiser for smooth convex objectives (the logistic probe's solver).

Why our own and not ``scipy.optimize``: the probe runs L-BFGS in *preconditioned* coordinates
but must stop on the gradient in the *original* coordinates (the same test scikit-learn applies,
so ``tol`` means the same thing in every backend), and it must tolerate objectives computed with
float32 matrix products, whose function values are noisy at the 1e-7 level near the optimum.
The two-loop recursion runs in float64 on the host on ``d + 1`` numbers; only the objective
(two passes over the data) runs on the backend's device.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: ``fun(x) -> (value, gradient wrt x, stopping norm)``; the stopping norm is the inf-norm of
#: the gradient in the caller's original coordinates.
Objective = Callable[[np.ndarray], tuple[float, np.ndarray, float]]

ARMIJO = 1e-4
MAX_BACKTRACKS = 30


@dataclass
class LbfgsResult:
    """Outcome of :func:`minimize_lbfgs`.

    Attributes:
        x: ``(p,)`` solution. value: objective at ``x``. grad_norm: stopping norm at ``x``.
        n_iter: iterations (accepted steps). n_eval: objective evaluations.
        converged: ``grad_norm <= tol`` was reached (False: max_iter or no further progress
            possible at the objective's precision).
    """

    x: np.ndarray
    value: float
    grad_norm: float
    n_iter: int
    n_eval: int
    converged: bool


def minimize_lbfgs(
    fun: Objective,
    x0: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    memory: int = 10,
    value_noise: float = 0.0,
    first: tuple[float, np.ndarray, float] | None = None,
) -> LbfgsResult:
    """Minimise ``fun`` from ``x0`` with L-BFGS and a backtracking Armijo line search.

    Args:
        fun: objective, see :data:`Objective`.
        x0: ``(p,)`` float64 starting point (a warm start along a regularisation path).
        tol: stop when the stopping norm is at most ``tol``.
        max_iter: most iterations.
        memory: correction pairs kept.
        value_noise: relative precision of ``fun``'s value (about 1e-7 for float32 products).
            A step that does not pass the Armijo test but lowers the gradient norm while the
            value rises by less than this noise is accepted, so float32 objectives still
            converge to tight gradient tolerances instead of stalling in the line search.
        first: ``fun(x0)`` when the caller already knows it (a warm start along a path).
    """
    x = np.array(x0, dtype=np.float64)
    f, g, gnorm = fun(x) if first is None else first
    n_eval = int(first is None)
    pairs: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=memory)
    n_iter = 0
    while gnorm > tol and n_iter < max_iter:
        d = _direction(g, pairs)
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (lost curvature information): restart
            pairs.clear()
            d, slope = -g, -float(g @ g)
        step = 1.0 if pairs else min(1.0, 1.0 / max(float(np.abs(g).sum()), 1e-12))
        for _ in range(MAX_BACKTRACKS):
            x_new = x + step * d
            f_new, g_new, gnorm_new = fun(x_new)
            n_eval += 1
            if f_new <= f + ARMIJO * step * slope:
                break
            if f_new - f <= value_noise * (1.0 + abs(f)) and gnorm_new < gnorm:
                break  # within the objective's precision and closer to stationarity
            # minimiser of the quadratic through f, slope and f_new, kept in [0.1, 0.5] * step
            curv = f_new - f - slope * step
            trial = -slope * step * step / (2.0 * curv) if curv > 0 else 0.5 * step
            step = min(max(trial, 0.1 * step), 0.5 * step)
        else:
            break  # no acceptable step: converged as far as the objective's precision allows
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        if sy > 1e-12 * float(y @ y):
            pairs.append((s, y, 1.0 / sy))
        x, f, g, gnorm = x_new, f_new, g_new, gnorm_new
        n_iter += 1
    return LbfgsResult(x, float(f), float(gnorm), n_iter, n_eval, bool(gnorm <= tol))


def _direction(g: np.ndarray, pairs: deque[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """``-H g`` by the two-loop recursion, ``H0 = (s'y / y'y) I`` from the newest pair."""
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * float(s @ q)
        q -= a * y
        alphas.append(a)
    if pairs:
        s, y, _ = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
        q += (a - rho * float(y @ q)) * s
    return -q
