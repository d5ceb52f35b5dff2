"""Label-efficiency curves from a budgeted run's predictions, and paired tests at each budget.

A budgeted run (``--budgets``, :mod:`probes.core.budgets`) scores every test image once per
(budget, draw). At each budget the curve's value is the metric of the test rows of all rounds
pooled (AUROC per label, or mean Dice), averaged over the draws; its 95% CI is the one
bootstrap (:mod:`probes.core.bootstrap`): whole patients resampled, the same resample applied
to every draw, the draw-averaged metric recomputed. It is the uncertainty of evaluating on these
test patients; the spread from which training patients were drawn is reported beside it
(``draw_sd``, ``draw_min``, ``draw_max``)::

    curve = budget_curve(run.predictions, n_boot=1000)        # one row per (label,) budget
    tests = paired_budget_tests(a.predictions, b.predictions)  # one row per (label,) budget

Two runs at one budget are paired by construction: the draws are seeded by (split seed, round,
draw), so both trained on the same patients and were tested on the same images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from probes.core.bootstrap import (
    bootstrap_ci,
    patient_codes,
    patient_draws,
    weighted_mean,
    weighted_metrics,
)

__all__ = ["budget_curve", "paired_budget_tests"]

KEY = ["image_id", "round"]


def _is_classification(predictions: pd.DataFrame) -> bool:
    return "dice" not in predictions.columns


def _groups(test: pd.DataFrame) -> list[tuple[str, float, pd.DataFrame]]:
    """``(label, budget, rows)``: label ``""`` for segmentation."""
    out = []
    if _is_classification(test):
        for (label, budget), part in test.groupby(["label", "budget"], sort=True):
            out.append((str(label), float(budget), part))
    else:
        for budget, part in test.groupby("budget", sort=True):
            out.append(("", float(budget), part))
    return out


def _aligned(
    part: pd.DataFrame, draws: list[int], order: pd.Index | None = None
) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    """Every draw's test rows in one row order (``order``, an (image_id, round) index, or the
    first draw's), and the first of them as a plain table. ValueError if a draw was tested on
    other images."""
    by_draw = {int(d): rows.set_index(KEY) for d, rows in part.groupby("draw", sort=True)}
    order = by_draw[draws[0]].index if order is None else order
    aligned = {}
    for d in draws:
        rows = by_draw[d]
        if len(rows) != len(order) or not rows.index.isin(order).all():
            raise ValueError(f"draw {d} was tested on other images (test rows differ)")
        aligned[d] = rows.loc[order]
    return aligned[draws[0]].reset_index(), aligned


def _statistic(
    aligned: dict[int, pd.DataFrame], classification: bool
) -> Callable[[np.ndarray], np.ndarray]:
    """``weights (b, n) -> (b,)``: the metric averaged over the draws, per weighting."""
    if classification:
        truth = next(iter(aligned.values()))["truth"].to_numpy(int)
        scores = [rows["score"].to_numpy(float) for rows in aligned.values()]
        return lambda w: np.mean([weighted_metrics(truth, s, w)["auroc"] for s in scores], axis=0)
    values = [rows["dice"].to_numpy(float) for rows in aligned.values()]
    return lambda w: np.mean([weighted_mean(v, w) for v in values], axis=0)


def budget_curve(
    predictions: pd.DataFrame, *, n_boot: int = 1000, seed: int = 5656
) -> pd.DataFrame:
    """One row per (label x) budget of a budgeted run: the draw-averaged pooled metric.

    Args:
        predictions: a budgeted run's predictions (``budget`` and ``draw`` columns).

    Returns columns label ("" for segmentation), budget, metric (``auroc`` or ``dice``),
    estimate, ci_low, ci_high (95% patient bootstrap, see the module docstring), draws,
    draw_sd (ddof 1; 0 for one draw), draw_min, draw_max, images (pooled test rows), n_train
    (median training images per round).
    """
    if "budget" not in predictions.columns:
        raise ValueError("these predictions have no budget column (run without --budgets)")
    test = predictions[predictions["split"] == "test"]
    classification = _is_classification(test)
    rows = []
    for label, budget, part in _groups(test):
        draws = sorted(int(d) for d in part["draw"].unique())
        first, aligned = _aligned(part, draws)
        statistic = _statistic(aligned, classification)
        ones = np.ones((1, len(first)))
        per_draw = [float(_statistic({d: aligned[d]}, classification)(ones)[0]) for d in draws]
        low, high = bootstrap_ci(
            statistic, first["patient_id"].to_numpy(str), n_boot=n_boot, seed=seed
        )
        n_train = part.groupby(["round", "draw"])["n_train"].first() if "n_train" in part else []
        rows.append(
            {
                "label": label,
                "budget": budget,
                "metric": "auroc" if classification else "dice",
                "estimate": float(statistic(ones)[0]),
                "ci_low": low,
                "ci_high": high,
                "draws": len(draws),
                "draw_sd": float(np.std(per_draw, ddof=1)) if len(draws) > 1 else 0.0,
                "draw_min": float(np.min(per_draw)),
                "draw_max": float(np.max(per_draw)),
                "images": len(first),
                "n_train": float(np.median(n_train)) if len(n_train) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def paired_budget_tests(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired comparison of two budgeted runs at every budget (and label) both have.

    At each budget: the difference of the draw-averaged pooled metric (AUROC, or mean Dice),
    a - b, over the draws both runs share, its percentile interval and two-sided p-value from
    resampling whole patients (the same resample for both runs and every draw; p as
    :func:`probes.analysis.paired.paired_bootstrap`). With one draw and classification it is
    :func:`probes.analysis.paired.paired_auroc_bootstrap`.

    Raises ``ValueError`` when the runs were not tested on the same images at a budget.
    """
    ta, tb = a[a["split"] == "test"], b[b["split"] == "test"]
    classification = _is_classification(ta)
    groups_b = {(label, budget): part for label, budget, part in _groups(tb)}
    rows = []
    for label, budget, part_a in _groups(ta):
        part_b = groups_b.get((label, budget))
        if part_b is None:
            continue
        draws = sorted(set(part_a["draw"].astype(int)) & set(part_b["draw"].astype(int)))
        if not draws:
            continue
        first, aligned_a = _aligned(part_a, draws)
        try:
            _, aligned_b = _aligned(part_b, draws, order=aligned_a[draws[0]].index)
        except ValueError:
            raise ValueError(
                f"budget {budget:g}: the two runs were tested on different images"
            ) from None
        stat_a = _statistic(aligned_a, classification)
        stat_b = _statistic(aligned_b, classification)
        ones = np.ones((1, len(first)))
        est_a, est_b = float(stat_a(ones)[0]), float(stat_b(ones)[0])
        codes, n_groups = patient_codes(first["patient_id"].to_numpy(str))
        boot = np.concatenate(
            [stat_a(w) - stat_b(w) for w in patient_draws(codes, n_groups, n_boot, seed)]
        )
        boot = boot[~np.isnan(boot)]
        if boot.size:
            low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
            k = boot.size
            below = (np.sum(boot <= 0) + 1) / (k + 1)
            above = (np.sum(boot >= 0) + 1) / (k + 1)
            p = float(min(1.0, 2 * min(below, above)))
        else:
            low = high = p = float("nan")
        rows.append(
            {
                "label": label,
                "budget": budget,
                "metric": "auroc" if classification else "dice",
                "draws": len(draws),
                "estimate_a": est_a,
                "estimate_b": est_b,
                "difference": est_a - est_b,
                "ci_low": float(low),
                "ci_high": float(high),
                "pvalue": p,
                "n": len(first),
                "method": "paired bootstrap over patients of the draw-averaged metric",
            }
        )
    return pd.DataFrame(rows)
