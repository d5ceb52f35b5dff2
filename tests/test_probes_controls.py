"""Control baselines: image statistics read through the intake (no encoder), metadata columns,
the image-stats probe on the encoders' folds, the shuffled-label floor, the command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_probes_features import write_store

import probes
from probes.cli import main
from probes.controls.image_stats import image_statistics, metadata_features
from probes.controls.shuffled import ShuffledLabelProbe
from probes.core.run import Run


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """80 PNGs, one per patient: positives are brighter (learnable from the histogram alone);
    the store's global features carry the label too (an encoder that sees it)."""
    folder = tmp_path_factory.mktemp("controls")
    rng = np.random.default_rng(0)
    n = 80
    label = (rng.random(n) < 0.5).astype(int)
    ids = np.array([f"img{i:03d}" for i in range(n)])
    paths = []
    for i in range(n):
        image = np.clip(rng.normal(0.35 + 0.2 * label[i], 0.1, size=(24 + 4 * (i % 3), 20)), 0, 1)
        paths.append(str(folder / f"{ids[i]}.png"))
        Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
    X = rng.normal(size=(n, 6))
    X[:, 0] += 2.0 * label
    write_store(folder / "s.zarr", ids, X)
    manifest = folder / "m.csv"
    pd.DataFrame(
        {
            "image_id": ids,
            "path": paths,
            "patient_id": [f"P{i:03d}" for i in range(n)],
            "finding": label,
            "view": np.where(rng.random(n) < 0.3, "AP", "PA"),
            "age": np.where(rng.random(n) < 0.2, np.nan, rng.integers(20, 90, n)),
        }
    ).to_csv(manifest, index=False)
    return folder / "s.zarr", manifest, paths


def test_image_statistics_are_histogram_fractions_and_size(cohort):
    _, _, paths = cohort
    stats = image_statistics(paths[:3], bins=8, workers=1)
    assert stats.shape == (3, 10)
    assert np.allclose(stats[:, :8].sum(axis=1), 1.0)
    assert stats[:, 8:].tolist() == [[24, 20], [28, 20], [32, 20]]
    with Image.open(paths[0]) as image:
        pixels = np.asarray(image, dtype=np.float64) / 255
    expected = np.histogram(pixels, bins=8, range=(0, 1))[0] / pixels.size
    assert np.allclose(stats[0, :8], expected)


def test_metadata_columns_become_numbers():
    table = pd.DataFrame({"view": ["PA", "AP", None], "age": [30.0, np.nan, 50.0]})
    X, names = metadata_features(table, ["view", "age"])
    assert names == ["view=AP", "view=PA", "view=missing", "age", "age_missing"]
    assert X.tolist() == [[0, 1, 0, 30, 0], [1, 0, 0, 40, 1], [0, 0, 1, 50, 0]]
    with pytest.raises(ValueError, match="'sex'"):
        metadata_features(table, ["sex"])


def test_shuffled_label_probe_fits_permuted_training_labels_and_keeps_validation():
    from sklearn.linear_model import LogisticRegression

    seen = {}

    class Recorder(LogisticRegression):  # records what the inner estimator was given
        def fit(self, X, y, X_val=None, y_val=None):
            seen.update(y=np.asarray(y).copy(), y_val=y_val)
            return super().fit(X, y)

    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    X = np.arange(40.0)[:, None]
    probe = ShuffledLabelProbe(Recorder(), random_state=3).fit(X, y, X_val=X[:5], y_val=y[:5])
    assert sorted(seen["y"]) == sorted(y) and not np.array_equal(seen["y"], y)
    assert seen["y_val"] is not None and np.array_equal(seen["y_val"], y[:5])
    assert probe.predict_proba(X).shape == (40, 2)


def test_image_stats_control_on_the_encoders_folds_and_the_floor(cohort, tmp_path):
    store, manifest, _ = cohort
    common = dict(label="finding", n_boot=50, Cs=[0.1, 1.0])
    encoder = probes.run_linear(store, manifest, **common)
    stats = probes.run_control(
        store, manifest, kind="image-stats", metadata=["view", "age"], **common
    )
    floor = probes.run_control(store, manifest, kind="shuffled-label", **common)
    for control in (stats, floor):  # the same folds, the same rows, the same columns
        pd.testing.assert_frame_equal(control.folds, encoder.folds)
        assert list(control.predictions.columns) == list(encoder.predictions.columns)
        assert list(control.results.columns) == list(encoder.results.columns)
        cols = ["image_id", "round", "split", "truth"]
        pd.testing.assert_frame_equal(control.predictions[cols], encoder.predictions[cols])
    assert stats.info["control"] == "image-stats" and stats.encoder == "image-stats"
    assert set(stats.predictions["encoder"]) == {"image-stats"}
    assert stats.info["features"][-5:] == ["width", "view=AP", "view=PA", "age", "age_missing"]
    assert stats.summary["auroc_mean"].iat[0] > 0.9  # brightness gives the label away
    assert floor.info["control"] == "shuffled-label" and floor.probe == "ShuffledLabelProbe"
    assert abs(floor.summary["auroc_mean"].iat[0] - 0.5) < 0.2  # the floor: chance
    assert encoder.summary["auroc_mean"].iat[0] > 0.85
    # the command gives the same run
    argv = ["control", str(store), "--manifest", str(manifest), "--kind", "image-stats"]
    argv += ["--label", "finding", "--metadata", "view", "age", "--n-boot", "50"]
    assert main([*argv, "--Cs", "0.1", "1.0", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    again = Run.open(tmp_path / "cli")
    assert again.spec == stats.spec
    pd.testing.assert_frame_equal(again.results, stats.results, check_dtype=False)


def test_controls_refuse_a_label_among_the_metadata(cohort):
    store, manifest, _ = cohort
    with pytest.raises(ValueError, match="are the label"):
        probes.run_control(
            store, manifest, kind="image-stats", label="finding", metadata=["finding"]
        )
    with pytest.raises(ValueError, match="one of"):
        probes.run_control(store, manifest, kind="pixels", label="finding")
