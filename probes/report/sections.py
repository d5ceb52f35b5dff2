"""The report's sections, each built from loaded runs into :mod:`probes.report.render` blocks;
figures and CSV tables are written into the report folder through a :class:`Sink`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from embedcache.provenance import git_commit, library_versions
from probes.report.compare import Comparison, comparable_groups, compare
from probes.report.figures import roc_figure, save_png
from probes.report.render import Code, Figure, Section, Table, Text
from probes.report.runs import CLASSIFICATION, SEGMENTATION, Run
from probes.report.tables import (
    display_summary,
    format_ci,
    metric_summary,
    per_round_table,
    runs_table,
)

__all__ = [
    "Sink",
    "comparison_sections",
    "metric_sections",
    "provenance_section",
    "runs_section",
    "slug",
]

TASK_TITLES = {CLASSIFICATION: "Classification", SEGMENTATION: "Segmentation"}


@dataclass
class Sink:
    """Where figures (``figures/*.png``) and tables (``tables/*.csv``) of a report go."""

    folder: Path
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)

    def figure(self, figure, stem: str, caption: str, alt: str = "") -> Figure:
        path = self._free(Path("figures") / f"{slug(stem)}.png")
        save_png(figure, self.folder / path)
        self.figures.append(self.folder / path)
        return Figure(path.as_posix(), caption, alt or caption)

    def table(self, frame: pd.DataFrame, stem: str) -> str:
        path = self._free(Path("tables") / f"{slug(stem)}.csv")
        frame.to_csv(self.folder / path, index=False, float_format="%.10g")
        self.tables.append(self.folder / path)
        return path.as_posix()

    def _free(self, path: Path) -> Path:
        (self.folder / path.parent).mkdir(parents=True, exist_ok=True)
        taken = {p.relative_to(self.folder) for p in (*self.figures, *self.tables)}
        stem, n = path.stem, 2
        while path in taken:
            path, n = path.with_name(f"{stem}-{n}{path.suffix}"), n + 1
        return path


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def runs_section(runs: Sequence[Run], sink: Sink) -> Section:
    frame = runs_table(runs)
    return Section("Runs").add(
        Text(
            "One row per run folder (named by its folder). `images`: distinct images on a test "
            "fold; `split`: how folds were made (`patient`: grouped by patient, stratified). "
            "Control baselines (`probes control`) are marked in `probe`: `image-stats` probes "
            "intensity histogram, image size and metadata without any encoder, "
            "`shuffled-label` an encoder's features with permuted training labels (the floor)."
        ),
        Table(frame, csv=sink.table(frame, "runs")),
    )


def metric_sections(runs: Sequence[Run], sink: Sink, *, n_boot: int, seed: int) -> list[Section]:
    """Per task: the fold-summary table (per label), ROC curves, and per-round tables."""
    sections = []
    for task in (CLASSIFICATION, SEGMENTATION):
        members = [r for r in runs if r.task == task]
        if not members:
            continue
        summary = metric_summary(members, n_boot=n_boot, seed=seed)
        csv = sink.table(summary, f"{task}_metrics")
        section = Section(TASK_TITLES[task]).add(
            Text(
                "Fold statistics over the rounds' test folds, from each run's results.csv: "
                "median [min, max] (the reference study's style) and mean ± sd (ddof 1). "
                f"Pooled 95% CI: percentile bootstrap ({n_boot} resamples of whole patients, "
                f"seed {seed}) over the test images of all rounds pooled, each with the "
                "prediction of the round it was tested in."
                + (
                    " Sensitivity and specificity at threshold 0.5."
                    if task == CLASSIFICATION
                    else " Dice and IoU: per-image values averaged per fold."
                )
            )
        )
        sections.append(section)
        labels = sorted(set(summary["label"]))
        for label in labels:
            part = summary[summary["label"] == label]
            shown = display_summary(part, members)
            title = f"{TASK_TITLES[task]}: {label}" if label else f"{TASK_TITLES[task]}: metrics"
            sections.append(Section(title, level=3).add(Table(shown, csv=csv)))
            if task == CLASSIFICATION:
                sections[-1].add(_roc(members, label, sink))
        per_round = Section(f"{TASK_TITLES[task]}: per round", level=3).add(
            Text(
                "Each run's results.csv; the 95% CIs here are per round: the same percentile "
                "bootstrap over whole patients as the pooled CIs above, on that round's test "
                "rows (seed + round), as the probe computed them."
            )
        )
        for run in members:
            per_round.add(Table(per_round_table(run), caption=run.name))
        sections.append(per_round)
    return sections


def _roc(runs: Sequence[Run], label: str, sink: Sink) -> Figure:
    curves = {}
    for run in runs:
        test = run.test
        rows = test[test["label"].astype(str) == label]
        if len(rows):
            curves[run.name] = rows
    figure = roc_figure(curves, label)
    return sink.figure(
        figure,
        f"roc_{label}",
        f"ROC curves for {label}: test rows of all rounds pooled, one curve per run; the "
        "legend's AUROC is of the pooled rows.",
    )


def comparison_sections(
    runs: Sequence[Run], sink: Sink, *, n_boot: int, seed: int
) -> list[Section]:
    """Per task: comparable groups, their paired tests and rank tests, and why others were
    not compared."""
    groups, reasons = comparable_groups(runs)
    sections = []
    for task in (CLASSIFICATION, SEGMENTATION):
        task_groups = [g for g in groups if g[0].task == task]
        if not task_groups:
            continue
        section = Section(f"Comparisons: {TASK_TITLES[task].lower()}")
        sections.append(section)
        task_reasons = [r for r in reasons if any(f"`{g[0].name}`" in r for g in task_groups)]
        for reason in task_reasons:
            section.add(Text(reason))
        tested = [g for g in task_groups if len(g) >= 2]
        if len(task_groups) == 1 and len(task_groups[0]) == 1:
            section.add(Text(f"One {task} run (`{task_groups[0][0].name}`): nothing to compare."))
        elif not tested:
            section.add(Text("No two runs share a cohort and test folds: no test was run."))
        for number, group in enumerate(tested, start=1):
            result = compare(group, n_boot=n_boot, seed=seed)
            sections += _comparison(result, sink, f"{task}_{number}", len(tested) > 1)
    return sections


def _comparison(result: Comparison, sink: Sink, stem: str, numbered: bool) -> list[Section]:
    names = ", ".join(f"`{r.name}`" for r in result.runs)
    title = f"Runs {names}" if numbered else "Paired tests"
    section = Section(title, level=3).add(
        Text(
            f"{names} tested the same images in every round (checked), so they are compared "
            "image by image: DeLong's test of paired AUROCs (classification; when a patient "
            "has several images, also a paired bootstrap of the AUROC difference over "
            "patients, whose interval does not treat a patient's images as independent) or a "
            "paired bootstrap of mean Dice over patients (segmentation), on the test rows of "
            "all rounds pooled (per-round rows in the CSV). Difference = a - b; p-values are "
            "not adjusted for multiplicity."
        )
    )
    for problem in result.problems:
        section.add(Text(problem))
    if len(result.paired):
        csv = sink.table(result.paired, f"paired_tests_{stem}")
        section.add(Table(_paired_display(result.paired), csv=csv))
    sections = [section]
    for test in result.rank_tests:
        what = f"{test.label} {test.metric.upper()}" if test.label else test.metric.capitalize()
        rank = Section(f"Friedman / Nemenyi: {what}", level=3)
        sections.append(rank)
        if test.friedman is None:
            rank.add(Text(f"Not run: {test.problem}"))
            continue
        fr = test.friedman
        ranks = fr.ranks.rename("average rank").reset_index().rename(columns={"index": "run"})
        rank.add(
            Text(
                f"Blocks are the {fr.n_blocks} folds (rounds): Friedman chi2 = "
                f"{fr.statistic:.3f}, p = {fr.pvalue:.3g}; Nemenyi critical difference "
                f"{fr.critical_difference:.2f} average ranks at alpha {fr.alpha} (rank 1 = best). "
                "With few folds these tests have little power; the paired image tests above "
                "have more."
            ),
            Table(ranks.round(3), csv=sink.table(ranks, f"friedman_ranks_{stem}_{test.label}")),
        )
        from probes.analysis.stats import plot_critical_difference

        figure = plot_critical_difference(fr, title=what)
        rank.add(
            sink.figure(
                figure,
                f"cd_{stem}_{test.label}",
                f"Critical-difference diagram, {what}: runs not separated by Nemenyi at alpha "
                f"{fr.alpha} are joined by a bar.",
            )
        )
        wilcoxon = test.wilcoxon
        rank.add(
            Text("Pairwise Wilcoxon signed-rank tests over the folds, Holm-adjusted."),
            Table(
                _wilcoxon_display(wilcoxon),
                csv=sink.table(wilcoxon, f"wilcoxon_holm_{stem}_{test.label}"),
            ),
        )
    return sections


def _paired_display(paired: pd.DataFrame) -> pd.DataFrame:
    pooled = paired[paired["round"] == -1]
    return pd.DataFrame(
        {
            "a": pooled["a"],
            "b": pooled["b"],
            "label": pooled["label"],
            "test": pooled["test"] + " (" + pooled["metric"] + ")",
            "a estimate": pooled["estimate_a"].map(lambda v: f"{v:.3f}"),
            "b estimate": pooled["estimate_b"].map(lambda v: f"{v:.3f}"),
            "difference [95% CI]": [
                f"{d:+.3f} {format_ci(lo, hi)}"
                for d, lo, hi in zip(
                    pooled["difference"], pooled["ci_low"], pooled["ci_high"], strict=True
                )
            ],
            "p": pooled["pvalue"].map(_p),
            "images": pooled["n"],
        }
    )


def _wilcoxon_display(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": table["a"],
            "b": table["b"],
            "folds": table["n"],
            "median difference": table["median_difference"].map(lambda v: f"{v:+.3f}"),
            "p": table["pvalue"].map(_p),
            "p (Holm)": table["pvalue_holm"].map(_p),
            "significant": table["reject"].map({True: "yes", False: "no"}),
        }
    )


def _p(value: float) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.3g}" if value >= 1e-4 else "< 0.0001"


def provenance_section(runs: Sequence[Run], sink: Sink, command: Sequence[str] | None) -> Section:
    """Stores, encoder keys, manifests and digests, seeds, splits, git commits, library
    versions and command lines of every run and of the report."""
    rows = []
    for run in runs:
        info, split = run.info, run.split
        rows.append(
            {
                "run": run.name,
                "folder": str(run.path.resolve()),
                "store": info.get("store", ""),
                "encoder key": run.encoder,
                "manifest": info.get("manifest", ""),
                "manifest digest": run.manifest_digest,
                "rows": info.get("rows", ""),
                "excluded": len(info.get("excluded") or {}),
                "split": f"{split.get('kind')} seed {split.get('seed')}, "
                f"{split.get('rounds')} rounds",
                "probe": run.probe,
                "seed": info.get("seed", ""),
                "git commit": info.get("git_commit") or "not recorded",
                "params": json.dumps(info.get("params", {}), sort_keys=True, default=str),
            }
        )
    frame = pd.DataFrame(rows)
    shown = frame.drop(columns=["folder", "params"])
    versions = pd.DataFrame(
        {run.name: pd.Series(run.info.get("versions") or {}, dtype=object) for run in runs}
        | {"this report": pd.Series(library_versions(), dtype=object)}
    )
    versions = versions.rename_axis("library").reset_index().fillna("")
    commands = [f"# {run.name}\n{_command(run.info.get('command'))}" for run in runs]
    report_commit = git_commit() or "not a git working tree"
    commands.append(f"# this report (git commit {report_commit})\n{_command(command)}")
    return Section("Provenance").add(
        Text(
            "What each run was computed from. A result is only as traceable as this table: "
            "the encoder key is a digest of the weights and preprocessing, the manifest digest "
            "of its ordered image ids and paths."
        ),
        Table(shown, csv=sink.table(frame, "provenance")),
        Text("Library versions (run.json of each run, and this report's environment):"),
        Table(versions, csv=sink.table(versions, "versions")),
        Text("Command lines:"),
        Code("\n\n".join(commands)),
    )


def _command(argv: object) -> str:
    if not argv:
        return "(not recorded)"
    if isinstance(argv, str):
        return argv
    return shlex.join(str(a) for a in argv)  # type: ignore[union-attr]
