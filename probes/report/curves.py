"""The report's curve figures, each a new :class:`matplotlib.figure.Figure`: label efficiency
(metric against budget with CIs), reliability diagrams, decision curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from probes.core.budgets import budget_label

__all__ = ["budget_figure", "decision_curve_figure", "reliability_figure"]


def budget_figure(curves: pd.DataFrame, unit: str, title: str) -> Figure:
    """Metric against budget, one line per run, 95% CI error bars.

    Args:
        curves: :func:`probes.analysis.budgets.budget_curve` rows with a ``run`` column.
        unit: ``fraction`` (x axis: % of the training fold) or ``count`` (images per class).
    """
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    runs = list(dict.fromkeys(curves["run"]))
    for i, run in enumerate(runs):
        part = curves[curves["run"] == run].sort_values("budget")
        x = part["budget"].to_numpy(float) * (100.0 if unit == "fraction" else 1.0)
        x = x * (1 + 0.03 * (i - (len(runs) - 1) / 2))  # small offsets keep error bars apart
        y = part["estimate"].to_numpy(float)
        err = np.vstack(
            [
                np.clip(y - part["ci_low"].to_numpy(float), 0, None),
                np.clip(part["ci_high"].to_numpy(float) - y, 0, None),
            ]
        )
        ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, label=run)
    ax.set_xscale("log")
    ticks = sorted(set(curves["budget"].astype(float)))
    scale = 100.0 if unit == "fraction" else 1.0
    ax.set_xticks([t * scale for t in ticks], [budget_label(t, unit) for t in ticks])
    ax.minorticks_off()
    metric = str(curves["metric"].iat[0]).upper() if len(curves) else ""
    ax.set(
        xlabel="training budget (% of the training fold)"
        if unit == "fraction"
        else "training budget (images per class)",
        ylabel=f"{'Dice' if metric == 'DICE' else metric} (95% CI)",
        title=title,
    )
    ax.grid(True, color="0.9")
    _legend_below(ax, len(runs))
    return fig


def _legend_below(ax, n: int) -> None:
    """The legend under the axes (run names are long and runs many): one or two columns."""
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        fontsize=7,
        ncol=2 if n > 6 else 1,
        frameon=False,
    )


def reliability_figure(points: dict[str, tuple[pd.DataFrame, pd.DataFrame]], label: str) -> Figure:
    """Reliability diagram of one label: observed positive rate against mean score in 15
    equal-mass bins, raw scores (left) and temperature-scaled (right), one colour per run.

    Args:
        points: run name -> (raw bins, calibrated bins) from
            :func:`probes.core.calibration.reliability_bins`.
    """
    fig = Figure(figsize=(9.0, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    colours = [f"C{i % 10}" for i in range(len(points))]
    for ax, which, title in zip(axes, (0, 1), ("raw scores", "temperature-scaled"), strict=True):
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect")
        for colour, (name, bins) in zip(colours, points.items(), strict=True):
            table = bins[which]
            ax.plot(
                table["mean_score"],
                table["positive_rate"],
                "o-",
                color=colour,
                markersize=4,
                linewidth=1.2,
                label=name,
            )
        ax.set(
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            xlabel="mean predicted probability (bin)",
            title=title,
            aspect="equal",
        )
        ax.grid(True, color="0.9")
    axes[0].set_ylabel("observed positive rate (bin)")
    fig.suptitle(f"{label}: reliability, test rows pooled (15 equal-mass bins)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.02),
        fontsize=7,
        ncol=2 if len(labels) > 6 else 1,
        frameon=False,
    )
    return fig


def decision_curve_figure(
    curves: dict[str, pd.DataFrame], label: str, prevalence: float | None
) -> Figure:
    """Net benefit against risk threshold, one line per run, with treat-all and treat-none.

    Args:
        curves: run name -> :func:`probes.core.calibration.decision_curve` table.
        prevalence: the prevalence the curves were computed at (``None``: the test rows').
    """
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    treat_all = None
    for name, table in curves.items():
        ax.plot(table["threshold"], table["model"], linewidth=1.8, label=name)
        treat_all = table if treat_all is None else treat_all
    if treat_all is not None:
        ax.plot(
            treat_all["threshold"],
            treat_all["treat_all"],
            color="0.4",
            linestyle=":",
            label="treat all",
        )
        ax.axhline(0.0, color="0.2", linewidth=1, label="treat none")
        top = max(float(np.nanmax([t["model"].max() for t in curves.values()])), 0.01)
        ax.set_ylim(-0.25 * top, 1.1 * max(top, float(treat_all["treat_all"].max())))
    where = f"prevalence {prevalence:g}" if prevalence is not None else "the test rows' prevalence"
    ax.set(
        xlabel="risk threshold",
        ylabel="net benefit",
        title=f"{label}: decision curve at {where}",
        xlim=(0, 1),
    )
    ax.grid(True, color="0.9")
    _legend_below(ax, len(curves) + 2)
    return fig
