"""Provenance shared by the store (extraction) and the probes' run records."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

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


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit checked out in the git working tree that holds ``path``, or None.

    ``path`` defaults to this package's own source folder, so the answer is the commit of the
    code that is running. None when that folder is not in a git working tree, when the source
    file is not tracked there (an installed copy inside someone else's repository), or when
    git is not available. Uncommitted edits are not detected: the commit is the base they sit on.
    """
    here = Path(__file__).resolve()
    folder = Path(path).resolve() if path is not None else here.parent
    if path is None and _git(folder, "ls-files", "--error-unmatch", "--", here.name) is None:
        return None
    commit = _git(folder, "rev-parse", "--verify", "--quiet", "HEAD")
    return commit if commit and _COMMIT.fullmatch(commit) else None


_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # SHA-1 or SHA-256 object names


def _git(folder: Path, *args: str) -> str | None:
    """stdout of ``git -C folder args`` (stripped), or None on any failure."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
