"""Assemble a report from run folders and write it: ``report.md``, ``report.html``,
``figures/*.png`` and ``tables/*.csv`` under one folder.

::

    from probes.report import build_report, load_runs
    files = build_report(load_runs(["runs/rad-dino", "runs/dinov2"]), "report/")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embedcache.intake.manifest import Manifest, load_manifest
from probes.report.budgets import budget_sections, full_budget_view
from probes.report.calibration import calibration_sections, report_prevalence
from probes.report.figures import overlay_figure, subgroup_figure
from probes.report.grounding import grounding_section, has_maps
from probes.report.overlays import extreme_cases, load_cases, store_preprocessing
from probes.report.render import Section, Table, Text, render_html, render_markdown
from probes.report.runs import CLASSIFICATION, Run
from probes.report.sections import (
    TASK_TITLES,
    Sink,
    comparison_sections,
    metric_sections,
    provenance_section,
    runs_section,
)
from probes.report.tables import format_ci

__all__ = ["ReportFiles", "build_report", "overlay_section", "subgroup_sections"]


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`build_report` wrote."""

    markdown: Path
    html: Path
    figures: list[Path]
    tables: list[Path]


def build_report(
    runs: Sequence[Run],
    out: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    subgroups: Sequence[str] = (),
    size_column: str | None = None,
    size_bins: int = 3,
    title: str | None = None,
    n_boot: int = 1000,
    seed: int = 5656,
    overlays: int = 3,
    prevalence: float | None = None,
    command: Sequence[str] | None = None,
) -> ReportFiles:
    """Write the report of ``runs`` into folder ``out``.

    Args:
        runs: loaded run folders (:func:`probes.report.load_runs`).
        manifest: the metadata table for subgroups and the images for overlays; default: each
            run's own manifest (run.json).
        subgroups: manifest columns to split test images by (chest_tube, sex, ...).
        size_column: a numeric manifest column (lesion size) cut into ``size_bins`` quantile
            bins among positives.
        n_boot: bootstrap resamples for CIs and paired tests. seed: their seed.
        overlays: best and worst cases per segmentation run with saved masks (0: none), and
            the number of images in each run's patch-map figure (at least 1).
        prevalence: the decision curves' prevalence (default: the runs' own ``--prevalence``
            when they agree, else each run's test rows').
        command: the report's own command line, for the provenance block.
    """
    if not runs:
        raise ValueError("no runs to report")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    sink = Sink(folder)
    manifests = _Manifests(manifest)
    views = [full_budget_view(run) for run in runs]  # budgeted runs: their largest budget
    sections: list[Section] = [runs_section(runs, sink)]
    sections += metric_sections(views, sink, n_boot=n_boot, seed=seed)
    sections += calibration_sections(views, sink, prevalence=report_prevalence(runs, prevalence))
    sections += budget_sections(runs, sink, n_boot=n_boot, seed=seed)
    sections += comparison_sections(views, sink, n_boot=n_boot, seed=seed)
    if subgroups or size_column:
        sections += subgroup_sections(
            views, sink, manifests, list(subgroups), size_column, size_bins, n_boot, seed
        )
    if overlays > 0 and any(run.has_masks for run in views):
        sections.append(overlay_section(views, sink, manifests, overlays))
    if any(has_maps(run) for run in views):
        sections.append(
            grounding_section(views, sink, manifests, max(overlays, 1), n_boot=n_boot, seed=seed)
        )
    sections.append(provenance_section(runs, sink, command))
    heading = title or f"Probe report: {len(runs)} run{'s' if len(runs) != 1 else ''}"
    markdown = folder / "report.md"
    markdown.write_text(render_markdown(heading, sections), encoding="utf-8")
    html = folder / "report.html"
    html.write_text(render_html(heading, sections, folder), encoding="utf-8")
    return ReportFiles(markdown, html, list(sink.figures), list(sink.tables))


class _Manifests:
    """Manifests by path, read once (files not checked: only the table and paths are used)."""

    def __init__(self, override: str | os.PathLike | None):
        self.override = override
        self._cache: dict[str, Manifest] = {}

    def of(self, run: Run) -> Manifest:
        path = str(self.override or run.info.get("manifest") or "")
        if not path:
            raise ValueError(f"run {run.name!r}: run.json names no manifest; pass --manifest")
        if path not in self._cache:
            self._cache[path] = load_manifest(path, check_files=False)
        return self._cache[path]


def subgroup_sections(
    runs: Sequence[Run],
    sink: Sink,
    manifests: _Manifests,
    by: list[str],
    size_column: str | None,
    size_bins: int,
    n_boot: int,
    seed: int,
) -> list[Section]:
    """Per task (and label): subgroup_table of every run, a table and a CI plot."""
    from probes.analysis.subgroups import subgroup_table

    columns = ", ".join(f"`{c}`" for c in [*by, *([size_column] if size_column else [])])
    bins = f" (`{size_column}` in {size_bins} quantile bins)" if size_column else ""
    source = "the manifest given" if manifests.override else "each run's manifest"
    section = Section("Subgroups").add(
        Text(
            f"Test images of all rounds pooled, split by {columns}{bins}. Metadata: {source}. "
            f"95% CIs: bootstrap over patients ({n_boot} resamples, seed {seed}). Sensitivity "
            "and specificity at threshold 0.5."
        )
    )
    sections = [section]
    tables: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for run in runs:
        try:
            metadata = manifests.of(run).table
            table = subgroup_table(
                run.predictions,
                metadata,
                by=by,
                size_column=size_column,
                size_bins=size_bins if size_column else 0,
                n_boot=n_boot,
                seed=seed,
            )
        except (OSError, KeyError, ValueError) as exc:
            section.add(Text(f"`{run.name}`: no subgroups ({exc})."))
            continue
        if "label" not in table.columns:
            table.insert(0, "label", "")
        table.insert(0, "run", run.name)
        table.insert(2, "subgroup", _describe(table, [*by, "size_bin"]))
        for label, part in table.groupby("label", sort=True):
            tables.setdefault((run.task, str(label)), []).append(part)
    for (task, label), parts in tables.items():
        table = pd.concat(parts, ignore_index=True)
        estimate = "sensitivity" if task == CLASSIFICATION else "dice"
        what = label or TASK_TITLES[task]
        csv = sink.table(table, f"subgroups_{task}_{label}")
        figure = subgroup_figure(table, estimate, f"{what}: {estimate} by subgroup (95% CI)")
        sections.append(
            Section(f"Subgroups: {what}", level=3).add(
                Table(_subgroup_display(table, estimate), csv=csv),
                sink.figure(
                    figure,
                    f"subgroups_{task}_{label}",
                    f"{what}: {estimate} with 95% CI per subgroup, one colour per run.",
                ),
            )
        )
    return sections


def _describe(table: pd.DataFrame, columns: list[str]) -> list[str]:
    """``col=value, ...`` of the columns a subgroup row splits by; "all images" for none."""
    from probes.analysis.subgroups import ALL

    present = [c for c in columns if c in table.columns]
    out = []
    for row in table[present].astype(str).itertuples(index=False):
        parts = [f"{c}={v}" for c, v in zip(present, row, strict=True) if v != ALL]
        out.append(", ".join(parts) or "all images")
    return out


def _subgroup_display(table: pd.DataFrame, estimate: str) -> pd.DataFrame:
    shown = table[["run", "subgroup"]].copy()
    for column in ("n", "patients", "positives", "negatives"):
        if column in table.columns:
            shown[column] = table[column]
    metrics = ("sensitivity", "specificity", "auroc") if estimate != "dice" else ("dice",)
    for metric in metrics:
        if metric not in table.columns:
            continue
        shown[f"{metric} [95% CI]"] = [
            f"{v:.3f} {format_ci(lo, hi)}" if pd.notna(v) else "—"
            for v, lo, hi in zip(
                table[metric], table[f"{metric}_ci_low"], table[f"{metric}_ci_high"], strict=True
            )
        ]
    return shown


def overlay_section(runs: Sequence[Run], sink: Sink, manifests: _Manifests, k: int) -> Section:
    """Best and worst ``k`` test images by Dice of each segmentation run with saved masks."""
    section = Section("Segmentation overlays").add(
        Text(
            f"The {k} best and {k} worst test images by Dice of each segmentation run that saved "
            "its predicted masks (`probes seg --save-masks`). Each X-ray is shown as the encoder "
            "saw it (its resize/crop/pad), with the true mask (green) and the predicted mask "
            "(magenta) as contours at the masks' resolution."
        )
    )
    for run in runs:
        if not run.has_masks:
            continue
        try:
            manifest = manifests.of(run)
        except (OSError, ValueError) as exc:
            section.add(Text(f"`{run.name}`: no overlays ({exc})."))
            continue
        preprocessing = store_preprocessing(run)
        if preprocessing is None:
            section.add(
                Text(
                    f"`{run.name}`: the store's preprocessing could not be read "
                    f"({run.info.get('store')}); images are stretched to the masks' raster."
                )
            )
        best, worst = extreme_cases(run, k)
        best_cases, problems = load_cases(run, best, manifest, preprocessing)
        worst_cases, more = load_cases(run, worst, manifest, preprocessing)
        for problem in problems + more:
            section.add(Text(f"`{run.name}`: {problem}"))
        rows = [(t, c) for t, c in (("best", best_cases), ("worst", worst_cases)) if c]
        if not rows:
            continue
        figure = overlay_figure(rows, run.name)
        section.add(
            sink.figure(
                figure,
                f"overlays_{run.name}",
                f"{run.name}: best (top) and worst (bottom) test images by Dice; green truth, "
                "magenta prediction.",
            )
        )
    return section
