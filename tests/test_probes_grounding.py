"""Grounding of classification probes: the metrics against their definitions, mask coverage,
the linear probe's patch logits, and patch maps as run extras."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted import RASTER, planted_tokens
from sklearn.metrics import roc_auc_score

import probes
from probes.analysis.grounding import (
    grounding_summary,
    grounding_table,
    mask_coverage,
    patch_auroc,
    pointing_hit,
)
from probes.core.patchmaps import PATCH_MAPS, maps_array, maps_frame
from probes.core.run import Run


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return planted_tokens(tmp_path_factory.mktemp("tokens"), n=120)


def test_patch_auroc_is_the_pixel_auroc_of_the_upsampled_map():
    rng = np.random.default_rng(0)
    score = rng.normal(size=(4, 5))
    mask = np.zeros((16, 20), bool)
    mask[3:9, 6:15] = True  # covers some patches partly
    coverage = mask.reshape(4, 4, 5, 4).mean((1, 3))
    pixels = np.kron(score, np.ones((4, 4)))  # nearest-neighbour upsampling
    assert patch_auroc(score, coverage) == pytest.approx(
        roc_auc_score(mask.ravel(), pixels.ravel())
    )
    assert np.isnan(patch_auroc(score, np.zeros((4, 5))))
    assert np.isnan(patch_auroc(score, np.ones((4, 5))))


def test_pointing_game_asks_whether_the_top_patch_touches_the_mask():
    score = np.zeros((3, 3))
    score[1, 2] = 5
    coverage = np.zeros((3, 3))
    assert not pointing_hit(score, coverage)
    coverage[1, 2] = 0.0625  # one mask pixel of 16 in the top patch
    assert pointing_hit(score, coverage)


def test_grounding_tables_score_images_with_masks_only():
    maps = pd.concat(
        [
            maps_frame(
                ["a", "b"],
                ["p", "q"],
                np.stack([np.eye(2), np.eye(2)]),
                round_index=0,
                label="x",
                kind="score",
            ),
            maps_frame(["c"], ["r"], np.eye(2)[None], round_index=1, label="x", kind="score"),
        ]
    )
    coverage = {
        "a": np.array([[1.0, 0], [0, 0]]),
        "b": np.array([[0, 1.0], [0, 0]]),
        "c": np.zeros((2, 2)),
    }
    table = grounding_table(maps, coverage)
    assert table["image_id"].tolist() == ["a", "b"]  # c: empty mask
    assert table["pointing_hit"].tolist() == [1, 0]
    summary = grounding_summary(table, n_boot=50)
    assert summary.loc[0, "images"] == 2 and summary.loc[0, "pointing_game"] == 0.5


def test_mask_coverage_is_the_masks_share_of_each_patch(tokens):
    store, manifest, label = tokens
    fs = probes.FeatureSet.open(store, manifest, feature="grid16")
    positive = np.flatnonzero(label)[:3]
    coverage = mask_coverage(fs, "lesion", (16, 16), rows=positive, image_size=(RASTER, RASTER))
    assert coverage.shape == (3, 16, 16)
    assert set(np.unique(coverage)) == {0.0, 1.0}  # planted masks are whole patches
    assert (coverage.sum((1, 2)) == 2).all()
    grid = fs.load(positive)[..., 0].astype(np.float32)  # the planted tokens: channel 0 + 5
    assert (grid[coverage == 1].min() > np.median(grid)).all()


def test_linear_patch_maps_average_to_the_image_logit(tokens, tmp_path):
    store, manifest, _ = tokens
    run = probes.run_linear(
        store,
        manifest,
        label="finding",
        feature="grid16",
        rounds=[0],
        n_boot=20,
        grounding_mask="lesion",
        image_size=str(RASTER),
        out=tmp_path / "lin",
    )
    maps = run.extras[PATCH_MAPS]
    assert set(maps["map"]) == {"score"} and set(maps["image_id"]) == set(run.test["image_id"])
    test = run.test.set_index("image_id").loc[maps["image_id"]]
    logit = np.log(test["score"] / (1 - test["score"])).to_numpy()
    np.testing.assert_allclose(maps_array(maps).mean((1, 2)), logit, rtol=1e-4, atol=1e-4)
    again = Run.open(tmp_path / "lin")  # parquet extras read back
    np.testing.assert_array_equal(maps_array(again.extras[PATCH_MAPS]), maps_array(maps))
    assert len(again.extras["grounding.csv"]) == int(run.test["truth"].sum())
    with pytest.raises(ValueError, match="need a grid"):
        probes.run_linear(store, manifest, label="finding", save_maps=True, rounds=[0])
