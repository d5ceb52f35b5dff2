"""Solvers for the logistic probe's C path, one module per backend, chosen by name.

Every backend takes standardised features and returns one :class:`PathResult` per label column
for the same objective (scikit-learn's L2 logistic regression), so results agree across backends
to the solver tolerance. Heavy libraries (torch, cuML) are imported only when their backend runs.

======== =============================================================================
sklearn  scikit-learn lbfgs, warm-started along C; the reference
numpy    our preconditioned L-BFGS, float32 numpy/scipy BLAS; the fastest CPU choice
torch    the same solver with the data passes in torch, float32/float64, CPU or CUDA
cuml     RAPIDS cuML on the GPU (optional extra)
auto     cuml for GPU-resident data when cuML is installed, torch when CUDA is available,
         else numpy
======== =============================================================================
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from probes.linear.backends.path import PathResult

__all__ = ["BACKENDS", "PathResult", "get_backend", "resolve_backend"]

#: backend name -> module holding ``fit_paths(X, Y, Cs, *, dtype, device, tol, max_iter,
#: precondition) -> list[PathResult]``.
BACKENDS = {
    "sklearn": "probes.linear.backends.sklearn_backend",
    "numpy": "probes.linear.backends.numpy_backend",
    "torch": "probes.linear.backends.torch_backend",
    "cuml": "probes.linear.backends.cuml_backend",
}


def resolve_backend(name: str, *, gpu_data: bool = False, device: str | None = None) -> str:
    """The concrete backend for ``name`` (``auto`` picks as in the module docstring)."""
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
        return name
    if device == "cpu":
        return "numpy"
    if gpu_data and importlib.import_module(BACKENDS["cuml"]).available():
        return "cuml"
    if gpu_data or (device or "").startswith("cuda") or _cuda_available():
        return "torch"
    return "numpy"


def get_backend(name: str) -> Callable[..., list[PathResult]]:
    """``fit_paths`` of a concrete backend."""
    return importlib.import_module(BACKENDS[resolve_backend(name)]).fit_paths


def _cuda_available() -> bool:
    """CUDA through torch; torch is not imported on a machine without an NVIDIA device node."""
    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
