"""Per-row predictions over the rounds of a split, and the metrics tables built from them.

Metrics are always computed from the per-row predictions table (each row carries its image id,
patient id, round, fold and provenance), never re-derived from row order::

    predictions = cross_predict(LinearProbe(), X, Y, split, ids=..., patient_ids=...)
    results = results_table(predictions)        # one row per round x label
    summary = summary_table(results)            # one row per label
    write_table(predictions, "out/predictions.parquet")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone

from probes.core.balance import balanced_rows
from probes.core.bootstrap import CI_METHOD, clustered_ci
from probes.core.calibration import calibrated_scores, calibration_metrics
from probes.core.metrics import classification_metrics, summarize
from probes.core.splits import Split

__all__ = [
    "PREDICTION_COLUMNS",
    "ROW_COLUMNS",
    "cross_predict",
    "predictions_table",
    "read_table",
    "results_table",
    "row_frame",
    "summary_table",
    "write_table",
]

#: The columns that identify a row of a predictions table (linear and segmentation alike).
ROW_COLUMNS = ("image_id", "patient_id", "round", "fold", "split")
PREDICTION_COLUMNS = (
    *ROW_COLUMNS,
    "label",
    "truth",
    "score",
    "score_calibrated",
    "C",
    "encoder",
    "feature",
    "probe",
    "params",
    "seed",
)


def row_frame(
    ids: np.ndarray,
    patient_ids: np.ndarray,
    folds: np.ndarray,
    rows: np.ndarray,
    *,
    round_index: int,
    split: str,
    **columns,
) -> pd.DataFrame:
    """The :data:`ROW_COLUMNS` of ``rows`` (image id, patient id, round, fold, split), then
    ``columns``: the start of every predictions table, linear, segmentation or fine-tune."""
    return pd.DataFrame(
        {
            "image_id": ids[rows],
            "patient_id": patient_ids[rows],
            "round": round_index,
            "fold": folds[rows],
            "split": split,
            **columns,
        }
    )


def cross_predict(
    probe,
    X: np.ndarray,
    Y: np.ndarray,
    split: Split,
    *,
    ids: Sequence[str],
    patient_ids: Sequence[str],
    label_names: Sequence[str] | None = None,
    encoder: str = "",
    feature: str = "",
    seed: int | None = None,
    on_round: Callable[[int], None] | None = None,
    balance: np.ndarray | None = None,
    on_fit: Callable[[int, object], None] | None = None,
) -> pd.DataFrame:
    """Fit a clone of ``probe`` per round and predict that round's validation and test rows.

    Args:
        probe: an unfitted estimator with ``predict_proba``; if its ``fit`` takes ``X_val`` /
            ``y_val`` (the probes here do), the round's validation rows are passed.
        X: ``(n, d)`` features. Y: ``(n,)`` or ``(n, k)`` binary labels (k label columns are
            fitted together, sharing the standardisation).
        split: the rounds. ids, patient_ids: ``(n,)`` per row. label_names: ``k`` names.
        encoder, feature, seed: provenance written on every row.
        on_round: called with the round index after each round (progress bars).
        on_fit: called with the round index and the round's fitted model (what it chose: a
            k-NN's ``k_``, an MLP's ``best_epoch_``; a linear probe's weights for patch maps).
        balance: optional ``(n,)`` binary confounder (e.g. chest tube): each round is fitted on
            :func:`probes.core.balance.balanced_rows` of its training rows (seed ``seed + round``,
            None counting as 0), where the confounder is independent of the (single) label;
            validation and test rows are untouched. ``params`` then carries ``"balanced": true``.

    Returns the predictions table (:data:`PREDICTION_COLUMNS`), ordered by round, label,
    split (val before test) and row. ``truth`` is 1 for the positive (larger) class;
    ``score_calibrated`` is ``score`` temperature-scaled on the round's validation rows
    (:func:`probes.core.calibration.calibrated_scores`; the same ranking).
    """
    Y = np.asarray(Y)
    Y2 = Y.reshape(len(Y), -1)
    label_names = list(label_names or [f"label_{i}" for i in range(Y2.shape[1])])
    if len(label_names) != Y2.shape[1]:
        raise ValueError(f"{len(label_names)} label names for {Y2.shape[1]} label columns")
    ids, patient_ids = np.asarray(ids, dtype=str), np.asarray(patient_ids, dtype=str)
    recorded = probe.get_params()
    if balance is not None:
        balance = np.asarray(balance)
        if Y2.shape[1] != 1 or balance.shape != (len(Y2),):
            raise ValueError(
                f"balance needs one label column and an (n,) confounder; got labels "
                f"{Y.shape} and confounder {balance.shape}"
            )
        recorded = {**recorded, "balanced": True}
    params = json.dumps(recorded, sort_keys=True, default=str)
    name = type(probe).__name__
    frames = []
    for r in split:
        model = clone(probe)
        target = Y2[:, 0] if Y2.shape[1] == 1 else Y2
        train = r.train
        if balance is not None:
            train = balanced_rows(target, balance, r.train, seed=(seed or 0) + r.index)
        if len(r.val) and _takes_validation(model):
            model.fit(X[train], target[train], X_val=X[r.val], y_val=target[r.val])
        else:
            model.fit(X[train], target[train])
        if on_fit is not None:
            on_fit(r.index, model)
        chosen = np.broadcast_to(np.asarray(getattr(model, "C_", np.nan), float), (Y2.shape[1],))
        for part, rows in (("val", r.val), ("test", r.test)):
            if not len(rows):
                continue
            prob = model.predict_proba(X[rows])
            prob = prob[:, 1:] if Y2.shape[1] == 1 else prob
            truths = _positive(Y2[rows], model)
            for j, label in enumerate(label_names):
                frames.append(
                    row_frame(
                        ids,
                        patient_ids,
                        split.folds,
                        rows,
                        round_index=r.index,
                        split=part,
                        label=label,
                        truth=truths[:, j],
                        score=prob[:, j],
                        C=chosen[j],
                    )
                )
        if on_round is not None:
            on_round(r.index)
    return predictions_table(
        frames, encoder=encoder, feature=feature, probe=name, params=params, seed=seed
    )


def predictions_table(
    frames: Sequence[pd.DataFrame],
    *,
    encoder: str,
    feature: str,
    probe: str,
    params: str,
    seed: int | None,
) -> pd.DataFrame:
    """One classification predictions table from per-(round, label, split) :func:`row_frame`
    frames with ``label``, ``truth``, ``score`` and ``C``: ordered by round, label, split (val
    before test), provenance added, ``score_calibrated`` (temperature scaling fitted on each
    round's validation rows), :data:`PREDICTION_COLUMNS`. Every classification protocol ends
    here, so their tables are alike."""
    table = pd.concat(frames, ignore_index=True)
    order = {"val": 0, "test": 1}
    table = table.sort_values(
        ["round", "label", "split"],
        key=lambda c: c.map(order) if c.name == "split" else c,
        kind="stable",
    ).reset_index(drop=True)
    table["encoder"], table["feature"], table["probe"] = encoder, feature, probe
    table["params"], table["seed"] = params, -1 if seed is None else int(seed)
    table["score_calibrated"] = calibrated_scores(table)
    return table[list(PREDICTION_COLUMNS)]


def results_table(
    predictions: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    prevalence: float | None = None,
    decision_thresholds: Sequence[float] = (0.1,),
) -> pd.DataFrame:
    """One row per (label, round) (x budget x draw, when the predictions have budgets): test
    metrics, Youden threshold from the round's validation rows, 95% CIs of AUROC and AUPRC
    over the round's test rows by the patient bootstrap
    (:func:`probes.core.bootstrap.clustered_ci`, seed ``seed + round``; with one image per
    patient, the image bootstrap), the calibration and operating-point columns of
    :func:`probes.core.calibration.calibration_metrics` (temperature and thresholds from the
    validation rows; net benefit at ``prevalence`` and ``decision_thresholds``), the CI's
    method in words, and provenance."""
    rows = []
    budgeted = "budget" in predictions.columns
    keys = ["label", "round", *(["budget", "draw"] if budgeted else [])]
    for key, part in predictions.groupby(keys, sort=True):
        label, round_ = key[0], key[1]
        test, val = part[part["split"] == "test"], part[part["split"] == "val"]
        y_val = val["truth"].to_numpy() if len(val) else None
        p_val = val["score"].to_numpy() if len(val) else None
        metrics = classification_metrics(
            test["truth"].to_numpy(), test["score"].to_numpy(), y_val, p_val
        )
        calibration = calibration_metrics(
            test["truth"].to_numpy(),
            test["score"].to_numpy(),
            y_val,
            p_val,
            prevalence=prevalence,
            decision_thresholds=decision_thresholds,
        )
        cis = clustered_ci(
            test["truth"].to_numpy(),
            test["score"].to_numpy(),
            test["patient_id"].to_numpy(),
            n_boot=n_boot,
            seed=seed + int(round_),
        )
        (lo, hi), (plo, phi) = cis["auroc"], cis["auprc"]
        first = part.iloc[0]
        budget = (
            {"budget": float(key[2]), "draw": int(key[3]), "n_train": int(first.get("n_train", -1))}
            if budgeted
            else {}
        )
        rows.append(
            {
                "label": label,
                "round": int(round_),
                **budget,
                **metrics,
                "auroc_ci_low": lo,
                "auroc_ci_high": hi,
                "auprc_ci_low": plo,
                "auprc_ci_high": phi,
                **calibration,
                "ci": f"{CI_METHOD} ({n_boot})",
                "C": first["C"],
                "encoder": first["encoder"],
                "feature": first["feature"],
                "probe": first["probe"],
                "seed": first["seed"],
            }
        )
    return pd.DataFrame(rows)


def summary_table(
    results: pd.DataFrame, metrics: Sequence[str] = ("auroc", "auprc")
) -> pd.DataFrame:
    """One row per label (x budget, when the results have budgets): mean, sd, median, min,
    max of each metric over the rounds (and draws: ``rounds`` counts round x draw rows)."""
    rows = []
    keys = ["label", *(["budget"] if "budget" in results.columns else [])]
    for key, part in results.groupby(keys, sort=True):
        row: dict[str, object] = dict(zip(keys, key, strict=True))
        row["rounds"] = len(part)
        for metric in metrics:
            for stat, value in summarize(part[metric]).items():
                row[f"{metric}_{stat}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write Parquet (``.parquet``/``.pq``) or CSV (anything else); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False, float_format="%.10g")
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (ids kept as text)."""
    path = Path(path)
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str})


def _takes_validation(model) -> bool:
    import inspect

    return "X_val" in inspect.signature(model.fit).parameters


def _positive(Y: np.ndarray, model) -> np.ndarray:
    """``(n, k)`` 0/1 truths: 1 for the model's positive class."""
    classes = getattr(model, "classes_", None)
    if Y.shape[1] == 1 and classes is not None and not isinstance(classes, list):
        return (classes[1] == Y).astype(np.int64)
    return Y.astype(np.int64)
