"""``torch`` backend: the same L-BFGS path with the data passes in torch, on CPU or CUDA.

The feature matrix lives on the device in float32 or float64; each objective evaluation moves
``d + 1`` numbers each way. The preconditioner's Gram matrix is computed on the device; its
(small) spectral model on the host.
"""

from __future__ import annotations

import numpy as np

from probes.linear.backends.path import (
    VALUE_NOISE,
    PathResult,
    Preconditioner,
    label_paths,
    sketch_rows,
)


def _torch():
    import torch

    return torch


def resolve_device(device: str | None) -> str:
    """``auto``/``None`` -> ``cuda`` when available, else ``cpu``."""
    torch = _torch()
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU")
    return str(device)


class TorchObjective:
    """Logistic loss of labels ``y`` (n,) on a standardised device tensor ``X`` (n, d)."""

    def __init__(self, X, y: np.ndarray, dtype: str):
        torch = _torch()
        self.torch = torch
        self.X = X
        self.y = torch.as_tensor(np.asarray(y, dtype=np.float64), device=X.device)
        self.n, self.d = X.shape
        self.value_noise = VALUE_NOISE[dtype]

    def value_grad(self, w: np.ndarray, b: float) -> tuple[float, np.ndarray, float, float]:
        torch, X, y = self.torch, self.X, self.y
        wt = torch.as_tensor(w, device=X.device).to(X.dtype)
        z = (X @ wt).double() + b
        loss = torch.nn.functional.softplus(z) - y * z
        p = torch.sigmoid(z)
        r = p - y
        grad = (X.T @ r.to(X.dtype)).double()
        stats = torch.stack([loss.mean(), r.mean(), (p * (1.0 - p)).mean()]).cpu().numpy()
        return float(stats[0]), grad.cpu().numpy() / self.n, float(stats[1]), float(stats[2])


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
    """One regularisation path per label column (see numpy_backend.fit_paths).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:1``..., or ``None``/``auto`` (CUDA when available).
    """
    torch = _torch()
    Xt = torch.as_tensor(np.asarray(X), device=resolve_device(device)).to(getattr(torch, dtype))
    pre = None
    if precondition:
        sketch = Xt[torch.as_tensor(sketch_rows(*Xt.shape), device=Xt.device)]
        gram = ((sketch.T @ sketch) / sketch.shape[0]).cpu().numpy()
        pre = Preconditioner.from_gram(gram)
    return label_paths(
        lambda y: TorchObjective(Xt, y, dtype),
        Y,
        Cs,
        tol=tol,
        max_iter=max_iter,
        preconditioner=pre,
    )
