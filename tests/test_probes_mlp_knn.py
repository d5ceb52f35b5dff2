"""MLP and k-NN probes: planted labels the linear probe misses, the estimators against their
definitions (scikit-learn's k-NN, DINO's weighted vote), blocked search, the commands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted import planted_vectors
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import probes
from probes.cli import main
from probes.core.run import Run
from probes.knn.search import cosine_topk, normalize_rows


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    return planted_vectors(tmp_path_factory.mktemp("xor"), "xor")


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    return planted_vectors(tmp_path_factory.mktemp("clusters"), "clusters")


def test_an_xor_of_two_directions_is_learnt_by_the_mlp_not_the_linear_probe(xor):
    store, manifest = xor
    mlp = probes.run_mlp(store, manifest, label="finding", rounds=[0], n_boot=50)
    linear = probes.run_linear(store, manifest, label="finding", rounds=[0], n_boot=50)
    assert mlp.results.iloc[0]["auroc"] > 0.9, mlp.results
    assert linear.results.iloc[0]["auroc"] < 0.65, linear.results
    assert list(mlp.predictions.columns) == list(linear.predictions.columns)
    pd.testing.assert_frame_equal(mlp.folds, linear.folds)
    assert mlp.info["probe"] == "MLPProbe" and mlp.info["fitted"][0]["best_epoch"] >= 0


def test_a_clustered_label_is_recovered_by_knn_not_the_linear_probe(clusters):
    store, manifest = clusters
    knn = probes.run_knn(store, manifest, label="finding", rounds=[0], n_boot=50)
    linear = probes.run_linear(store, manifest, label="finding", rounds=[0], n_boot=50)
    assert knn.results.iloc[0]["auroc"] > 0.9, knn.results
    assert linear.results.iloc[0]["auroc"] < 0.7, linear.results
    chosen = knn.info["fitted"][0]["k"][0]
    assert chosen in (5, 10, 20, 50, 100, 200)
    scores = knn.predictions["score"]
    assert scores.between(0, 1).all()


def test_the_commands_equal_the_functions(clusters, tmp_path, capsys):
    store, manifest = clusters
    common = ["--manifest", str(manifest), "--label", "finding", "--rounds", "1"]
    common += ["--n-boot", "20", "--quiet"]
    for command, function, extra, kwargs in (
        ("knn", probes.run_knn, ["--ks", "5", "20"], {"ks": [5, 20]}),
        (
            "mlp",
            probes.run_mlp,
            ["--hidden", "16", "--epochs", "5"],
            {"probe_params": {"hidden": 16, "max_epochs": 5}},
        ),
    ):
        out = tmp_path / command
        assert main([command, str(store), *common, *extra, "--out", str(out)]) == 0
        assert "AUROC" in capsys.readouterr().out
        run = function(store, manifest, label="finding", rounds=[1], n_boot=20, **kwargs)
        again = Run.open(out)
        pd.testing.assert_frame_equal(again.results, run.results, check_dtype=False)
        assert again.spec == run.spec and again.spec.protocol == command


def test_knn_with_flat_votes_is_scikit_learns_cosine_knn():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(120, 6)), rng.integers(0, 2, 120)
    Q = rng.normal(size=(40, 6))
    mine = probes.KNNProbe(k=7, temperature=1e9).fit(X, y)
    theirs = KNeighborsClassifier(7, metric="cosine", algorithm="brute").fit(X, y)
    np.testing.assert_allclose(mine.predict_proba(Q), theirs.predict_proba(Q), atol=1e-6)


def test_knn_votes_are_dinos_temperature_weighted_share():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 2, 50)
    q = rng.normal(size=(3, 4))
    probe = probes.KNNProbe(k=5, temperature=0.1).fit(X, y)
    Xn, qn = normalize_rows(X), normalize_rows(q)
    sims = qn @ Xn.T
    expected = []
    for row in sims:
        top = np.argsort(-row)[:5]
        w = np.exp(row[top] / 0.1)  # DINO: (similarity / T).exp()
        expected.append((w * y[top]).sum() / w.sum())
    np.testing.assert_allclose(probe.predict_proba(q)[:, 1], expected, rtol=1e-5)


def test_k_is_chosen_on_the_validation_set_or_by_leave_one_out():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] > 0).astype(int)
    probe = probes.KNNProbe(ks=(1, 3, 50)).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    assert probe.scores_.shape == (1, 3) and probe.k_[0] == probe.ks_[probe.scores_.argmax()]
    loo = probes.KNNProbe(ks=(1, 50)).fit(X, y)
    assert loo.k_[0] == 50  # a smooth label: many neighbours beat one
    # leave-one-out never returns a row as its own neighbour
    base = normalize_rows(X)
    _, index = cosine_topk(base, base, 3, exclude=np.arange(len(base)))
    assert not (index == np.arange(len(base))[:, None]).any()
    multi = probes.KNNProbe().fit(X[:200], np.column_stack([y, 1 - y])[:200])
    assert multi.predict_proba(X[200:]).shape == (100, 2) and len(multi.k_) == 2


def test_the_blocked_search_equals_the_full_matrix_on_numpy_and_torch():
    rng = np.random.default_rng(3)
    base, queries = (
        normalize_rows(rng.normal(size=(500, 16))),
        normalize_rows(rng.normal(size=(70, 16))),
    )
    full = queries @ base.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :9]
    for kwargs in ({"block_mb": 1e-3}, {"block_mb": 64}, {"device": "cpu"}):
        sims, index = cosine_topk(queries, base, 9, **kwargs)
        np.testing.assert_array_equal(index, expected)
        np.testing.assert_allclose(sims, np.take_along_axis(full, expected, 1), rtol=1e-5)


def test_mlp_and_knn_are_scikit_learn_estimators():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(160, 6))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)
    for probe in (probes.MLPProbe(hidden=32, max_epochs=30), probes.KNNProbe(ks=(5, 15))):
        assert clone(probe).get_params() == probe.get_params()
        scores = cross_val_score(make_pipeline(StandardScaler(), probe), X, y, cv=3)
        assert scores.shape == (3,)
    mlp = probes.MLPProbe(hidden=32, max_epochs=20).fit(X[:100], y[:100])
    again = probes.MLPProbe(hidden=32, max_epochs=20).fit(X[:100], y[:100])  # seeded
    np.testing.assert_array_equal(mlp.predict_proba(X[100:]), again.predict_proba(X[100:]))
    assert mlp.coefs_[0].shape == (6, 32) and mlp.n_epochs_ <= 20
