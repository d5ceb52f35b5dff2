"""LinearProbe backends against scikit-learn, estimator conventions, SGD head, metrics."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_probes_features import write_manifest, write_store

from probes.core.bootstrap import clustered_ci
from probes.core.features import FeatureSet
from probes.core.metrics import (
    classification_metrics,
    format_mean_sd,
    format_median_range,
    summarize,
    youden_threshold,
)
from probes.core.splits import reference_rotation
from probes.linear.probe import LinearProbe, SGDHeadProbe

HAS_TORCH = importlib.util.find_spec("torch") is not None
BACKENDS = [
    ("sklearn", None),
    ("numpy", "float64"),
    ("numpy", "float32"),
    pytest.param("torch", "float64", marks=pytest.mark.skipif(not HAS_TORCH, reason="torch")),
    pytest.param("torch", "float32", marks=pytest.mark.skipif(not HAS_TORCH, reason="torch")),
]


def _data(n=400, d=24, signal=1.5, seed=0):
    """Correlated, offset, unevenly scaled features; a label from a sparse direction."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * (0.6 ** np.arange(d))[:, None]
    X = rng.standard_normal((n, d)) @ mixing * rng.uniform(0.2, 5, d) + rng.normal(0, 4, d)
    direction = rng.standard_normal(d) * (rng.random(d) < 0.4)
    direction[0] = 1.0
    z = StandardScaler().fit_transform(X) @ direction
    y = (rng.random(n) < 1 / (1 + np.exp(-signal * z / z.std()))).astype(int)
    return X.astype(np.float32), y


@pytest.mark.parametrize(("backend", "dtype"), BACKENDS)
def test_backends_match_sklearn_on_the_same_folds_and_C(backend, dtype):
    X, y = _data()
    for r in reference_rotation(len(y)):
        for C in (0.01, 1.0):
            ref = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=5000))
            ref.fit(X[r.train].astype(np.float64), y[r.train])
            expected = roc_auc_score(y[r.test], ref.decision_function(X[r.test].astype(np.float64)))
            probe = LinearProbe(C=C, backend=backend, dtype=dtype, tol=1e-7, device="cpu")
            probe.fit(X[r.train], y[r.train])
            got = roc_auc_score(y[r.test], probe.predict_proba(X[r.test])[:, 1])
            assert abs(got - expected) <= 1e-4, (r.index, C, got, expected)
            assert probe.backend_ == backend


@pytest.mark.parametrize("backend", ["numpy", "sklearn"])
def test_validation_selection_matches_a_plain_sklearn_sweep(backend):
    X, y = _data(n=500, d=30, signal=1.0, seed=3)
    X = X.astype(np.float64)  # a float32 X would make scikit-learn's lbfgs work in float32
    Cs = np.logspace(-4, 2, 7)
    for r in reference_rotation(len(y)):
        scaler = StandardScaler().fit(X[r.train])
        val_scores = [
            roc_auc_score(
                y[r.val],
                LogisticRegression(C=C, tol=1e-10, max_iter=5000)
                .fit(scaler.transform(X[r.train]), y[r.train])
                .decision_function(scaler.transform(X[r.val])),
            )
            for C in Cs
        ]
        probe = LinearProbe(Cs=Cs, backend=backend, dtype="float64", tol=1e-8).fit(
            X[r.train], y[r.train], X_val=X[r.val], y_val=y[r.val]
        )
        # weak-C solutions are ill-conditioned: warm starts may land a pair apart (1/2400)
        np.testing.assert_allclose(probe.scores_[0], val_scores, atol=1e-3)
        assert probe.C_[0] == Cs[int(np.argmax(val_scores))]


def test_cuml_backend_without_cuml_says_so():
    if importlib.util.find_spec("cuml") is not None:
        pytest.skip("cuML is installed")
    X, y = _data(n=60, d=4)
    with pytest.raises(ImportError, match="backend 'cuml' needs RAPIDS cuML"):
        LinearProbe(C=1.0, backend="cuml").fit(X, y)


def test_auto_backend_on_cpu_is_numpy():
    X, y = _data(n=60, d=4)
    assert LinearProbe(C=1.0, device="cpu").fit(X, y).backend_ == "numpy"


def test_planted_signal_in_a_store_is_found(tmp_path):
    rng = np.random.default_rng(5)
    n, d = 600, 64
    ids = np.array([f"im{i:04d}" for i in range(n)])
    X = rng.standard_normal((n, d)).astype(np.float32)
    label = (X[:, :8] @ rng.standard_normal(8) > 0).astype(int)  # planted linearly
    write_store(tmp_path / "s.zarr", ids, X, rows_per_shard=64)
    manifest = write_manifest(tmp_path / "m.csv", ids, [f"p{i}" for i in range(n)], y=label)
    fs = FeatureSet.open(tmp_path / "s.zarr", manifest)
    y = fs.labels("y")
    r = reference_rotation(len(fs))[0]
    probe = LinearProbe().fit(fs.load(r.train), y[r.train], X_val=fs.load(r.val), y_val=y[r.val])
    assert roc_auc_score(y[r.test], probe.predict_proba(fs.load(r.test))[:, 1]) > 0.95


def test_estimator_conventions_pipeline_and_cross_val_score():
    X, y = _data()
    probe = LinearProbe(Cs=[1e-3, 1e-2, 1e-1, 1.0], cv=3)
    assert clone(probe).get_params() == probe.get_params()
    assert not hasattr(probe, "coef_")
    scores = cross_val_score(probe, X, y, cv=3, scoring="roc_auc")
    assert scores.shape == (3,) and scores.min() > 0.6
    pipe = make_pipeline(PCA(n_components=10), LinearProbe(C=0.5)).fit(X, y)
    assert pipe.predict_proba(X).shape == (len(y), 2)
    assert set(pipe.predict(X)) <= {0, 1}
    fitted = LinearProbe(Cs=np.logspace(-3, 1, 4), cv=3).fit(X, y)
    assert fitted.coef_.shape == (1, X.shape[1]) and fitted.C_.shape == (1,)
    assert fitted.cv_scores_.shape == (1, 3, 4)
    # coef_ is in original feature units: decision = X coef' + intercept
    np.testing.assert_allclose(
        fitted.decision_function(X), X.astype(np.float64) @ fitted.coef_[0] + fitted.intercept_[0]
    )


def test_string_classes_and_grouped_inner_cv():
    X, y = _data(n=200)
    names = np.where(y == 1, "sick", "well")
    groups = np.arange(len(y)) // 2
    probe = LinearProbe(Cs=[0.01, 1.0], cv=3).fit(X, names, groups=groups)
    assert probe.classes_.tolist() == ["sick", "well"]
    assert set(probe.predict(X)) <= {"sick", "well"}


def test_label_columns_share_standardisation_and_match_single_fits():
    X, y = _data(n=300)
    Y = np.column_stack([y, 1 - y, (X[:, 0] > np.median(X[:, 0])).astype(int)])
    both = LinearProbe(C=0.3, tol=1e-8).fit(X, Y)
    assert both.predict_proba(X).shape == (300, 3) and both.coef_.shape == (3, X.shape[1])
    for j in range(3):
        single = LinearProbe(C=0.3, tol=1e-8).fit(X, Y[:, j])
        np.testing.assert_allclose(both.coef_[j], single.coef_[0], atol=1e-5)
        np.testing.assert_allclose(
            both.predict_proba(X)[:, j], single.predict_proba(X)[:, 1], atol=1e-5
        )


def test_input_errors():
    X, y = _data(n=50, d=3)
    with pytest.raises(ValueError, match="exactly two classes"):
        LinearProbe(C=1.0).fit(X, np.zeros(50))
    with pytest.raises(ValueError, match="both X_val and y_val"):
        LinearProbe().fit(X, y, X_val=X)
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        LinearProbe(backend="gpu").fit(X, y)


@pytest.mark.skipif(not HAS_TORCH, reason="torch")
def test_sgd_head_is_seeded_and_keeps_the_best_validation_epoch():
    X, y = _data(n=240, d=12, signal=3.0)
    r = reference_rotation(len(y))[0]
    kw = dict(max_epochs=40, lr=1e-2, standardize=True)
    a = SGDHeadProbe(**kw).fit(X[r.train], y[r.train], X_val=X[r.val], y_val=y[r.val])
    b = SGDHeadProbe(**kw).fit(X[r.train], y[r.train], X_val=X[r.val], y_val=y[r.val])
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.best_epoch_ == int(np.argmin(a.val_loss_))
    assert len(a.val_loss_) <= 40
    assert roc_auc_score(y[r.test], a.predict_proba(X[r.test])[:, 1]) > 0.8
    held_out = SGDHeadProbe(max_epochs=5).fit(X, y)  # no validation set: a held-out share
    assert held_out.predict_proba(X).shape == (len(y), 2)


def test_reference_sgd_head_defaults():
    p = SGDHeadProbe().get_params()
    assert (p["lr"], p["weight_decay"], p["batch_size"], p["max_epochs"]) == (1e-4, 1e-2, 16, 500)
    assert (p["patience"], p["min_delta"], p["grad_clip"], p["random_state"]) == (
        5,
        1e-4,
        1.0,
        5656,
    )


def test_metrics_thresholds_and_summaries():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.55, 0.9, 0.4, 0.3])
    m = classification_metrics(y, p, y_val=y, prob_val=p)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert (m["sens_at_0.5"], m["spec_at_0.5"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert youden_threshold(y, p) == m["youden_threshold"]
    assert m["sens_at_youden"] + m["spec_at_youden"] - 1 >= 1 / 3
    s = summarize([0.8, 0.9, 0.85, np.nan])
    assert (s["median"], s["min"], s["max"]) == (0.85, 0.8, 0.9)
    assert format_median_range([0.8, 0.9, 0.85]) == "0.850 [0.800, 0.900]"
    assert format_mean_sd([0.8, 0.9]) == "0.850 ± 0.071"


@pytest.mark.parametrize("metric", ["auroc", "auprc"])
def test_bootstrap_ci_equals_a_loop_over_resamples(metric):
    """One image per patient: the patient bootstrap is the image bootstrap, and equals
    scikit-learn's metric over each resample of rows drawn with replacement."""
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    score = np.round(rng.random(300) + 0.4 * y, 2)  # ties included
    patients = np.array([f"p{i:03d}" for i in range(300)])  # sorted ids: code i is row i
    lo, hi = clustered_ci(y, score, patients, n_boot=400, seed=3)[metric]
    again = clustered_ci(y, score, patients, n_boot=400, seed=3)[metric]
    assert (lo, hi) == again  # seeded
    shuffled = rng.permutation(300)
    assert (lo, hi) == clustered_ci(
        y[shuffled], score[shuffled], patients[shuffled], n_boot=400, seed=3
    )[metric]  # independent of the row order
    draws = np.random.default_rng(3).integers(0, 300, size=(400, 300))
    fn = roc_auc_score if metric == "auroc" else average_precision_score
    loop = [fn(y[d], score[d]) for d in draws]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])), abs=1e-12)
    point = fn(y, score)
    assert lo < point < hi


def test_probe_results_frame_roundtrip():
    """The probe's outputs feed pandas directly (types the results tables rely on)."""
    X, y = _data(n=100, d=5)
    probe = LinearProbe(C=1.0).fit(X, y)
    frame = pd.DataFrame({"score": probe.predict_proba(X)[:, 1]})
    assert frame["score"].between(0, 1).all()
