"""Comparing several runs over blocks: the wide score table, Friedman test with Nemenyi post-hoc,
the Nemenyi critical difference (Demsar 2006) and its diagram, pairwise Wilcoxon-Holm.

Blocks are the rows of a wide score table (:func:`fold_scores`): rounds, or (label, round)
pairs. With five folds as blocks this analysis has little power; see
docs/statistics.md for the per-image paired tests that do. Import from :mod:`probes.analysis.stats`::

    scores = fold_scores({"rad-dino": r1, "dinov2": r2, "biomedclip": r3}, "auroc")
    result = friedman_nemenyi(scores)
    fig = plot_critical_difference(result, title="pneumothorax AUROC")
    fig.savefig("cd.png")
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats as ss

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FriedmanResult",
    "critical_difference",
    "fold_scores",
    "friedman_nemenyi",
    "plot_critical_difference",
    "wilcoxon_holm",
]


def fold_scores(runs: Mapping[str, pd.DataFrame], metric: str = "auroc") -> pd.DataFrame:
    """Wide table of one metric: index = blocks, columns = run names.

    Args:
        runs: run name -> results table (``results.csv``). Blocks are ``(label, round)`` when
            the tables have a ``label`` column (classification), else ``round`` (segmentation).
        metric: a results column (``auroc``, ``auprc``, ``dice``, ``dice_pooled``, ...).

    Raises ``ValueError`` naming the run whose blocks differ from the first run's, or that
    lacks the metric or repeats a block.
    """
    columns = {}
    for name, table in runs.items():
        if metric not in table.columns:
            raise ValueError(
                f"run {name!r} has no {metric!r} column; columns: {', '.join(table.columns)}"
            )
        keys = ["label", "round"] if "label" in table.columns else ["round"]
        series = table.set_index(keys)[metric].astype(np.float64)
        if series.index.has_duplicates:
            dup = series.index[series.index.duplicated()].unique().tolist()
            raise ValueError(f"run {name!r} repeats blocks {dup[:5]}")
        columns[name] = series.sort_index()
    if not columns:
        raise ValueError("no runs given")
    first, reference = next(iter(columns.items()))
    for name, series in columns.items():
        if not series.index.equals(reference.index):
            extra = series.index.difference(reference.index).tolist()
            lacking = reference.index.difference(series.index).tolist()
            raise ValueError(
                f"run {name!r} has blocks that differ from run {first!r}: "
                f"extra {extra[:5]}, missing {lacking[:5]}"
            )
    return pd.DataFrame(columns)


def wilcoxon_holm(scores: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided) of every pair of runs
    over the blocks, Holm-adjusted over all pairs (statsmodels ``multipletests``).

    Args:
        scores: ``(N blocks, k runs)`` table (:func:`fold_scores`); blocks with a NaN in either
            run of a pair are left out of that pair.

    Returns one row per pair: ``a, b, n`` (blocks used), ``median_difference`` (a - b),
    ``statistic, pvalue, pvalue_holm, reject``. A pair whose differences are all zero gets
    p = 1 (scipy's value, without its warning).
    """
    from statsmodels.stats.multitest import multipletests  # a scikit-posthocs dependency

    if scores.shape[1] < 2:
        raise ValueError(f"need at least 2 runs, got {list(scores.columns)}")
    rows = []
    for a, b in itertools.combinations(scores.columns, 2):
        d = (scores[a] - scores[b]).to_numpy(np.float64)
        d = d[~np.isnan(d)]
        if len(d) == 0:
            raise ValueError(f"runs {a!r} and {b!r} share no block with both scores")
        with warnings.catch_warnings():
            # all-zero differences: scipy returns p = 1 after a 0/0 warning
            warnings.simplefilter("ignore", RuntimeWarning)
            test = ss.wilcoxon(d)
        rows.append(
            {
                "a": a,
                "b": b,
                "n": len(d),
                "median_difference": float(np.median(d)),
                "statistic": float(test.statistic),
                "pvalue": float(test.pvalue),
            }
        )
    table = pd.DataFrame(rows)
    reject, adjusted, _, _ = multipletests(table["pvalue"], alpha=alpha, method="holm")
    table["pvalue_holm"], table["reject"] = adjusted, reject
    return table


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test over blocks with its Nemenyi post-hoc.

    ``ranks``: average rank of each run over the blocks (1 = best, ties averaged);
    ``nemenyi``: ``(k, k)`` pairwise p-values; ``critical_difference``: the smallest average-rank
    difference Nemenyi calls significant at ``alpha``.
    """

    statistic: float
    pvalue: float
    n_blocks: int
    ranks: pd.Series
    nemenyi: pd.DataFrame
    critical_difference: float
    higher_is_better: bool
    alpha: float


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks for ``k`` runs over ``n_blocks`` blocks:
    ``q_alpha * sqrt(k (k + 1) / (6 N))``, ``q_alpha`` the studentized range quantile over
    ``sqrt(2)`` (Demsar 2006, Table 5: 2.343 for k = 3, 3.102 for k = 9 at alpha 0.05)."""
    q = ss.studentized_range.ppf(1.0 - alpha, k, np.inf) / np.sqrt(2.0)
    return float(q * np.sqrt(k * (k + 1) / (6.0 * n_blocks)))


def friedman_nemenyi(
    scores: pd.DataFrame, *, higher_is_better: bool = True, alpha: float = 0.05
) -> FriedmanResult:
    """Friedman test (``scipy.stats.friedmanchisquare``, tie-corrected) and Nemenyi post-hoc
    (``scikit_posthocs.posthoc_nemenyi_friedman``) of the runs in ``scores``.

    Args:
        scores: ``(N blocks, k runs)`` metric values, columns = run names (fold_scores' table).
        higher_is_better: ``True`` for AUROC / Dice, ``False`` for losses; sets which end of
            each block gets rank 1. The p-values do not depend on it.
        alpha: level of the critical difference (and of the diagram's crossbars).

    Statistic and p-value are NaN when every block is a complete tie (scipy's behaviour).
    """
    import scikit_posthocs  # heavy (seaborn, statsmodels): loaded on first use

    k, n = scores.shape[1], scores.shape[0]
    if k < 3:
        raise ValueError(
            f"Friedman/Nemenyi needs at least 3 runs, got {k} ({list(scores.columns)}); "
            "compare two runs with wilcoxon_holm or paired_image_tests"
        )
    if n < 2:
        raise ValueError(f"Friedman/Nemenyi needs at least 2 blocks, got {n}")
    values = scores.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        rows, cols = np.nonzero(np.isnan(values))
        where = ", ".join(
            f"{scores.columns[c]!r} at {scores.index[r]!r}" for r, c in zip(rows, cols, strict=True)
        )
        raise ValueError(f"missing scores (NaN): {where}")
    statistic, pvalue = ss.friedmanchisquare(*values.T)
    ranked = ss.rankdata(-values if higher_is_better else values, method="average", axis=1)
    ranks = pd.Series(ranked.mean(axis=0), index=scores.columns, name="average_rank")
    # Nemenyi p-values depend on |rank differences| only, so the direction is irrelevant here.
    table = pd.DataFrame(values, columns=scores.columns)
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(table)
    return FriedmanResult(
        statistic=float(statistic),
        pvalue=float(pvalue),
        n_blocks=n,
        ranks=ranks,
        nemenyi=nemenyi,
        critical_difference=critical_difference(k, n, alpha),
        higher_is_better=higher_is_better,
        alpha=alpha,
    )


def plot_critical_difference(result: FriedmanResult, *, title: str | None = None) -> Figure:
    """Critical-difference diagram: runs on the average-rank axis (1 = best, left), runs that
    Nemenyi does not separate at ``alpha`` joined by crossbars, and the CD as a bar above.

    Drawn by ``scikit_posthocs.critical_difference_diagram`` on a new
    :class:`matplotlib.figure.Figure` (no pyplot state); save it with ``fig.savefig``.
    """
    import scikit_posthocs
    from matplotlib.figure import Figure

    k = len(result.ranks)
    fig = Figure(figsize=(7.0, 1.4 + 0.3 * k))
    ax = fig.add_subplot()
    scikit_posthocs.critical_difference_diagram(
        result.ranks,
        result.nemenyi,
        alpha=result.alpha,
        ax=ax,
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
    )
    # Our own CD bar: scikit-posthocs' (``cd=``) sits at y = 0.5, on top of the tick labels.
    cd, y = result.critical_difference, 1.4
    ax.plot([1, 1 + cd], [y, y], color="k", linewidth=1.5)
    ax.plot([1, 1, np.nan, 1 + cd, 1 + cd], [y - 0.15, y + 0.15, np.nan, y - 0.15, y + 0.15], "k")
    ax.text(1 + cd / 2, y + 0.25, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    ax.set_xlim(1, max(k, 1 + cd))
    ax.set_xticks(range(1, k + 1))
    ax.set_ylim(top=y + 1.2)
    # The diagram writes its labels outside the rank axis: leave room on both sides.
    fig.subplots_adjust(left=0.27, right=0.73, top=1 - 0.6 / fig.get_figheight(), bottom=0.04)
    summary = (
        f"Friedman chi2 = {result.statistic:.2f}, p = {result.pvalue:.3g}, "
        f"{result.n_blocks} blocks, CD = {result.critical_difference:.2f} at alpha {result.alpha}"
    )
    fig.suptitle(f"{title}\n{summary}" if title else summary, fontsize=9)
    return fig
