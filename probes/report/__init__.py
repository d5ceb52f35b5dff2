"""``probes report``: one Markdown and one self-contained HTML report over runs.

::

    probes report runs/rad-dino runs/dinov2 runs/rad-dino-seg --out report/

From Python (runs or their folders)::

    files = probes.report([run_a, "runs/dinov2"], "report/")

Modules: ``runs`` (read run folders), ``tables`` (fold statistics, bootstrap CIs),
``compare`` (which runs are comparable, paired and rank tests), ``figures`` (matplotlib
Figures), ``overlays`` (segmentation cases), ``sections`` / ``build`` (the document),
``render`` (Markdown and HTML), ``api`` (:func:`report`). See docs/report.md.
"""

from probes._lazy import lazy_exports, make_callable

__all__ = ["ReportFiles", "Run", "RunFolderError", "build_report", "load_run", "load_runs"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ReportFiles": ".build",
        "build_report": ".build",
        "Run": ".runs",
        "RunFolderError": ".runs",
        "load_run": ".runs",
        "load_runs": ".runs",
    },
)


def _report(*args, **kwargs):
    """``probes.report(...)``: :func:`probes.report.api.report`."""
    from probes.report.api import report

    return report(*args, **kwargs)


make_callable(__name__, _report)
