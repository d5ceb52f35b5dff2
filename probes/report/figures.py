"""The report's figures, each a new :class:`matplotlib.figure.Figure` (no pyplot state):
ROC curves, subgroup estimates with CIs, and segmentation overlays. :func:`save_png` writes one.

The critical-difference diagram is :func:`probes.analysis.stats.plot_critical_difference`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "OverlayCase",
    "PatchMapCase",
    "overlay_figure",
    "patch_map_figure",
    "roc_figure",
    "save_png",
    "subgroup_figure",
]

DPI = 110
TRUE_COLOUR, PRED_COLOUR = "#00d26a", "#ff2d95"  # green truth, magenta prediction


def save_png(figure: Figure, path: str | os.PathLike) -> None:
    """Write ``figure`` as PNG (tight bounding box, :data:`DPI`)."""
    figure.savefig(path, format="png", dpi=DPI, bbox_inches="tight")


def roc_figure(curves: dict[str, pd.DataFrame], label: str) -> Figure:
    """ROC curves of one label, one curve per run.

    Args:
        curves: run name -> that run's test rows of ``label`` (``truth`` 0/1, ``score``),
            pooled over rounds. Runs with one class only are left out.
        label: the label, for the title.

    The legend gives each run's AUROC of the pooled rows (which differs from the median of
    the per-fold AUROCs in the tables: scores of different rounds' models are ranked together).
    """
    fig = Figure(figsize=(5.6, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, rows in curves.items():
        truth, score = rows["truth"].to_numpy(int), rows["score"].to_numpy(float)
        if len(np.unique(truth)) < 2:
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        auc = roc_auc_score(truth, score)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUROC {auc:.3f}, n={len(truth)})")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false-positive rate)",
        ylabel="sensitivity (true-positive rate)",
        title=f"{label}: ROC, test rows pooled over rounds",
        aspect="equal",
    )
    ax.grid(True, color="0.9")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def subgroup_figure(table: pd.DataFrame, estimate: str, title: str) -> Figure:
    """Point estimates with 95% CI per subgroup, one colour per run.

    Args:
        table: one row per run x subgroup with columns ``run``, ``subgroup`` (its name),
            ``estimate`` and ``{estimate}_ci_low`` / ``{estimate}_ci_high``.
        estimate: ``sensitivity``, ``dice``, ...

    Subgroups without an estimate (no positives for a sensitivity) are left out.
    """
    table = table[np.isfinite(table[estimate].to_numpy(float))]  # e.g. sensitivity of negatives
    names = list(dict.fromkeys(table["subgroup"]))
    runs = list(dict.fromkeys(table["run"]))
    fig = Figure(figsize=(7.5, 1.3 + len(names) * (0.22 + 0.14 * len(runs))))
    ax = fig.add_subplot()
    step = 0.7 / max(1, len(runs))
    for i, run in enumerate(runs):
        part = table[table["run"] == run]
        y = np.array([names.index(g) for g in part["subgroup"]]) + (i - (len(runs) - 1) / 2) * step
        value = part[estimate].to_numpy(float)
        low = part[f"{estimate}_ci_low"].to_numpy(float)
        high = part[f"{estimate}_ci_high"].to_numpy(float)
        err = np.vstack([np.clip(value - low, 0, None), np.clip(high - value, 0, None)])
        ax.errorbar(value, y, xerr=np.nan_to_num(err), fmt="o", capsize=3, markersize=5, label=run)
    if not names:
        ax.text(0.5, 0.5, f"no subgroup has a {estimate}", ha="center", transform=ax.transAxes)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"{estimate} (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", color="0.9")
    ax.legend(fontsize=8, loc="best")
    return fig


@dataclass(frozen=True)
class OverlayCase:
    """One test image for the overlay figure.

    image: ``(S, S)`` float in [0, 1], the image as the encoder saw it (model-input geometry).
    truth, predicted: bool ``(h, w)`` masks on the same field of view (``None``: unavailable).
    """

    image_id: str
    dice: float
    image: np.ndarray
    truth: np.ndarray | None
    predicted: np.ndarray


def overlay_figure(rows: Sequence[tuple[str, Sequence[OverlayCase]]], title: str) -> Figure:
    """A grid of X-rays with the true (green) and predicted (magenta) mask contours.

    Args:
        rows: ``(row title, cases)``, e.g. ``("best", [...]), ("worst", [...])``.
    """
    columns = max(len(cases) for _, cases in rows)
    fig = Figure(figsize=(2.6 * columns, 2.9 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (row_title, cases) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(cases):
                continue
            case = cases[c]
            height, width = case.image.shape
            ax.imshow(case.image, cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
            _contour(ax, case.truth, (height, width), TRUE_COLOUR)
            _contour(ax, case.predicted, (height, width), PRED_COLOUR)
            ax.set_title(f"{row_title}: {case.image_id}\nDice {case.dice:.3f}", fontsize=8)
    fig.suptitle(f"{title}  (green: truth, magenta: prediction)", fontsize=9)
    return fig


@dataclass(frozen=True)
class PatchMapCase:
    """One test image for the patch-map figure.

    image: ``(S, S)`` float in [0, 1] at the model-input geometry. maps: map name ->
    ``(h, w)`` patch map over the same field of view. mask: bool ``(H, W)`` or ``None``.
    """

    image_id: str
    score: float
    image: np.ndarray
    maps: dict[str, np.ndarray]
    mask: np.ndarray | None = None


def patch_map_figure(cases: Sequence[PatchMapCase], title: str) -> Figure:
    """X-rays with each patch map as a heat overlay (one row per map, scaled per image from
    its minimum to its maximum) and the mask contour (green) where there is one."""
    kinds = list(dict.fromkeys(k for case in cases for k in case.maps))
    fig = Figure(figsize=(2.6 * len(cases), 2.9 * len(kinds) + 0.4))
    axes = fig.subplots(len(kinds), len(cases), squeeze=False)
    for r, kind in enumerate(kinds):
        for c, case in enumerate(cases):
            ax = axes[r][c]
            ax.set_axis_off()
            height, width = case.image.shape
            extent = (0, width, height, 0)
            ax.imshow(case.image, cmap="gray", vmin=0, vmax=1, extent=extent)
            values = case.maps.get(kind)
            if values is not None:
                low, high = float(np.min(values)), float(np.max(values))
                shown = (values - low) / (high - low) if high > low else np.zeros_like(values)
                ax.imshow(
                    shown,
                    cmap="inferno",
                    alpha=0.5,
                    vmin=0,
                    vmax=1,
                    extent=extent,
                    interpolation="nearest",
                )
            _contour(ax, case.mask, (height, width), TRUE_COLOUR)
            ax.set_title(f"{kind} map: {case.image_id}\nP(positive) {case.score:.3f}", fontsize=8)
    fig.suptitle(f"{title}  (bright: high; green: mask)", fontsize=9)
    return fig


def _contour(ax, mask: np.ndarray | None, extent: tuple[int, int], colour: str) -> None:
    """Contour of a ``(h, w)`` mask drawn over an image of ``extent`` pixels, pixel centres
    mapped onto the image (the mask covers the same field of view at its own resolution)."""
    if mask is None or not mask.any():
        return
    h, w = mask.shape
    x = (np.arange(w) + 0.5) * extent[1] / w
    y = (np.arange(h) + 0.5) * extent[0] / h
    # Pad with background so regions touching the border still close.
    padded = np.pad(mask.astype(float), 1)
    x = np.r_[x[0] - extent[1] / w, x, x[-1] + extent[1] / w]
    y = np.r_[y[0] - extent[0] / h, y, y[-1] + extent[0] / h]
    ax.contour(x, y, padded, levels=[0.5], colors=[colour], linewidths=1.6)
    ax.set_xlim(0, extent[1])
    ax.set_ylim(extent[0], 0)
