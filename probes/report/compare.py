"""Which runs can be compared, and the comparisons: paired per-image tests for every pair of
comparable runs, and with three or more, Friedman/Nemenyi over folds, the critical-difference
diagram and pairwise Wilcoxon-Holm (all from :mod:`probes.analysis.stats`).

Runs are comparable when they are the same task on the same cohort (manifest digest) and
tested the same images in every round (:func:`probes.analysis.stats.check_same_folds`). Anything else
is reported run by run, with the reason no test was run.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from probes.analysis.stats import (
    FriedmanResult,
    check_same_folds,
    fold_scores,
    friedman_nemenyi,
    paired_image_tests,
    wilcoxon_holm,
)
from probes.report.runs import CLASSIFICATION, Run

__all__ = ["Comparison", "RankTest", "comparable_groups", "compare"]


@dataclass
class RankTest:
    """Friedman/Nemenyi and Wilcoxon-Holm of one metric (and label) over the folds."""

    label: str
    metric: str
    scores: pd.DataFrame  # blocks x runs
    friedman: FriedmanResult | None
    wilcoxon: pd.DataFrame | None
    problem: str = ""


@dataclass
class Comparison:
    """The tests of one group of comparable runs."""

    runs: list[Run]
    paired: pd.DataFrame  # paired_image_tests rows with a, b columns
    rank_tests: list[RankTest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def comparable_groups(runs: Sequence[Run]) -> tuple[list[list[Run]], list[str]]:
    """Split runs into groups that may be compared (same task, manifest digest and test folds).

    Returns ``(groups, reasons)``: groups in first-run order (single runs included), and for
    each group after the first of its task one sentence saying why it was not compared with
    that first group.
    """
    keyed: dict[tuple, list[Run]] = {}
    for run in runs:
        keyed.setdefault((run.task, run.manifest_digest, _fold_signature(run)), []).append(run)
    groups = list(keyed.values())
    reasons = []
    first_of_task: dict[str, Run] = {}
    for group in groups:
        run = group[0]
        first = first_of_task.setdefault(run.task, run)
        if first is run:
            continue
        reference = next(g for g in groups if g[0] is first)
        names = f"`{_names(group)}` not compared with `{_names(reference)}`"
        if run.manifest_digest != first.manifest_digest:
            reasons.append(
                f"{names}: different manifests (digest "
                f"{run.manifest_digest[:12]} vs {first.manifest_digest[:12]})."
            )
            continue
        try:
            check_same_folds({first.name: first.predictions, run.name: run.predictions})
            why = "different test folds"
        except ValueError as exc:
            why = str(exc)
        reasons.append(f"{names}: {why}.")
    return groups, reasons


def _names(group: Sequence[Run]) -> str:
    return "`, `".join(run.name for run in group)


def _fold_signature(run: Run) -> tuple:
    """The test image ids of every round, as a hashable value."""
    test = run.test
    return tuple(
        (int(r), tuple(sorted(ids.astype(str).unique())))
        for r, ids in test.groupby("round", sort=True)["image_id"]
    )


def compare(group: Sequence[Run], *, n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Paired image tests for every pair in ``group`` (same folds, checked), and with >= 3
    runs Friedman/Nemenyi + Wilcoxon-Holm over folds per label (AUROC) or on Dice."""
    runs = list(group)
    check_same_folds({run.name: run.predictions for run in runs})
    frames, problems = [], []
    for a, b in itertools.combinations(runs, 2):
        pa, pb = a.predictions, b.predictions
        if a.task == CLASSIFICATION:  # pair up the labels both runs scored
            shared = set(a.labels) & set(b.labels)
            if not shared:
                problems.append(f"`{a.name}` vs `{b.name}`: no label in common, no paired test.")
                continue
            pa = pa[pa["label"].astype(str).isin(shared)]
            pb = pb[pb["label"].astype(str).isin(shared)]
        try:
            rows = paired_image_tests(pa, pb, n_boot=n_boot, seed=seed, names=(a.name, b.name))
        except ValueError as exc:
            problems.append(f"`{a.name}` vs `{b.name}`: no paired test ({exc}).")
            continue
        frames.append(rows.assign(a=a.name, b=b.name))
    paired = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    result = Comparison(runs=runs, paired=paired, problems=problems)
    if runs[0].task == CLASSIFICATION:  # per label, among the runs that scored it
        for label in sorted(set().union(*(r.labels for r in runs))):
            scored = [r for r in runs if label in r.labels]
            if len(scored) >= 3:
                result.rank_tests.append(_rank_test(scored, label, "auroc"))
    elif len(runs) >= 3:
        result.rank_tests = [_rank_test(runs, "", "dice")]
    return result


def _rank_test(runs: Sequence[Run], label: str, metric: str) -> RankTest:
    tables = {}
    for run in runs:
        results = run.results
        if label:
            results = results[results["label"].astype(str) == label]
        tables[run.name] = results
    try:
        scores = fold_scores(tables, metric)
        friedman = friedman_nemenyi(scores, higher_is_better=True)
        wilcoxon = wilcoxon_holm(scores)
    except ValueError as exc:
        return RankTest(label, metric, pd.DataFrame(), None, None, problem=str(exc))
    return RankTest(label, metric, scores, friedman, wilcoxon)
