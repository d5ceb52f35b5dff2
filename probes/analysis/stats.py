"""Comparing runs (encoders, probe vs fine-tune) honestly.

Two levels, both from the run folders ``probes linear`` / ``probes seg`` write:

- per image, paired (the power): DeLong's test of two AUROCs on the same test images,
  paired bootstrap (clustered by patient) and sign-flip permutation tests of a per-image metric
  such as Dice; :func:`paired_image_tests` runs them on two predictions tables;
- per block (fold, or label x fold): Friedman + Nemenyi with the critical difference and its
  diagram, pairwise Wilcoxon with Holm's correction, on :func:`fold_scores` tables. With five
  folds as blocks these have little power (a two-sided Wilcoxon over 5 blocks cannot go below
  p = 0.0625).

::

    check_same_folds({"rad-dino": pred1, "dinov2": pred2})         # raises if folds differ
    paired_image_tests(pred1, pred2)                               # DeLong per label / round
    result = friedman_nemenyi(fold_scores({"a": res1, "b": res2, "c": res3}, "auroc"))
    plot_critical_difference(result).savefig("cd.png")

See docs/statistics.md for which test answers what.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

# One module per level, re-exported here: per-block tests in cd_diagram.py, per-image tests on
# arrays in paired.py; this module compares run tables.
from probes.analysis.cd_diagram import (
    FriedmanResult,
    critical_difference,
    fold_scores,
    friedman_nemenyi,
    plot_critical_difference,
    wilcoxon_holm,
)
from probes.analysis.paired import (
    DeLongResult,
    PairedResult,
    delong_test,
    delong_variance,
    paired_auroc_bootstrap,
    paired_bootstrap,
    paired_permutation,
)

__all__ = [
    "DeLongResult",
    "FriedmanResult",
    "PairedResult",
    "check_same_folds",
    "critical_difference",
    "delong_test",
    "delong_variance",
    "fold_scores",
    "friedman_nemenyi",
    "paired_auroc_bootstrap",
    "paired_bootstrap",
    "paired_image_tests",
    "paired_permutation",
    "plot_critical_difference",
    "wilcoxon_holm",
]

# --- run tables ---------------------------------------------------------------------------


def check_same_folds(runs: Mapping[str, pd.DataFrame]) -> None:
    """Raise ``ValueError`` unless every run tested the same image ids in every round.

    Args:
        runs: run name -> predictions table (``round``, ``split``, ``image_id`` columns).
            Each run is compared with the first; the message names both runs and the round.
    """
    tested = {}
    for name, table in runs.items():
        missing = {"round", "split", "image_id"} - set(table.columns)
        if missing:
            raise ValueError(f"run {name!r}: predictions table lacks columns {sorted(missing)}")
        test = table[table["split"] == "test"]
        tested[name] = {
            int(r): frozenset(ids.astype(str)) for r, ids in test.groupby("round")["image_id"]
        }
    if not tested:
        return
    first, reference = next(iter(tested.items()))
    for name, rounds in tested.items():
        if set(rounds) != set(reference):
            raise ValueError(
                f"runs {first!r} and {name!r} have different rounds: "
                f"{sorted(reference)} vs {sorted(rounds)}"
            )
        for r, ids in rounds.items():
            if ids != reference[r]:
                only_a, only_b = sorted(reference[r] - ids), sorted(ids - reference[r])
                raise ValueError(
                    f"runs {first!r} and {name!r} tested different images in round {r}: "
                    f"{len(only_a)} only in {first!r} (e.g. {only_a[:3]}), "
                    f"{len(only_b)} only in {name!r} (e.g. {only_b[:3]}); "
                    "a comparison on different folds is meaningless"
                )


# --- two runs, image by image -------------------------------------------------------------


def _matched(a: pd.DataFrame, b: pd.DataFrame, keys: Sequence[str], names) -> pd.DataFrame:
    """Test rows of ``a`` and ``b`` joined one to one on ``keys`` (suffixes _a, _b)."""
    ta, tb = (t[t["split"] == "test"] for t in (a, b))
    for name, t in zip(names, (ta, tb), strict=True):
        dup = t.duplicated(list(keys))
        if dup.any():
            first = t.loc[dup, list(keys)].iloc[0].to_dict()
            raise ValueError(f"run {name!r} has {int(dup.sum())} repeated test rows, e.g. {first}")
    joined = ta.merge(tb, on=list(keys), how="outer", suffixes=("_a", "_b"), indicator=True)
    unmatched = joined[joined["_merge"] != "both"]
    if len(unmatched):
        first = unmatched[list(keys)].iloc[0].to_dict()
        raise ValueError(
            f"runs {names[0]!r} and {names[1]!r}: {len(unmatched)} test rows without a partner, "
            f"e.g. {first}"
        )
    if (joined["patient_id_a"].astype(str) != joined["patient_id_b"].astype(str)).any():
        raise ValueError(f"runs {names[0]!r} and {names[1]!r} give images different patient ids")
    return joined


def paired_image_tests(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    names: tuple[str, str] = ("a", "b"),
) -> pd.DataFrame:
    """Image-level paired comparison of two runs on the same folds (``difference = a - b``).

    Args:
        a, b: predictions tables of two runs (``probes linear``/``seg`` or fine-tuning), checked
            with :func:`check_same_folds`; test rows are matched on ``(round, image_id, label)``
            (classification) or ``(round, image_id)`` (segmentation). names: for messages.

    Returns one row per comparison: ``label`` ("" for segmentation), ``round`` (-1 = all rounds'
    test rows pooled: each image once per round it was tested in), ``test`` (``delong`` on
    AUROC, plus a pooled ``bootstrap`` of AUROC over patients when a patient has several
    images; ``bootstrap`` of mean Dice clustered by patient), ``metric``, ``estimate_a``,
    ``estimate_b``, ``difference``, ``ci_low``, ``ci_high``, ``pvalue``, ``n`` (images; for
    DeLong also ``n_positive``, ``n_negative``). p-values are not adjusted for multiplicity.
    """
    check_same_folds(dict(zip(names, (a, b), strict=True)))
    if {"truth", "score"} <= set(a.columns) and {"truth", "score"} <= set(b.columns):
        joined = _matched(a, b, ("round", "image_id", "label"), names)
        return _delong_rows(joined, names, n_boot, seed)
    if "dice" in a.columns and "dice" in b.columns:
        return _bootstrap_rows(_matched(a, b, ("round", "image_id"), names), n_boot, seed)
    raise ValueError(
        "paired_image_tests needs two classification tables (truth, score) or two "
        "segmentation tables (dice)"
    )


def _delong_rows(joined: pd.DataFrame, names, n_boot: int, seed: int) -> pd.DataFrame:
    if (joined["truth_a"] != joined["truth_b"]).any():
        raise ValueError(f"runs {names[0]!r} and {names[1]!r} disagree on truth for some images")
    rows = []
    for label, part in joined.groupby("label", sort=True):
        if part["patient_id_a"].duplicated().any():  # DeLong alone would be too confident
            res = paired_auroc_bootstrap(
                part["truth_a"],
                part["score_a"],
                part["score_b"],
                groups=part["patient_id_a"],
                n_boot=n_boot,
                seed=seed,
            )
            rows.append(
                {
                    "label": label,
                    "round": -1,
                    "test": "bootstrap",
                    "metric": "auroc",
                    "estimate_a": res.estimate_a,
                    "estimate_b": res.estimate_b,
                    "difference": res.difference,
                    "ci_low": res.ci_low,
                    "ci_high": res.ci_high,
                    "pvalue": res.pvalue,
                    "n": res.n,
                }
            )
        blocks = [(-1, part)] + list(part.groupby("round", sort=True))
        for round_, rows_ in blocks:
            res = delong_test(rows_["truth_a"], rows_["score_a"], rows_["score_b"])
            rows.append(
                {
                    "label": label,
                    "round": int(round_),
                    "test": "delong",
                    "metric": "auroc",
                    "estimate_a": res.auroc_a,
                    "estimate_b": res.auroc_b,
                    "difference": res.difference,
                    "ci_low": res.ci_low,
                    "ci_high": res.ci_high,
                    "pvalue": res.pvalue,
                    "n": len(rows_),
                    "n_positive": res.n_positive,
                    "n_negative": res.n_negative,
                }
            )
    return pd.DataFrame(rows)


def _bootstrap_rows(joined: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    rows = []
    for round_, part in [(-1, joined)] + list(joined.groupby("round", sort=True)):
        res = paired_bootstrap(
            part["dice_a"], part["dice_b"], groups=part["patient_id_a"], n_boot=n_boot, seed=seed
        )
        rows.append(
            {
                "label": "",
                "round": int(round_),
                "test": "bootstrap",
                "metric": "dice",
                "estimate_a": res.estimate_a,
                "estimate_b": res.estimate_b,
                "difference": res.difference,
                "ci_low": res.ci_low,
                "ci_high": res.ci_high,
                "pvalue": res.pvalue,
                "n": res.n,
            }
        )
    return pd.DataFrame(rows)
