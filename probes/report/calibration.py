"""The report's calibration section: per run and label, ECE and Brier raw and temperature-scaled,
the operating points at 90% specificity / sensitivity and net benefit (from results.csv, as the
probe computed them), a reliability diagram and a decision curve per label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from probes.core.calibration import (
    calibrated_scores,
    decision_curve,
    decision_options,
    decision_scores,
    reliability_bins,
)
from probes.core.metrics import format_median_range
from probes.core.results import results_table
from probes.report.curves import decision_curve_figure, reliability_figure
from probes.report.render import Section, Table, Text
from probes.report.runs import CLASSIFICATION, Run

__all__ = ["calibration_sections", "report_prevalence"]

#: results.csv column -> display name.
COLUMNS = {
    "ece": "ECE",
    "ece_calibrated": "ECE (T-scaled)",
    "brier": "Brier",
    "brier_calibrated": "Brier (T-scaled)",
    "temperature": "T",
    "sensitivity_at_90_specificity": "sens @ 90% spec",
    "specificity_at_90_sensitivity": "spec @ 90% sens",
}
THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def report_prevalence(runs: Sequence[Run], given: float | None) -> float | None:
    """The decision curves' prevalence: ``given``, else the one every classification run was
    computed at (``--prevalence``), else ``None`` (each run's test rows')."""
    if given is not None:
        return float(given)
    found = {
        (r.spec.options.get("prevalence") if r.spec is not None else None)
        for r in runs
        if r.task == CLASSIFICATION
    }
    return found.pop() if len(found) == 1 else None


def _results(run: Run, prevalence: float | None) -> pd.DataFrame:
    """results.csv; recomputed from the predictions (without CIs: the columns shown need none)
    for a run written before the calibration columns existed, or whose net benefit was
    computed at another prevalence than the report's."""
    options = run.spec.options if run.spec is not None else {}
    own = options.get("prevalence")
    same = own == prevalence or (
        own is not None and prevalence is not None and float(own) == float(prevalence)
    )
    if "ece" in run.results.columns and same:
        return run.results
    return results_table(
        run.predictions, n_boot=0, **{**decision_options(options), "prevalence": prevalence}
    )


def _with_calibrated(test: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    if "score_calibrated" in test.columns:
        return test
    return test.assign(score_calibrated=calibrated_scores(rows).loc[test.index])


def _decision_rows(rows: pd.DataFrame, prevalence: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Test truths and the scores a decision at ``prevalence`` uses, pooled over rounds (each
    round's temperature-scaled scores moved from its validation prevalence)."""
    truths, scores = [], []
    for _, part in rows.groupby("round", sort=True):
        test = _with_calibrated(part[part["split"] == "test"], part)
        val = part[part["split"] == "val"]
        truths.append(test["truth"].to_numpy(int))
        scores.append(decision_scores(test["score_calibrated"], val["truth"], prevalence))
    return np.concatenate(truths), np.concatenate(scores)


def calibration_sections(runs: Sequence[Run], sink, *, prevalence: float | None) -> list[Section]:
    """ "Calibration and operating points" for the classification runs."""
    members = [r for r in runs if r.task == CLASSIFICATION]
    if not members:
        return []
    where = (
        f"prevalence {prevalence:g}" if prevalence is not None else "each test fold's prevalence"
    )
    sections = [
        Section("Calibration and operating points").add(
            Text(
                "From each run's results.csv, over rounds (median [min, max]): expected "
                "calibration error (15 equal-mass bins) and Brier score of the raw scores and "
                "after temperature scaling (one temperature T per round, fitted on its "
                "validation fold; it never changes AUROC); sensitivity at 90% specificity and "
                "specificity at 90% sensitivity with the threshold chosen on the validation "
                "fold and applied to the test fold; net benefit (NB) at the risk threshold "
                f"given, at {where} (recomputed from the predictions for a run computed at "
                "another). Figures pool the test rows of all rounds: "
                "reliability diagrams (15 equal-mass bins, raw and temperature-scaled) and decision curves (net benefit of "
                f"the temperature-scaled scores at {where}, moved there by Bayes' rule, "
                "against treating all and none)."
            )
        )
    ]
    labels = sorted({label for r in members for label in r.labels})
    for label in labels:
        shown, points, curves = [], {}, {}
        net_benefit = None
        for run in members:
            if label not in run.labels:
                continue
            results = _results(run, prevalence)
            results = results[results["label"].astype(str) == label]
            nb = sorted(c for c in results.columns if c.startswith("net_benefit_at_"))
            net_benefit = net_benefit or (nb[0] if nb else None)
            row = {"run": run.name}
            for column, name in COLUMNS.items():
                row[name] = format_median_range(results[column]) if column in results else "—"
            if net_benefit and net_benefit in results:
                row[f"NB @ {net_benefit.rsplit('_', 1)[-1]}"] = format_median_range(
                    results[net_benefit]
                )
            shown.append(row)
            rows = run.predictions[run.predictions["label"].astype(str) == label]
            test = _with_calibrated(rows[rows["split"] == "test"], rows)
            truth = test["truth"].to_numpy(int)
            points[run.name] = (
                reliability_bins(truth, test["score"].to_numpy(float)),
                reliability_bins(truth, test["score_calibrated"].to_numpy(float)),
            )
            y, p = _decision_rows(rows, prevalence)
            curves[run.name] = decision_curve(y, p, THRESHOLDS, prevalence)
        frame = pd.DataFrame(shown)
        section = Section(f"Calibration: {label}", level=3).add(
            Table(frame, csv=sink.table(frame, f"calibration_{label}")),
            sink.figure(
                reliability_figure(points, label),
                f"reliability_{label}",
                f"{label}: reliability diagrams, test rows pooled; left raw scores, right "
                "temperature-scaled.",
            ),
            sink.figure(
                decision_curve_figure(curves, label, prevalence),
                f"decision_curve_{label}",
                f"{label}: decision curve (net benefit against risk threshold) at {where}.",
            ),
        )
        sections.append(section)
    return sections
