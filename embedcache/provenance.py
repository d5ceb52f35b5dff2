"""Provenance shared by the store (extraction) and the probes' run records."""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata

_VERSIONED = (
    "embedcache-probes",
    "torch",
    "transformers",
    "timm",
    "open_clip_torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "zarr",
    "h5py",
    "pydicom",
    "pillow",
)


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries that shape the numbers."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions
