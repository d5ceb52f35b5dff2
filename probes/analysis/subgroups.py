"""Subgroup analysis of per-row predictions: metrics per metadata group and lesion-size bin.

::

    predictions = read_table("out/predictions.parquet")            # probes linear / probes seg
    manifest = pd.read_csv("cohort/manifest.csv", dtype={"image_id": str})
    subgroup_table(predictions, manifest, by=["chest_tube"], size_column="ptx_area_pct",
                   size_bins=4)                  # the study's tube x size-quartile table
    sensitivity_gap(predictions, manifest, "chest_tube")   # with - without, CI over patients

Predictions are joined to the metadata by ``image_id``, never by position. The test rows of all
rounds are pooled (in cross-validation each image is a test image in one round). Confidence
intervals are 95% percentile bootstraps over patients: a patient's images are resampled
together (:mod:`probes.core.bootstrap`, the one bootstrap), so several films of one
patient do not narrow an interval falsely.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from probes.core.bootstrap import bootstrap_ci, clustered_mean_ci, weighted_mean, weighted_metrics
from probes.core.metrics import auroc, youden_threshold

__all__ = ["ALL", "NO_LESION", "sensitivity_gap", "subgroup_table"]

#: The value of a grouping column (``by`` or ``size_bin``) in rows that do not split by it.
ALL = "all"
#: The ``size_bin`` of rows without a lesion (negatives) when sizes are binned.
NO_LESION = "no lesion"
#: Columns that must hold one value per label for the rows to come from one run.
RUN_COLUMNS = ("encoder", "feature", "grid", "mask", "probe", "params")
_PRESENT = {"1", "1.0", "true", "yes", "y"}
_ABSENT = {"0", "0.0", "false", "no", "n"}


def subgroup_table(
    predictions: pd.DataFrame,
    metadata: pd.DataFrame,
    by: Sequence[str] = (),
    *,
    size_column: str | None = None,
    size_bins: int = 0,
    threshold: float | str = 0.5,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Metrics per subgroup of the ``split`` rows of a classification or segmentation run.

    Args:
        predictions: classification rows (``truth``, ``score``, ``label``, ``round``, ``split``)
            as :func:`probes.core.results.cross_predict` writes, or segmentation rows (``dice``)
            as ``probes seg`` writes; ``image_id`` and ``patient_id`` in both.
        metadata: a table with ``image_id`` (the manifest) holding the ``by`` columns.
        by: grouping columns, looked up in ``metadata`` first, then in ``predictions``.
        size_column: lesion size (``ptx_area_pct`` of the manifest, or the segmentation
            table's own ``mask_area``), cut into ``size_bins`` quantile bins among the images
            with a lesion (``truth == 1``; for segmentation rows, size > 0). Edges are the
            quantiles 0, 1/q, ..., 1 of those images' sizes, each image counted once (numpy's
            linear interpolation, duplicate edges merged); bins are right-closed, the first
            also closed on the left (``pandas.qcut``). Images without a lesion get ``size_bin``
            :data:`NO_LESION`.
        threshold: a probability, or ``"youden"``: each round's threshold maximising Youden's
            J on its own validation rows, applied to that round's test rows.
        split: which rows to score (``test``; ``val`` for validation).
        n_boot, seed: bootstrap resamples and seed of every CI.

    Returns:
        One row per subgroup: first the :data:`ALL` row, then one per ``by`` group, one per size
        bin (``by`` columns :data:`ALL`), one per ``by`` group x size bin; per label (a
        ``label`` column leads when the rows hold one). Columns: the ``by`` columns and
        ``size_bin`` (values as text; :data:`ALL` where the row does not split by it),
        ``size_low`` / ``size_high`` (the bin's edges, NaN otherwise), ``n`` (rows), ``patients``,
        ``positives``, ``negatives``, then for classification ``sensitivity``,
        ``specificity`` (at the threshold) and ``auroc``, each with ``_ci_low`` / ``_ci_high``
        (NaN where the subgroup lacks the class it needs), and for segmentation ``dice``
        (mean), ``dice_ci_low`` / ``dice_ci_high``, ``dice_median``.

    Raises:
        ValueError naming unknown image ids, missing columns, or a mix of runs in the rows.
    """
    by = [by] if isinstance(by, str) else list(by)
    if (size_column is None) != (size_bins < 1):
        raise ValueError(
            f"give both size_column and size_bins >= 1, or neither (got size_column="
            f"{size_column!r}, size_bins={size_bins})"
        )
    classification = _kind(predictions) == "classification"
    needed = by + ([size_column] if size_column else [])
    rows = _scored_rows(predictions, metadata, needed, threshold, split, classification)
    if classification:
        rows["_lesion"] = rows["truth"].to_numpy(int) == 1
    elif size_column:
        rows["_lesion"] = pd.to_numeric(rows[size_column], errors="coerce").to_numpy(float) > 0
    elif "mask_area" in rows.columns:
        rows["_lesion"] = rows["mask_area"].to_numpy(float) > 0
    for column in by:
        rows[column] = rows[column].astype(str)
    edges = np.array([np.nan, np.nan])
    if size_column:
        rows["size_bin"], edges = _size_bins(rows, size_column, size_bins)
    else:
        rows["size_bin"] = ALL
    labels = rows["label"].unique().tolist() if "label" in rows.columns else [None]
    out = []
    for label in labels:
        part = rows if label is None else rows[rows["label"] == label]
        for keys, group in _subgroups(part, by, bool(size_column)):
            record: dict[str, object] = {} if label is None else {"label": label}
            record.update(keys)
            bin_index = _bin_index(keys["size_bin"])
            record["size_low"] = edges[bin_index] if bin_index is not None else np.nan
            record["size_high"] = edges[bin_index + 1] if bin_index is not None else np.nan
            record.update(_counts(group))
            if classification:
                record.update(_classification_metrics(group, n_boot, seed))
            else:
                record.update(_segmentation_metrics(group, n_boot, seed))
            out.append(record)
    return pd.DataFrame(out)


def sensitivity_gap(
    predictions: pd.DataFrame,
    metadata: pd.DataFrame,
    confounder: str,
    *,
    threshold: float | str = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Sensitivity among test positives with the confounder present minus without it.

    The reference study's shortcut check (chest tube present vs absent). A probe that scores the
    confounder instead of the finding shows a large positive gap.

    Args:
        predictions: classification rows of one label (test rows of all rounds are pooled).
        metadata: a table with ``image_id`` and the ``confounder`` column, whose values are
            1/True/"1"/"yes" (present) or 0/False/"0"/"no" (absent).
        threshold: a probability, or ``"youden"`` (each round's, from its validation rows).

    Returns:
        ``sensitivity_with``, ``sensitivity_without``, ``gap`` (with - without),
        ``gap_ci_low`` / ``gap_ci_high`` (95% bootstrap over patients), ``n_with`` /
        ``n_without`` (positive test rows), ``confounder`` and ``threshold`` (as given).
    """
    if _kind(predictions) != "classification":
        raise ValueError("sensitivity_gap needs classification rows (truth, score)")
    rows = _scored_rows(predictions, metadata, [confounder], threshold, "test", True)
    if "label" in rows.columns and rows["label"].nunique() > 1:
        raise ValueError(
            f"the predictions hold several labels {sorted(rows['label'].unique())}; pass the rows "
            "of one label"
        )
    positives = rows[rows["truth"].to_numpy(int) == 1]
    present = _present(positives[confounder], confounder)
    hit = positives["_predicted"].to_numpy(float)
    low, high = float("nan"), float("nan")
    if present.any() and (~present).any() and n_boot > 0:
        low, high = bootstrap_ci(
            lambda w: (
                weighted_mean(hit[present], w[:, present])
                - weighted_mean(hit[~present], w[:, ~present])
            ),
            positives["patient_id"].to_numpy(str),
            n_boot=n_boot,
            seed=seed,
        )
    with_, without = _mean(hit[present]), _mean(hit[~present])
    return {
        "sensitivity_with": with_,
        "sensitivity_without": without,
        "gap": with_ - without,
        "gap_ci_low": low,
        "gap_ci_high": high,
        "n_with": int(present.sum()),
        "n_without": int((~present).sum()),
        "confounder": confounder,
        "threshold": threshold,
    }


def _kind(predictions: pd.DataFrame) -> str:
    if {"truth", "score"} <= set(predictions.columns):
        return "classification"
    if "dice" in predictions.columns:
        return "segmentation"
    raise ValueError(
        "predictions need truth and score columns (classification) or dice (segmentation); "
        f"got {list(predictions.columns)}"
    )


def _scored_rows(
    predictions: pd.DataFrame,
    metadata: pd.DataFrame,
    columns: Sequence[str],
    threshold: float | str,
    split: str,
    classification: bool,
) -> pd.DataFrame:
    """The ``split`` rows with ``_predicted`` (classification) and the metadata ``columns``
    joined on image_id."""
    for column in ("image_id", "patient_id", "split"):
        if column not in predictions.columns:
            raise ValueError(f"the predictions table has no {column!r} column")
    _check_one_run(predictions)
    rows = predictions.reset_index(drop=True)  # _thresholds indexes rows by position
    rows["image_id"] = rows["image_id"].astype(str)
    if classification:
        rows["_predicted"] = rows["score"].to_numpy(float) >= _thresholds(rows, threshold)
    rows = rows[rows["split"] == split].reset_index(drop=True)
    if rows.empty:
        splits = sorted(predictions["split"].unique())
        raise ValueError(f"the predictions table has no {split!r} rows (splits: {splits})")
    return _join(rows, metadata, columns)


def _check_one_run(predictions: pd.DataFrame) -> None:
    keys = ["label"] if "label" in predictions.columns else []
    for column in RUN_COLUMNS:
        if column not in predictions.columns:
            continue
        counts = predictions.groupby(keys)[column].nunique() if keys else None
        mixed = predictions[column].nunique() > 1 if counts is None else (counts > 1).any()
        if mixed:
            raise ValueError(
                f"the predictions mix several {column!r} values "
                f"({predictions[column].unique()[:5].tolist()}) within one label; filter the "
                "rows of one run first"
            )


def _thresholds(rows: pd.DataFrame, threshold: float | str) -> np.ndarray:
    """``(n,)`` threshold of each row: the number, or its round's validation Youden point."""
    if not isinstance(threshold, str):
        return np.full(len(rows), float(threshold))
    if threshold != "youden":
        raise ValueError(f"threshold must be a number or 'youden', got {threshold!r}")
    out = np.full(len(rows), np.nan)
    keys = [k for k in ("label", "round") if k in rows.columns]
    for key, part in rows.groupby(keys, sort=True) if keys else [((), rows)]:
        val = part[part["split"] == "val"]
        if val["truth"].nunique() < 2:
            where = dict(zip(keys, np.atleast_1d(np.asarray(key, dtype=object)), strict=True))
            raise ValueError(
                f"threshold='youden' needs validation rows of both classes; {where} has "
                f"{len(val)} validation row(s) with truths {sorted(val['truth'].unique())}"
            )
        truth, score = val["truth"].to_numpy(int), val["score"].to_numpy(float)
        out[part.index.to_numpy()] = youden_threshold(truth, score)
    return out


def _join(rows: pd.DataFrame, metadata: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Check every image id against ``metadata`` and add ``columns`` (from ``metadata`` by
    image_id, else already in ``rows``)."""
    if "image_id" not in metadata.columns:
        raise ValueError("the metadata table has no 'image_id' column to join on")
    missing = [c for c in columns if c not in metadata.columns and c not in rows.columns]
    if missing:
        raise ValueError(
            f"no column {', '.join(map(repr, missing))} in the metadata (columns: "
            f"{', '.join(map(repr, metadata.columns))}) or the predictions"
        )
    from_metadata = [c for c in dict.fromkeys(columns) if c in metadata.columns]
    table = metadata[["image_id", *from_metadata]].copy()
    table["image_id"] = table["image_id"].astype(str)
    repeated = table["image_id"][table["image_id"].duplicated()].unique()
    if len(repeated):
        raise ValueError(f"the metadata repeats image ids {_listed(repeated)}")
    unknown = np.setdiff1d(rows["image_id"].unique(), table["image_id"].to_numpy())
    if len(unknown):
        raise ValueError(
            f"{len(unknown)} image id(s) of the predictions are not in the metadata: "
            f"{_listed(unknown)}"
        )
    rows = rows.drop(columns=[c for c in from_metadata if c in rows.columns])
    return rows.merge(table, on="image_id", how="left", validate="many_to_one")


def _size_bins(rows: pd.DataFrame, column: str, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``size_bin`` per row (``Q1``..``Qk`` or NO_LESION) and the ``k + 1`` edges."""
    size = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
    lesion = rows["_lesion"].to_numpy(bool)
    unknown = lesion & np.isnan(size)
    if unknown.any():
        raise ValueError(
            f"size column {column!r} is empty or not numeric for lesion image(s) "
            f"{_listed(rows['image_id'][unknown].unique())}"
        )
    if not lesion.any():
        raise ValueError(f"no rows with a lesion to cut {column!r} into size bins")
    per_image = pd.Series(size[lesion], index=rows["image_id"][lesion]).groupby(level=0).first()
    _, edges = pd.qcut(per_image, bins, retbins=True, duplicates="drop")
    codes = pd.cut(size[lesion], edges, include_lowest=True, labels=False)
    out = np.full(len(rows), NO_LESION, dtype=object)
    out[lesion] = [f"Q{int(c) + 1}" for c in codes]
    return out, edges


def _bin_index(size_bin: str) -> int | None:
    return int(size_bin[1:]) - 1 if size_bin.startswith("Q") else None


def _subgroups(rows: pd.DataFrame, by: list[str], sizes: bool):
    """``(keys, rows)`` of every subgroup in output order (see :func:`subgroup_table`)."""
    blank = dict.fromkeys(by, ALL)
    yield {**blank, "size_bin": ALL}, rows
    levels: list[list[str]] = []
    if by:
        levels.append(by)
    if sizes:
        levels.append(["size_bin"])
    if by and sizes:
        levels.append([*by, "size_bin"])
    for keys in levels:
        groups = rows.groupby(keys, sort=False, dropna=False)
        for values, group in sorted(groups, key=lambda item: _order(item[0])):
            named = dict(zip(keys, np.atleast_1d(np.asarray(values, dtype=object)), strict=True))
            yield {**blank, "size_bin": ALL, **named}, group


def _order(values) -> tuple:
    """Sort key: text in natural order, size bins by number, NO_LESION first."""
    out = []
    for v in np.atleast_1d(np.asarray(values, dtype=object)):
        v = str(v)
        index = _bin_index(v) if v.startswith("Q") and v[1:].isdigit() else None
        out.append((0, -1, "") if v == NO_LESION else (1, index if index is not None else -1, v))
    return tuple(out)


def _counts(rows: pd.DataFrame) -> dict[str, int]:
    out = {"n": int(len(rows)), "patients": int(rows["patient_id"].nunique())}
    if "_lesion" in rows.columns:
        lesion = rows["_lesion"].to_numpy(bool)
        out.update(positives=int(lesion.sum()), negatives=int((~lesion).sum()))
    return out


def _classification_metrics(rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, float]:
    truth = rows["truth"].to_numpy(int) == 1
    hit = rows["_predicted"].to_numpy(float)
    patients = rows["patient_id"].to_numpy(str)
    out: dict[str, float] = {}
    for name, members, values in (
        ("sensitivity", truth, hit),
        ("specificity", ~truth, 1.0 - hit),
    ):
        out[name] = _mean(values[members])
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _ci(
            values[members], patients[members], n_boot, seed
        )
    score = rows["score"].to_numpy(float)
    out["auroc"] = auroc(truth, score)
    if np.isnan(out["auroc"]):
        out["auroc_ci_low"] = out["auroc_ci_high"] = float("nan")
    else:
        out["auroc_ci_low"], out["auroc_ci_high"] = bootstrap_ci(
            lambda w: weighted_metrics(truth, score, w)["auroc"],
            patients,
            n_boot=n_boot,
            seed=seed,
        )
    return out


def _segmentation_metrics(rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, float]:
    dice = rows["dice"].to_numpy(float)
    low, high = _ci(dice, rows["patient_id"].to_numpy(str), n_boot, seed)
    finite = dice[~np.isnan(dice)]
    return {
        "dice": float(finite.mean()) if finite.size else float("nan"),
        "dice_ci_low": low,
        "dice_ci_high": high,
        "dice_median": float(np.median(finite)) if finite.size else float("nan"),
    }


def _ci(values, patients, n_boot: int, seed: int) -> tuple[float, float]:
    """CI of the mean of per-row ``values`` over patients (NaN: left out)."""
    if len(values) == 0 or n_boot < 1 or np.isnan(values).all():
        return float("nan"), float("nan")
    return clustered_mean_ci(values, patients, n_boot=n_boot, seed=seed)


def _present(values: pd.Series, name: str) -> np.ndarray:
    """Bool confounder: 1/True/"1"/"yes" present, 0/False/"0"/"no" absent; else an error."""
    text = values.astype(str).str.strip().str.lower()
    bad = ~text.isin(_PRESENT | _ABSENT) | values.isna()
    if bad.any():
        raise ValueError(
            f"confounder {name!r} must be 1/0, true/false or yes/no; got "
            f"{sorted(values[bad].astype(str).unique())[:5]}"
        )
    return text.isin(_PRESENT).to_numpy()


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _listed(ids, limit: int = 10) -> str:
    ids = list(ids)
    shown = ", ".join(map(repr, ids[:limit]))
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
