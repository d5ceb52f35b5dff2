"""Run folders as the report reads them: :meth:`probes.Run.open` for each, with names made
unique for the report's tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from probes.core.run import CLASSIFICATION, SEGMENTATION, Run, RunFolderError, TaskKind

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "Run",
    "RunFolderError",
    "Task",
    "load_run",
    "load_runs",
    "unique_names",
]

Task = TaskKind


def load_run(folder: str | os.PathLike, name: str | None = None) -> Run:
    """Read one run folder (:meth:`Run.open`)."""
    return Run.open(folder, name)


def load_runs(folders: Sequence[str | os.PathLike]) -> list[Run]:
    """Read run folders, named by folder name; clashing names take parent folders until
    unique (``a/out``, ``b/out``). The same folder twice is an error."""
    paths = [Path(f).resolve() for f in folders]
    if not paths:
        raise RunFolderError("no run folders given")
    seen: set[Path] = set()
    for given, path in zip(folders, paths, strict=True):
        if path in seen:
            raise RunFolderError(f"{given}: the same run folder is given twice")
        seen.add(path)
    return [Run.open(f, n) for f, n in zip(folders, unique_names(paths), strict=True)]


def unique_names(paths: list[Path]) -> list[str]:
    """Folder names, with parent folders added until they are unique (``a/out``, ``b/out``)."""
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return names
        depth += 1
