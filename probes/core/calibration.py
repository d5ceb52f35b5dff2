"""Calibration and operating points of a binary score: ECE, Brier, log-loss, temperature
scaling fitted on the validation fold, sensitivity/specificity at a 90% operating point chosen
on validation, and decision-curve net benefit at a prevalence the user gives.

Every function takes truths ``y`` in {0, 1} and probabilities ``p`` of the same rows::

    t = fit_temperature(y_val, p_val)                  # on the round's validation rows
    p_cal = apply_temperature(p_test, t)               # same ranking: AUROC unchanged
    expected_calibration_error(y_test, p_cal), brier_score(y_test, p_cal)
    calibration_metrics(y_test, p_test, y_val, p_val)  # every column results.csv adds

:func:`calibrated_scores` adds ``score_calibrated`` to a predictions table (the temperature of
each round x label from its own validation rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

__all__ = [
    "ECE_BINS",
    "OPERATING_POINT",
    "apply_temperature",
    "brier_score",
    "calibrated_scores",
    "calibration_metrics",
    "decision_curve",
    "DECISION_THRESHOLDS",
    "check_decision_options",
    "decision_options",
    "decision_scores",
    "expected_calibration_error",
    "fit_temperature",
    "log_loss",
    "net_benefit",
    "reliability_bins",
    "shift_prevalence",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
]

#: Risk thresholds of the net-benefit columns when the user gives none.
DECISION_THRESHOLDS = (0.1,)
#: Equal-mass bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15
#: Sensitivity (specificity) at this specificity (sensitivity), its threshold from validation.
OPERATING_POINT = 0.9
#: Where sigmoid(z) stops resolving in float64 (1 - sigmoid(36.8) < half an ulp of 1).
_SATURATION = 36.0
#: The search interval of the inverse temperature 1/T.
_BETA_RANGE = (1e-2, 1e2)


def _logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` in float64; 0 and 1 give -inf and +inf (no clipping, so distinct
    probabilities stay distinct)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _nll(y: np.ndarray, z: np.ndarray) -> float:
    """Mean binary cross-entropy of logits ``z`` (finite)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log) of probabilities ``p``, logits clipped to
    +-36 (probabilities of exactly 0 or 1 cost about 36 nats instead of infinity)."""
    y = np.asarray(y, dtype=np.float64)
    if not len(y):
        return float("nan")
    return _nll(y, np.clip(_logit(p), -_SATURATION, _SATURATION))


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference of probability and outcome, ``mean((p - y)^2)``."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def _equal_mass_bins(p: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Row positions in ``n_bins`` bins of (as nearly as possible) equal size, by ascending
    ``p`` (stable: tied scores keep row order, so a tie may straddle two bins)."""
    order = np.argsort(np.asarray(p, dtype=np.float64), kind="stable")
    return [b for b in np.array_split(order, min(n_bins, len(order))) if len(b)]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-mass bins: sum over bins of (bin size / n) x |observed
    positive rate - mean probability|. Equal-mass (not equal-width) bins, so no bin is empty
    however concentrated the scores are."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if not len(y):
        return float("nan")
    return float(
        sum(len(b) / len(y) * abs(y[b].mean() - p[b].mean()) for b in _equal_mass_bins(p, n_bins))
    )


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """The reliability diagram's points: one row per equal-mass bin with ``n``,
    ``mean_score`` and ``positive_rate``."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    bins = _equal_mass_bins(p, n_bins) if len(y) else []
    return pd.DataFrame(
        {
            "n": [len(b) for b in bins],
            "mean_score": [p[b].mean() for b in bins],
            "positive_rate": [y[b].mean() for b in bins],
        }
    )


def fit_temperature(y_val: np.ndarray, p_val: np.ndarray, p_other=None) -> float:
    """Temperature ``T > 0`` minimising the validation log-loss of ``sigmoid(logit(p) / T)``.

    The log-loss is convex in ``1 / T``; it is minimised over ``1/T`` in [0.01, 100] and
    ``T = 1`` is kept unless it is beaten, so the validation log-loss never rises. ``1 / T`` is
    also capped so that no finite logit of ``p_val`` or ``p_other`` (the rows it will be applied
    to) is pushed past float64's resolution of sigmoid: the calibrated scores then rank every
    row exactly as the raw ones, and AUROC is unchanged. No validation rows, or one class
    only: ``T = 1``.
    """
    y = np.asarray(y_val, dtype=np.float64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return 1.0
    z = np.clip(_logit(p_val), -_SATURATION, _SATURATION)
    finite = [_logit(p_val)]
    if p_other is not None:
        finite.append(_logit(p_other))
    z_all = np.concatenate(finite)
    z_all = np.abs(z_all[np.isfinite(z_all)])
    top = float(z_all.max()) if z_all.size else 0.0
    beta_max = _BETA_RANGE[1] if top == 0 else min(_BETA_RANGE[1], _SATURATION / top)
    beta_max = max(beta_max, 1.0)
    found = minimize_scalar(
        lambda beta: _nll(y, beta * z),
        bounds=(_BETA_RANGE[0], beta_max),
        method="bounded",
        options={"xatol": 1e-6},
    )
    beta = float(found.x)
    if not np.isfinite(beta) or _nll(y, beta * z) >= _nll(y, z):
        return 1.0
    return 1.0 / beta


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` in float64: a strictly increasing map of ``p``."""
    return _sigmoid(_logit(p) / float(temperature))


def shift_prevalence(p: np.ndarray, source: float, target: float) -> np.ndarray:
    """Probabilities calibrated at prevalence ``source`` moved to prevalence ``target`` (Bayes'
    rule with unchanged class-conditional scores: add ``logit(target) - logit(source)`` to
    each logit). A balanced study sample (``source`` 0.5) read at a clinic's 2% prevalence."""
    if not (0 < source < 1 and 0 < target < 1):
        raise ValueError(f"prevalences must lie in (0, 1), got {source} and {target}")
    offset = float(_logit(np.array([target]))[0] - _logit(np.array([source]))[0])
    return _sigmoid(_logit(p) + offset)


def threshold_for_specificity(y_val, p_val, target: float = OPERATING_POINT) -> float:
    """The lowest threshold ``t`` (rule ``p >= t``) whose specificity on the validation rows is
    at least ``target``: just above the ``ceil(target * n_neg)``-th lowest negative score. NaN
    without negatives."""
    p, y = np.asarray(p_val, dtype=np.float64), np.asarray(y_val).astype(bool)
    negatives = np.sort(p[~y])
    if not len(negatives):
        return float("nan")
    k = int(np.ceil(target * len(negatives) - 1e-9))
    if k <= 0:
        return float(negatives[0])
    return float(np.nextafter(negatives[k - 1], np.inf))


def threshold_for_sensitivity(y_val, p_val, target: float = OPERATING_POINT) -> float:
    """The highest threshold ``t`` (rule ``p >= t``) whose sensitivity on the validation rows is
    at least ``target``: the ``ceil(target * n_pos)``-th highest positive score. NaN without
    positives."""
    p, y = np.asarray(p_val, dtype=np.float64), np.asarray(y_val).astype(bool)
    positives = np.sort(p[y])[::-1]
    if not len(positives):
        return float("nan")
    k = max(1, int(np.ceil(target * len(positives) - 1e-9)))
    return float(positives[k - 1])


def _rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(sensitivity, specificity)`` of ``p >= threshold``; NaN for an undefined side or
    threshold."""
    y = np.asarray(y).astype(bool)
    if not np.isfinite(threshold):
        return float("nan"), float("nan")
    called = np.asarray(p, dtype=np.float64) >= threshold
    sens = float(called[y].mean()) if y.any() else float("nan")
    spec = float((~called[~y]).mean()) if (~y).any() else float("nan")
    return sens, spec


def net_benefit(
    y: np.ndarray, p: np.ndarray, threshold: float, prevalence: float | None = None
) -> tuple[float, float]:
    """Decision-curve net benefit of "treat when ``p >= threshold``" and of treating everyone.

    ``NB = sensitivity x prevalence - (1 - specificity) x (1 - prevalence) x t / (1 - t)``
    (Vickers & Elkin 2006), with the true-positive and false-positive rates from these rows and
    the prevalence given (``None``: these rows' own, which gives TP/n - FP/n x t/(1-t)).
    ``p`` must be calibrated at that prevalence (:func:`shift_prevalence`).

    Returns ``(model, treat_all)``; treat-none is 0.
    """
    y = np.asarray(y).astype(bool)
    prevalence = float(y.mean()) if prevalence is None else float(prevalence)
    odds = threshold / (1.0 - threshold)
    sens, spec = _rates(y, p, threshold)
    model = sens * prevalence - (1.0 - spec) * (1.0 - prevalence) * odds
    return float(model), float(prevalence - (1.0 - prevalence) * odds)


def decision_curve(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, prevalence: float | None = None
) -> pd.DataFrame:
    """:func:`net_benefit` over ``thresholds``: columns threshold, model, treat_all, treat_none."""
    rows = [net_benefit(y, p, float(t), prevalence) for t in thresholds]
    return pd.DataFrame(
        {
            "threshold": np.asarray(thresholds, dtype=float),
            "model": [r[0] for r in rows],
            "treat_all": [r[1] for r in rows],
            "treat_none": 0.0,
        }
    )


def decision_scores(
    p_calibrated: np.ndarray, y_val: np.ndarray, prevalence: float | None
) -> np.ndarray:
    """The probabilities a decision at ``prevalence`` uses: the temperature-scaled scores,
    moved from the validation fold's prevalence (what the temperature was fitted at) to
    ``prevalence`` (unchanged when ``prevalence`` is None or validation has one class)."""
    y_val = np.asarray(y_val, dtype=np.float64)
    source = float(y_val.mean()) if len(y_val) else float("nan")
    if prevalence is None or not 0 < source < 1:
        return np.asarray(p_calibrated, dtype=np.float64)
    return shift_prevalence(p_calibrated, source, float(prevalence))


def calibration_metrics(
    y: np.ndarray,
    p: np.ndarray,
    y_val: np.ndarray | None = None,
    p_val: np.ndarray | None = None,
    *,
    prevalence: float | None = None,
    decision_thresholds: Sequence[float] = DECISION_THRESHOLDS,
) -> dict[str, float]:
    """The calibration and operating-point columns of one round's test rows.

    Args:
        y, p: ``(n,)`` test truths and raw probabilities. y_val, p_val: the round's validation
            rows (temperature and thresholds are chosen there; absent: T = 1, NaN thresholds).
        prevalence: the prevalence of the decision curve (``None``: the test rows' own).
        decision_thresholds: risk thresholds ``t`` of the net-benefit columns.

    Returns ``temperature``, ``ece``/``ece_calibrated``, ``brier``/``brier_calibrated``,
    ``log_loss``/``log_loss_calibrated`` (test), ``val_log_loss``/``val_log_loss_calibrated``,
    ``threshold_90_specificity``, ``sensitivity_at_90_specificity`` and the specificity it
    reached on test (``test_specificity_at_90_specificity``), the mirror three for 90%
    sensitivity, ``nb_prevalence`` and per threshold ``net_benefit_at_{t}`` (temperature-scaled
    scores at that prevalence) and ``net_benefit_treat_all_at_{t}``.
    """
    y = np.asarray(y)
    have_val = y_val is not None and p_val is not None and len(y_val) > 0
    y_val = np.asarray(y_val if have_val else [], dtype=np.int64)
    p_val = np.asarray(p_val if have_val else [], dtype=np.float64)
    temperature = fit_temperature(y_val, p_val, p) if have_val else 1.0
    p_cal, p_val_cal = apply_temperature(p, temperature), apply_temperature(p_val, temperature)
    spec_threshold = threshold_for_specificity(y_val, p_val) if have_val else float("nan")
    sens_threshold = threshold_for_sensitivity(y_val, p_val) if have_val else float("nan")
    sens_at_spec, spec_reached = _rates(y, p, spec_threshold)
    sens_reached, spec_at_sens = _rates(y, p, sens_threshold)
    out = {
        "temperature": temperature,
        "ece": expected_calibration_error(y, p),
        "ece_calibrated": expected_calibration_error(y, p_cal),
        "brier": brier_score(y, p),
        "brier_calibrated": brier_score(y, p_cal),
        "log_loss": log_loss(y, p),
        "log_loss_calibrated": log_loss(y, p_cal),
        "val_log_loss": log_loss(y_val, p_val) if have_val else float("nan"),
        "val_log_loss_calibrated": log_loss(y_val, p_val_cal) if have_val else float("nan"),
        "threshold_90_specificity": spec_threshold,
        "sensitivity_at_90_specificity": sens_at_spec,
        "test_specificity_at_90_specificity": spec_reached,
        "threshold_90_sensitivity": sens_threshold,
        "specificity_at_90_sensitivity": spec_at_sens,
        "test_sensitivity_at_90_sensitivity": sens_reached,
    }
    decision = decision_scores(p_cal, y_val, prevalence)
    out["nb_prevalence"] = float(np.mean(y)) if prevalence is None else float(prevalence)
    for t in decision_thresholds:
        model, treat_all = net_benefit(y, decision, float(t), prevalence)
        out[f"net_benefit_at_{t:g}"] = model
        out[f"net_benefit_treat_all_at_{t:g}"] = treat_all
    return out


def calibrated_scores(predictions: pd.DataFrame) -> pd.Series:
    """``score_calibrated`` of a classification predictions table: per round x label (x budget
    x draw, when present) the temperature fitted on that group's validation rows
    (:func:`fit_temperature`, the same fit as :func:`calibration_metrics`) applied to all its
    rows. Returns a float64 Series aligned with ``predictions``."""
    keys = [c for c in ("round", "label", "budget", "draw") if c in predictions.columns]
    out = pd.Series(np.nan, index=predictions.index, dtype=np.float64)
    if predictions.empty:
        return out
    for _, part in predictions.groupby(keys, sort=False) if keys else [((), predictions)]:
        val = part[part["split"] == "val"]
        score = part["score"].to_numpy(np.float64)
        t = fit_temperature(val["truth"].to_numpy(), val["score"].to_numpy(np.float64), score)
        out.loc[part.index] = apply_temperature(score, t)
    return out


def decision_options(options: object) -> dict:
    """:func:`probes.core.results.results_table`'s decision-curve keywords from a run spec's
    ``options`` mapping (``prevalence``, ``decision_thresholds``; defaults when absent)."""
    get = getattr(options, "get", lambda key, default=None: default)
    thresholds = get("decision_thresholds") or DECISION_THRESHOLDS
    return {"prevalence": get("prevalence"), "decision_thresholds": tuple(thresholds)}


def check_decision_options(prevalence: float | None, thresholds) -> dict:
    """Check the user's prevalence (in (0, 1)) and risk thresholds (in (0, 1)); returns them as
    a run spec's ``options`` entries (``prevalence``, ``decision_thresholds``: a list of floats,
    the default when none), which :func:`decision_options` reads back."""
    if prevalence is not None and not 0 < float(prevalence) < 1:
        raise ValueError(f"prevalence must lie in (0, 1), got {prevalence}")
    values = [float(t) for t in (thresholds or DECISION_THRESHOLDS)]
    if not all(0 < t < 1 for t in values):
        raise ValueError(f"decision thresholds must lie in (0, 1), got {values}")
    return {"prevalence": prevalence, "decision_thresholds": values}
