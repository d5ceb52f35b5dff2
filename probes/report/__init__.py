"""``probes report``: one Markdown and one self-contained HTML report over run folders.

::

    probes report runs/rad-dino runs/dinov2 runs/rad-dino-seg --out report/

From Python::

    from probes.report import build_report, load_runs
    files = build_report(load_runs(["runs/rad-dino", "runs/dinov2"]), "report/")

Modules: ``runs`` (read run folders), ``tables`` (fold statistics, bootstrap CIs),
``compare`` (which runs are comparable, paired and rank tests), ``figures`` (matplotlib
Figures), ``overlays`` (segmentation cases), ``sections`` / ``build`` (the document),
``render`` (Markdown and HTML), ``cli``. See docs/report.md.
"""

from probes.report.build import ReportFiles, build_report
from probes.report.runs import Run, RunFolderError, load_run, load_runs

__all__ = ["ReportFiles", "Run", "RunFolderError", "build_report", "load_run", "load_runs"]
