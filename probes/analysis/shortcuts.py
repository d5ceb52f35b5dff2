"""Shortcut checks: is a confounder decodable from the features, and does the probe lean on it?

::

    tube = shortcut_probe(X, chest_tube, split, ids=ids, patient_ids=patients, name="chest_tube")
    shortcut_summary(tube)                       # pooled test AUROC + CI, per-round mean ± sd
    keep = balanced_rows(y, chest_tube, r.train) # training rows where tube ⟂ label
    cross_predict(LinearProbe(), X, y, split, ..., balance=chest_tube)  # the same, every round

A confounder that the features encode (the shortcut probe's AUROC well above 0.5) and that is
correlated with the label in training (chest tubes in 75% of pneumothorax films, 11% of the
others) lets a label probe score the confounder instead of the finding. Training on
:func:`balanced_rows` removes that correlation from the training rows only; validation and test
rows stay as they are, so the confounded population is still what the probe is scored on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from probes.core.balance import MAX_DENOMINATOR, balanced_rows
from probes.core.bootstrap import bootstrap_ci, weighted_metrics
from probes.core.metrics import auroc, summarize
from probes.core.results import cross_predict
from probes.core.splits import Split

__all__ = ["MAX_DENOMINATOR", "balanced_rows", "shortcut_probe", "shortcut_summary"]


def shortcut_probe(
    X: np.ndarray,
    confounder: np.ndarray,
    split: Split,
    *,
    ids: Sequence[str],
    patient_ids: Sequence[str],
    name: str = "confounder",
    probe=None,
    encoder: str = "",
    feature: str = "",
    seed: int | None = None,
) -> pd.DataFrame:
    """How linearly decodable a confounder is from features: a cross-validated probe of it.

    Args:
        X: ``(n, d)`` features. confounder: ``(n,)`` binary values (e.g. chest tube 0/1).
        split: the rounds (the label probe's split, so the two are comparable).
        ids, patient_ids: ``(n,)``. name: the ``label`` written on the rows.
        probe: an unfitted estimator; default :class:`probes.linear.LinearProbe()`.

    Returns:
        The standard predictions table (:data:`probes.core.results.PREDICTION_COLUMNS`) with
        ``label == name`` and ``truth`` = confounder present.
    """
    from probes.linear.probe import LinearProbe

    return cross_predict(
        LinearProbe() if probe is None else probe,
        X,
        np.asarray(confounder),
        split,
        ids=ids,
        patient_ids=patient_ids,
        label_names=[name],
        encoder=encoder,
        feature=feature,
        seed=seed,
    )


def shortcut_summary(predictions: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Decodability of the confounder from a :func:`shortcut_probe` predictions table.

    Returns a dict: ``label``, ``n`` (test rows pooled over rounds), ``patients``,
    ``positives``, ``auroc`` (pooled test rows), ``auroc_ci_low`` / ``auroc_ci_high`` (95%
    percentile bootstrap over patients: a patient's images are resampled together),
    ``auroc_round_mean`` / ``auroc_round_sd`` (ddof 1) / ``rounds`` over the rounds' own test
    AUROCs. AUROC 0.5 = not decodable; its CI low above 0.5 = decodable.
    """
    test = predictions[predictions["split"] == "test"]
    if test.empty:
        raise ValueError("the predictions table has no test rows")
    labels = test["label"].unique()
    if len(labels) != 1:
        raise ValueError(f"expected the rows of one probe label, got {labels.tolist()}")
    truth, score = test["truth"].to_numpy(int), test["score"].to_numpy(float)
    low, high = bootstrap_ci(
        lambda w: weighted_metrics(truth, score, w)["auroc"],
        test["patient_id"].to_numpy(str),
        n_boot=n_boot,
        seed=seed,
    )
    per_round = [
        auroc(part["truth"].to_numpy(int), part["score"].to_numpy(float))
        for _, part in test.groupby("round", sort=True)
    ]
    stats = summarize(per_round)
    return {
        "label": str(labels[0]),
        "n": int(len(test)),
        "patients": int(test["patient_id"].nunique()),
        "positives": int(truth.sum()),
        "auroc": auroc(truth, score),
        "auroc_ci_low": low,
        "auroc_ci_high": high,
        "auroc_round_mean": stats["mean"],
        "auroc_round_sd": stats["sd"],
        "rounds": len(per_round),
    }
