"""``probes.report(runs, out)``: the report of runs given as :class:`~probes.core.run.Run`
objects or run folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from probes.core.run import Run
from probes.report.build import ReportFiles, build_report
from probes.report.runs import load_runs, unique_names

__all__ = ["report"]


def report(
    runs: Sequence[Run | str | os.PathLike], out: str | os.PathLike, **options: Any
) -> ReportFiles:
    """Write ``report.md``, ``report.html``, ``figures/`` and ``tables/`` into ``out``.

    Args:
        runs: runs (in memory or written) and/or run folders.
        options: :func:`probes.report.build.build_report`'s (``manifest``, ``subgroups``,
            ``size_column``, ``size_bins``, ``title``, ``n_boot``, ``seed``, ``overlays``,
            ``prevalence``).
    """
    from pathlib import Path

    folders = [r for r in runs if not isinstance(r, Run)]
    loaded = iter(load_runs(folders)) if folders else iter(())
    resolved = [r if isinstance(r, Run) else next(loaded) for r in runs]
    in_memory = [r for r in resolved if not r.name]
    if in_memory:
        names = unique_names([Path(r.path or f"run-{i}") for i, r in enumerate(in_memory)])
        for run, name in zip(in_memory, names, strict=True):
            run.name = name
    return build_report(resolved, out, **options)
