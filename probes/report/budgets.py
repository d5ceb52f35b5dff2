"""The report's label-efficiency section: metric against training budget per run with 95% CIs,
and paired tests between comparable runs at each budget (:mod:`probes.analysis.budgets`).

Everywhere else in the report a budgeted run stands for its largest budget's draw 0
(:func:`full_budget_view`), so it sits beside runs without budgets.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import pandas as pd

from probes.analysis.budgets import budget_curve, paired_budget_tests
from probes.core.budgets import budget_label, largest_budget
from probes.report.compare import comparable_groups
from probes.report.curves import budget_figure
from probes.report.render import Section, Table, Text
from probes.report.runs import Run
from probes.report.tables import format_ci

__all__ = ["budget_sections", "full_budget_view", "has_budgets"]

DIGITS = 3


def has_budgets(run: Run) -> bool:
    return "budget" in run.predictions.columns


def budget_unit(run: Run) -> str:
    """``fraction`` or ``count``: how the run's budgets are written."""
    return run.spec.split.budget_unit if run.spec is not None else "fraction"


def full_budget_view(run: Run) -> Run:
    """``run`` with only its largest budget's draw 0 (itself when it has no budgets)."""
    if not has_budgets(run):
        return run
    return dataclasses.replace(
        run,
        predictions=largest_budget(run.predictions),
        results=largest_budget(run.results),
    )


def budget_sections(runs: Sequence[Run], sink, *, n_boot: int, seed: int) -> list[Section]:
    """ "Label efficiency": per task and label, the curve of every budgeted run (figure and
    table), then paired tests at each budget between runs on the same cohort and folds."""
    budgeted = [r for r in runs if has_budgets(r)]
    if not budgeted:
        return []
    section = Section("Label efficiency").add(
        Text(
            "Runs trained on budgets of each round's training fold (`--budgets`): training "
            "patients drawn per stratum, nested (a smaller budget's patients lie inside the "
            "larger one's), validation and test folds untouched, the same draws for every "
            "run. Each point: the metric of the test rows of all rounds pooled (AUROC, or "
            "mean Dice), averaged over the draws; 95% CI: percentile bootstrap over test "
            f"patients ({n_boot} resamples, seed {seed}), the same resample for every draw; "
            "`draw sd`: the spread from which training patients were drawn. A budget that "
            "keeps the whole training fold is fitted once. Elsewhere in this report a "
            "budgeted run stands for its largest budget (draw 0)."
        )
    )
    sections = [section]
    curves = []
    for run in budgeted:
        curve = budget_curve(run.predictions, n_boot=n_boot, seed=seed)
        curves.append(curve.assign(run=run.name, task=run.task, unit=budget_unit(run)))
    table = pd.concat(curves, ignore_index=True)
    for (task, label, unit), part in table.groupby(["task", "label", "unit"], sort=False):
        what = label or "segmentation"
        stem = "_".join(p for p in ("budgets", task, label, unit) if p)
        csv = sink.table(part, stem)
        figure = budget_figure(part, unit, f"{what}: label efficiency (95% CI)")
        sections.append(
            Section(f"Label efficiency: {what}", level=3).add(
                Table(_display(part), csv=csv),
                sink.figure(
                    figure,
                    stem,
                    f"{what}: {part['metric'].iat[0]} against training budget, one line per "
                    "run, 95% CI over test patients.",
                ),
            )
        )
    sections += _paired_sections(budgeted, sink, n_boot=n_boot, seed=seed)
    return sections


def _display(part: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": part["run"],
            "budget": [
                budget_label(b, u) for b, u in zip(part["budget"], part["unit"], strict=True)
            ],
            "train images (median per round)": part["n_train"].map(lambda v: f"{v:g}"),
            f"{part['metric'].iat[0]} [95% CI]": [
                f"{v:.{DIGITS}f} {format_ci(lo, hi)}"
                for v, lo, hi in zip(part["estimate"], part["ci_low"], part["ci_high"], strict=True)
            ],
            "draws": part["draws"],
            "draw sd": part["draw_sd"].map(lambda v: f"{v:.{DIGITS}f}"),
        }
    )


def _paired_sections(budgeted: Sequence[Run], sink, *, n_boot: int, seed: int) -> list[Section]:
    """Every pair of budgeted runs with the same cohort, folds and budgets, at each budget."""
    groups, _ = comparable_groups(budgeted)
    frames = []
    for group in groups:
        for a, b in itertools.combinations(group, 2):
            if budget_unit(a) != budget_unit(b):
                continue
            if a.task == "classification" and not set(a.labels) & set(b.labels):
                continue
            try:
                rows = paired_budget_tests(a.predictions, b.predictions, n_boot=n_boot, seed=seed)
            except ValueError:
                continue
            if len(rows):
                frames.append(rows.assign(a=a.name, b=b.name, unit=budget_unit(a)))
    if not frames:
        return []
    paired = pd.concat(frames, ignore_index=True)
    csv = sink.table(paired, "budgets_paired_tests")
    shown = pd.DataFrame(
        {
            "a": paired["a"],
            "b": paired["b"],
            "label": paired["label"],
            "budget": [
                budget_label(v, u) for v, u in zip(paired["budget"], paired["unit"], strict=True)
            ],
            "a estimate": paired["estimate_a"].map(lambda v: f"{v:.{DIGITS}f}"),
            "b estimate": paired["estimate_b"].map(lambda v: f"{v:.{DIGITS}f}"),
            "difference [95% CI]": [
                f"{d:+.{DIGITS}f} {format_ci(lo, hi)}"
                for d, lo, hi in zip(
                    paired["difference"], paired["ci_low"], paired["ci_high"], strict=True
                )
            ],
            "p": paired["pvalue"].map(lambda v: f"{v:.3g}" if v >= 1e-4 else "< 0.0001"),
            "draws": paired["draws"],
        }
    )
    return [
        Section("Label efficiency: paired tests at each budget", level=3).add(
            Text(
                "Runs on the same cohort and folds, compared at every budget both have: the "
                "difference of the draw-averaged pooled metric (a - b), its 95% interval and "
                "two-sided p-value from resampling whole test patients (the same resample for "
                "both runs and every draw). Both runs trained on the same drawn patients. "
                "p-values are not adjusted for multiplicity (budgets x pairs)."
            ),
            Table(shown, csv=csv),
        )
    ]
