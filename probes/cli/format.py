"""What the commands print: a run's per-round metrics with median [min, max] and mean ± sd."""

from __future__ import annotations

from probes.core.metrics import format_mean_sd, format_median_range
from probes.core.run import Run

__all__ = ["format_classification", "format_segmentation"]


def _header(run: Run, what: str) -> str:
    info = run.info
    split = info.get("split") or {}
    excluded = len(info.get("excluded") or {})
    return (
        f"{info.get('encoder', '')} / {what}: {info.get('rows', '?')} images ({excluded} "
        f"excluded), {split.get('kind', '?')} split, {split.get('rounds', '?')} rounds"
    )


def format_classification(run: Run) -> str:
    """AUROC and AUPRC per label over the rounds, and the CI method."""
    results = run.results
    budgeted = "budget" in results.columns
    lines = [
        _header(run, run.feature),
        f"{'label':<20} {'budget  ' if budgeted else ''}{'folds':>5}  "
        f"{'AUROC median [min, max]':<24} {'AUROC mean ± sd':<16}  {'AUPRC median [min, max]':<24}",
    ]
    keys = ["label", "budget"] if budgeted else ["label"]
    for key, part in results.groupby(keys, sort=True):
        label = key[0]
        budget = f"{key[1]:<8g}" if budgeted else ""
        lines.append(
            f"{label:<20} {budget}{len(part):>5}  {format_median_range(part['auroc']):<24} "
            f"{format_mean_sd(part['auroc']):<16}  {format_median_range(part['auprc']):<24}"
        )
    if budgeted:
        lines.append("budget rows: over rounds x draws (results.csv has one row per draw)")
    if "ci" in results.columns and len(results):
        lines.append(f"per-round CIs in results.csv: {results['ci'].iat[0]}")
    if run.path is not None:
        lines.append(f"written to {run.path}/")
    return "\n".join(lines)


def format_segmentation(run: Run) -> str:
    """Dice per round (with its CI), then median [min, max] and mean ± sd over rounds."""
    results = run.results
    size = run.info.get("mask_size") or ["?", "?"]
    rule = run.info.get("mask_size_rule")
    lines = [
        _header(run, f"{run.feature}, mask {run.info.get('mask', '')} at {size[0]}x{size[1]}"),
        f"{'round':>5} {'images':>6}  {'Dice':>6}  {'95% CI':<15} {'median':>6}  {'IoU':>6}  "
        f"{'pooled':>6}  {'epoch':>5}",
    ]
    budgeted = "budget" in results.columns
    if budgeted:
        lines[-1] = f"{'budget':<8} {'draw':>4} " + lines[-1]
    for _, r in results.iterrows():
        ci = f"[{r['dice_ci_low']:.3f}, {r['dice_ci_high']:.3f}]"
        at = f"{r['budget']:<8g} {r['draw']:>4} " if budgeted else ""
        lines.append(
            f"{at}{r['round']:>5} {r['images']:>6}  {r['dice']:6.3f}  {ci:<15} "
            f"{r['dice_median']:6.3f}  {r['iou']:6.3f}  {r['dice_pooled']:6.3f}  "
            f"{r['best_epoch']:>5}"
        )
    for metric, name in (("dice", "Dice"), ("iou", "IoU")):
        lines.append(
            f"{name:<5} median [min, max] {format_median_range(results[metric])}   "
            f"mean ± sd {format_mean_sd(results[metric])}"
        )
    if rule:
        lines.append(f"mask resolution: {rule}")
    if run.path is not None:
        lines.append(f"written to {run.path}/")
    return "\n".join(lines)
