"""The report's tables: the runs, and each task's metrics over folds with bootstrap CIs.

Fold statistics (median [min, max], mean ± sd) are taken from each run's own ``results.csv``,
formatted with :func:`probes.core.metrics.format_median_range` / :func:`format_mean_sd`, so the
report shows exactly the numbers the run printed. The 95% CI beside them is the report's own:
a percentile bootstrap over the test images of all rounds pooled (each image's prediction from
the round it was tested in), resampling whole patients. The per-round tables repeat the CIs
``results.csv`` holds for each round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from probes.core.bootstrap import clustered_ci, clustered_mean_ci
from probes.core.metrics import format_mean_sd, format_median_range, summarize
from probes.report.runs import CLASSIFICATION, SEGMENTATION, Run

__all__ = [
    "CLASSIFICATION_METRICS",
    "SEGMENTATION_METRICS",
    "display_summary",
    "format_ci",
    "metric_summary",
    "per_round_table",
    "pooled_ci",
    "runs_table",
]

#: results.csv column -> display name, classification (thresholded metrics at 0.5).
CLASSIFICATION_METRICS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "sens_at_0.5": "sensitivity",
    "spec_at_0.5": "specificity",
}
#: results.csv column -> display name, segmentation (per-round means of per-image values).
SEGMENTATION_METRICS = {"dice": "Dice", "iou": "IoU"}
DIGITS = 3


def runs_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: name, task, encoder key, probe (and the control it is), features,
    split, rounds, test images, and the training budgets when a run has them."""
    from probes.core.budgets import budget_label

    rows = []
    budgeted = any(run.spec is not None and run.spec.split.budgets for run in runs)
    for run in runs:
        split = run.split
        control = run.info.get("control")
        extra = {}
        if budgeted:
            s = run.spec.split if run.spec is not None else None
            extra["budgets"] = (
                ", ".join(budget_label(b, s.budget_unit) for b in s.budgets)
                + f" x {s.budget_draws} draw{'s' if s.budget_draws != 1 else ''}"
                if s is not None and s.budgets
                else "whole training fold"
            )
        rows.append(
            {
                "run": run.name,
                "task": run.task,
                "encoder": run.encoder,
                "probe": f"{run.probe} (control: {control})" if control else run.probe,
                "features": run.feature,
                "labels": ", ".join(run.labels) or str(run.info.get("mask", "")),
                "split": f"{split.get('kind', '?')} (seed {split.get('seed', '?')})",
                "rounds": int(split.get("rounds") or run.results["round"].nunique()),
                "images": run.images,
                **extra,
            }
        )
    return pd.DataFrame(rows)


def metric_summary(runs: Sequence[Run], *, n_boot: int = 1000, seed: int = 5656) -> pd.DataFrame:
    """One row per run x label x metric, numbers only.

    Columns: run, label ("" for segmentation), metric (display name), column (in
    results.csv), folds, median, min, max, mean, sd (over folds, ddof 1), ci_low, ci_high
    (pooled bootstrap, :func:`pooled_ci`), images (pooled test images).
    """
    rows = []
    for run in runs:
        metrics = CLASSIFICATION_METRICS if run.task == CLASSIFICATION else SEGMENTATION_METRICS
        labels = run.labels or [""]
        for label in labels:
            results = run.results
            test = run.test
            if run.task == CLASSIFICATION:
                results = results[results["label"].astype(str) == label]
                test = test[test["label"].astype(str) == label]
            cis = pooled_ci(test, n_boot=n_boot, seed=seed)
            for column, name in metrics.items():
                low, high = cis[column]
                rows.append(
                    {
                        "run": run.name,
                        "label": label,
                        "metric": name,
                        "column": column,
                        "folds": int(results[column].notna().sum()),
                        **summarize(results[column]),
                        "ci_low": low,
                        "ci_high": high,
                        "images": int(test["image_id"].nunique()),
                    }
                )
    return pd.DataFrame(rows)


def display_summary(summary: pd.DataFrame, runs: Sequence[Run]) -> pd.DataFrame:
    """:func:`metric_summary` as display strings, the fold statistics formatted from each
    run's results.csv by the same functions ``probes`` prints with."""
    by_name = {run.name: run for run in runs}
    rows = []
    for r in summary.itertuples(index=False):
        results = by_name[r.run].results
        if r.label:
            results = results[results["label"].astype(str) == r.label]
        values = results[r.column]
        rows.append(
            {
                "run": r.run,
                "metric": r.metric,
                "median [min, max]": format_median_range(values, DIGITS),
                "mean ± sd": format_mean_sd(values, DIGITS),
                "pooled 95% CI": format_ci(r.ci_low, r.ci_high),
                "folds": r.folds,
            }
        )
    return pd.DataFrame(rows)


def format_ci(low: float, high: float, digits: int = DIGITS) -> str:
    """``[low, high]``; an em dash when the interval is undefined."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "—"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def pooled_ci(
    test: pd.DataFrame, *, n_boot: int = 1000, seed: int = 5656
) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap CIs over pooled test rows, resampling whole patients.

    Args:
        test: test rows of one run (and label): classification rows with truth and score, or
            segmentation rows with per-image dice and iou.

    Returns ``{results.csv column: (low, high)}`` for :data:`CLASSIFICATION_METRICS`
    (thresholded at 0.5, as ``sens_at_0.5`` / ``spec_at_0.5``) or
    :data:`SEGMENTATION_METRICS` (the mean over images).
    """
    groups = test["patient_id"].astype(str).to_numpy()
    if "dice" not in test.columns:
        truth, score = test["truth"].to_numpy(int), test["score"].to_numpy(float)
        return clustered_ci(truth, score, groups, n_boot=n_boot, seed=seed)
    out = {}
    for column in SEGMENTATION_METRICS:
        values = test[column].to_numpy(float)
        if test.empty or n_boot < 1 or np.isnan(values).all():
            out[column] = (float("nan"), float("nan"))
            continue
        out[column] = clustered_mean_ci(values, groups, n_boot=n_boot, seed=seed)
    return out


def per_round_table(run: Run) -> pd.DataFrame:
    """The run's results.csv per round, as display strings with its per-round CIs (the patient
    bootstrap over that round's test rows, as the probe command computed them)."""
    results = run.results.sort_values([c for c in ("label", "round") if c in run.results])
    rows = []
    for r in results.to_dict("records"):
        if run.task == SEGMENTATION:
            rows.append(
                {
                    "round": int(r["round"]),
                    "images": int(r["images"]),
                    "Dice": f"{r['dice']:.{DIGITS}f}",
                    "Dice 95% CI (round)": format_ci(r["dice_ci_low"], r["dice_ci_high"]),
                    "Dice median": f"{r['dice_median']:.{DIGITS}f}",
                    "IoU": f"{r['iou']:.{DIGITS}f}",
                }
            )
        else:
            rows.append(
                {
                    "label": r["label"],
                    "round": int(r["round"]),
                    "images": int(r["n"]),
                    "positives": int(r["n_pos"]),
                    "AUROC": f"{r['auroc']:.{DIGITS}f}",
                    "AUROC 95% CI (round)": format_ci(r["auroc_ci_low"], r["auroc_ci_high"]),
                    "AUPRC": f"{r['auprc']:.{DIGITS}f}",
                    "AUPRC 95% CI (round)": format_ci(r["auprc_ci_low"], r["auprc_ci_high"]),
                    "sensitivity": f"{r['sens_at_0.5']:.{DIGITS}f}",
                    "specificity": f"{r['spec_at_0.5']:.{DIGITS}f}",
                }
            )
    return pd.DataFrame(rows)
