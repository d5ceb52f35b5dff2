"""Segmentation probe on the cache: planted masks are found, metrics match hand counts, masks
stay binary, training streams minibatches, ``probes seg`` runs end to end, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedcache.intake.manifest import load_manifest
from embedcache.intake.masks import chexmask_rle_encode, read_mask, siim_rle_encode
from embedcache.store import GroupLayout, open_store
from probes.core.bootstrap import clustered_mean_ci
from probes.core.metrics import summarize_folds
from probes.segmentation.masks import MaskSource, PackedMasks, to_model_input
from probes.segmentation.metrics import (
    confusion_counts,
    dice_iou,
    dice_iou_from_counts,
    pooled_dice,
)
from probes.segmentation.probe import (
    ArrayGrids,
    SegmentationProbe,
    StoreGrids,
    grid_names,
)

SIDE, CHANNELS, SCALE = 8, 16, 4  # grid16 8x8x16, masks 32x32


def planted(n: int, seed: int = 0):
    """Grids with a disc planted along one channel direction, plus noise; masks at 4x."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(CHANNELS)
    direction /= np.linalg.norm(direction)
    big = SIDE * SCALE
    yy, xx = np.mgrid[0:big, 0:big] + 0.5
    centre = rng.uniform(0.3 * big, 0.7 * big, (n, 2, 1, 1))
    radius = rng.uniform(0.15 * big, 0.3 * big, (n, 1, 1))
    masks = (yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 < radius**2
    cover = masks.reshape(n, SIDE, SCALE, SIDE, SCALE).mean((2, 4))
    grid16 = (
        rng.standard_normal((n, SIDE, SIDE, CHANNELS)) * 0.5 + 3.0 * cover[..., None] * direction
    )
    grid32 = grid16.reshape(n, SIDE // 2, 2, SIDE // 2, 2, CHANNELS).mean((2, 4))
    return grid16.astype(np.float16), grid32.astype(np.float16), masks


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    n = 160
    grid16, grid32, masks = planted(n)
    layout = GroupLayout(
        n, CHANNELS, {16: grid16.shape[1:], 32: grid32.shape[1:]}, "float16", rows_per_shard=16
    )
    path = tmp_path_factory.mktemp("planted") / "s.zarr"
    with open_store(path, "a") as store:
        group = store.create_group("planted", layout, np.arange(n).astype(str), {})
        for start in range(0, n, 16):
            part = slice(start, start + 16)
            glob = grid16[part].astype(np.float32).mean((1, 2))
            group.write_rows(
                start, {"global": glob, "grid16": grid16[part], "grid32": grid32[part]}
            )
        group.mark_done(np.arange(n))
    store = open_store(path)
    yield store.group("planted"), grid16, grid32, masks
    store.close()


def _fast(**kw):
    return SegmentationProbe(
        **{"lr": 3e-2, "max_epochs": 25, "batch_size": 16, "device": "cpu", **kw}
    )


# -- (1) a planted mask is found ---------------------------------------------------------------


@pytest.mark.parametrize("grid", ["grid16", "grid16+grid32"])
def test_planted_masks_are_segmented_on_held_out_images(planted_store, grid):
    group, *_, masks = planted_store
    grids = StoreGrids(group, np.arange(len(masks)), grid_names(grid))
    train, test = np.arange(120), np.arange(120, 160)
    probe = _fast(grid=grid).fit(grids.subset(train), PackedMasks.from_array(masks[train]))
    dice, iou = dice_iou(probe.predict(grids.subset(test)), masks[test])
    assert dice.mean() > 0.8 and iou.mean() > 0.65
    assert probe.score(grids.subset(test), masks[test]) == pytest.approx(dice.mean())
    assert probe.predict_proba(grids.subset(test[:3])).shape == (3, 2, 32, 32)


def test_three_classes_and_in_memory_arrays():
    grid16, _, masks = planted(60, seed=1)
    labels = masks.astype(np.int64)
    labels[:, :4] = 2  # a third class: a band at the top
    signal = np.zeros(CHANNELS, np.float16)
    signal[0] = 4
    grid16[:, :1] += signal
    probe = _fast(n_classes=3, class_weights=(1, 1, 1)).fit(grid16[:45], labels[:45])
    assert probe.coef_.shape == (3, CHANNELS)
    predicted = probe.predict(grid16[45:])
    assert set(np.unique(predicted)) <= {0, 1, 2}
    assert (predicted[:, :2] == 2).mean() > 0.9  # rows 2-3 blend with grid row 1


# -- (2) metrics against hand counts ------------------------------------------------------------


def test_dice_iou_against_hand_computed_examples():
    pred = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]], [[1, 1], [1, 1]]])
    true = np.array([[[1, 0], [1, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]], [[1, 1], [1, 0]]])
    tp, fp, fn = confusion_counts(pred, true)
    assert (tp.tolist(), fp.tolist(), fn.tolist()) == ([1, 0, 0, 3], [1, 0, 0, 1], [1, 0, 1, 0])
    dice, iou = dice_iou(pred, true, both_empty="one")
    assert dice == pytest.approx([2 / 4, 1.0, 0.0, 6 / 7])
    assert iou == pytest.approx([1 / 3, 1.0, 0.0, 3 / 4])
    dice_x, iou_x = dice_iou(pred, true, both_empty="exclude")
    assert np.isnan(dice_x[1]) and np.isnan(iou_x[1])
    assert np.nanmean(dice_x) == pytest.approx((0.5 + 0 + 6 / 7) / 3)
    assert pooled_dice(tp, fp, fn) == pytest.approx(2 * 4 / (2 * 4 + 2 + 2))
    assert np.isnan(pooled_dice([0], [0], [0]))
    with pytest.raises(ValueError, match="both_empty"):
        dice_iou_from_counts(tp, fp, fn, both_empty="zero")


def test_fold_summary_and_seeded_bootstrap():
    rows = pd.DataFrame({"fold": [0, 0, 1, 1, 2, 2], "dice": [0.8, 1.0, 0.5, 0.7, 0.9, np.nan]})
    summary = summarize_folds(rows).iloc[0]
    assert summary["folds"] == [0.9, 0.6, 0.9]
    assert summary["median"] == pytest.approx(0.9)
    assert (summary["min"], summary["max"]) == pytest.approx((0.6, 0.9))
    assert summary["mean"] == pytest.approx(0.8)
    assert summary["sd"] == pytest.approx(np.std([0.9, 0.6, 0.9], ddof=1))
    assert summary["n_images"] == 5
    values = np.random.default_rng(0).uniform(0.5, 1.0, 200)
    images = np.arange(200)
    low, high = clustered_mean_ci(values, images, seed=3)
    assert low < values.mean() < high
    assert (low, high) == clustered_mean_ci(values, images, seed=3)
    patients = np.repeat(np.arange(50), 4)
    low_p, high_p = clustered_mean_ci(values, patients, seed=3)
    assert low_p < values.mean() < high_p
    with_nan = np.r_[values, np.nan]  # an excluded image is left out of every mean
    assert clustered_mean_ci(with_nan, np.r_[images, 200], seed=3) != (np.nan, np.nan)


# -- (3) masks stay binary ----------------------------------------------------------------------


def test_nearest_resizing_keeps_masks_binary_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.random((96, 80)) < 0.3
    for size in [(16, 16), (37, 37), (200, 150)]:
        for geometry in (
            None,
            {"resize": "pad", "input_size": 56},
            {"resize": "crop", "input_size": 56},
        ):
            out = to_model_input(mask, size, geometry)
            assert out.dtype == bool and out.shape == size
    # pad: the wider-than-tall padding is background; crop: the kept window is the centre.
    wide = np.ones((40, 80), bool)
    padded = to_model_input(wide, (8, 8), {"resize": "pad", "input_size": 56})
    assert not padded[:2].any() and padded[2:6].all() and not padded[6:].any()
    stripes = np.zeros((40, 80), bool)
    stripes[:, :20] = True  # the left quarter, cut away by a centre crop
    assert not to_model_input(stripes, (8, 8), {"resize": "crop", "input_size": 56}).any()
    # 0/255 PNG -> packed masks of 0/1 only, identical to decoding the SIIM RLE of the same mask
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    Image.fromarray(np.zeros((96, 80), np.uint8)).save(tmp_path / "img.png")
    table = pd.DataFrame(
        {
            "image_id": ["a"],
            "path": ["img.png"],
            "patient_id": ["p"],
            "mask_png": ["m.png"],
            "mask_rle": [siim_rle_encode(mask)],
        }
    )
    table.to_csv(tmp_path / "manifest.csv", index=False)
    manifest = load_manifest(tmp_path / "manifest.csv")
    from_png = MaskSource(manifest, "mask_png").load((24, 20))
    source = MaskSource(manifest, "mask_rle")  # size from the image header
    assert source.kind == "siim"
    from_rle = source.load((24, 20))
    assert np.array_equal(from_png.take([0]), from_rle.take([0]))
    assert set(np.unique(from_png.take([0]).view(np.uint8))) <= {0, 1}
    assert np.array_equal(from_png.take([0])[0], to_model_input(mask, (24, 20)))
    # CheXmask RLE (absolute, row-major) with the raster size in Height/Width columns
    table["chex"], table["Height"], table["Width"] = chexmask_rle_encode(mask), 96, 80
    manifest = load_manifest(_written(table, tmp_path / "chex.csv"))
    chex = MaskSource(manifest, "chex", kind="chexmask").load((24, 20))
    assert np.array_equal(chex.take([0]), from_png.take([0]))


def _written(table: pd.DataFrame, path):
    table.to_csv(path, index=False)
    return path


# -- (4) memory bounded: only minibatches are read ------------------------------------------------


def test_training_reads_only_minibatches(planted_store, monkeypatch):
    group, *_, masks = planted_store
    asked = []

    def spy(method):
        original = getattr(group, method)

        def read(name, rows):
            asked.append(len(np.asarray(rows)))
            return original(name, rows)

        monkeypatch.setattr(group, method, read)

    spy("read_rows")  # copies (standardisation pass, validation, prediction)
    spy("row_views")  # zero-copy rows (the fused CPU training step)
    grids = StoreGrids(group, np.arange(120), ["grid16"])
    probe = _fast(max_epochs=2, batch_size=8, stats_images=40).fit(
        grids, PackedMasks.from_array(masks[:120])
    )
    assert asked and max(asked) <= 8
    # stats pass (40 images) + per epoch the training (96) and validation (24) images
    assert sum(asked) == 40 + probe.n_epochs_ * 120
    asked.clear()
    probe.predict(grids)
    assert max(asked) <= 8 and sum(asked) == 120


# -- (5) end to end on a phantom cohort ---------------------------------------------------------


def test_probes_seg_end_to_end_on_a_phantom_cohort(
    phantom_manifest, tiny_encoder_spec, tmp_path, capsys
):
    from embedcache.extract import extract
    from probes.cli import main
    from probes.core.splits import check_no_leakage, column_split

    store = tmp_path / "s.zarr"
    extract(
        phantom_manifest,
        tiny_encoder_spec,
        store,
        rows_per_shard=4,
        batch_size=4,
        num_workers=0,
        progress=False,
        log=lambda *_: None,
    )
    out = tmp_path / "out"
    argv = ["seg", str(store), "--manifest", str(phantom_manifest), "--mask", "heart_mask"]
    argv += ["--epochs", "3", "--n-boot", "20", "--format", "csv", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "median [min, max]" in printed and "mean ± sd" in printed
    rows = pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    manifest = load_manifest(phantom_manifest)
    test = rows[rows["split"] == "test"]
    assert sorted(test["image_id"]) == sorted(manifest.image_ids)  # every image tested once
    patient_of = dict(zip(manifest.image_ids, manifest.patient_ids, strict=True))
    assert all(
        patient_of[i] == p for i, p in zip(rows["image_id"], rows["patient_id"], strict=True)
    )
    assert rows["dice"].between(0, 1).all() and rows["mask_area"].gt(0).all()
    assert rows["encoder"].nunique() == 1 and rows["seed"].eq(5656).all()
    assert rows["mask_size"].eq("16x16").all()  # 4 x the tiny encoder's 4x4 grid16
    folds = pd.read_csv(out / "folds.csv", dtype={"image_id": str, "patient_id": str})
    check_no_leakage(column_split(folds["fold"]), folds["patient_id"])
    assert len(pd.read_csv(out / "results.csv")) == 5
    # each row's mask is its own image's heart, brought to 16 x 16 by nearest neighbour
    first = test.iloc[0]
    row = manifest.table.set_index("image_id").loc[first["image_id"]]
    heart = read_mask(manifest.resolve("heart_mask", row["heart_mask"]))
    assert first["mask_area"] == pytest.approx(to_model_input(heart, (16, 16)).mean())
    # SIIM RLE over each image's own size (PNG and DICOM headers) decodes to the PNG masks
    from_rle = MaskSource(manifest, "ptx_rle").load((16, 16))
    from_png = MaskSource(manifest, "ptx_mask").load((16, 16))
    assert np.array_equal(from_rle.bits, from_png.bits) and from_png.area().max() > 0


# -- (6) determinism ------------------------------------------------------------------------------


def test_same_seed_same_probe(planted_store):
    group, *_, masks = planted_store
    grids = StoreGrids(group, np.arange(100), ["grid16"])
    y = PackedMasks.from_array(masks[:100])
    first = _fast(max_epochs=4, seed=7).fit(grids, y)
    again = _fast(max_epochs=4, seed=7, prefetch=0).fit(grids, y)
    assert np.array_equal(first.coef_, again.coef_)
    assert first.history_ == again.history_
    assert np.array_equal(first.predict(grids), again.predict(grids))
    other = _fast(max_epochs=4, seed=8).fit(grids, y)
    assert not np.array_equal(first.coef_, other.coef_)
    # the same grids from memory give the same probe as streamed from the store
    in_memory = ArrayGrids(np.asarray(group.array("grid16")[:100]))
    assert np.array_equal(_fast(max_epochs=4, seed=7).fit(in_memory, y).coef_, first.coef_)


def test_fused_training_trains_the_probe_autograd_trains(planted_store, monkeypatch):
    """The probe's CPU training through the fused step (compact uint8 masks, the compiled
    full-resolution loop) gives autograd's losses and weights, and the same bits with or
    without the prefetch thread."""
    group, *_, masks = planted_store
    grids = StoreGrids(group, np.arange(60), ["grid16"])
    y = PackedMasks.from_array(masks[:60])
    fused = _fast(max_epochs=3, seed=3, class_weights=(1.0, 3.0)).fit(grids, y)
    again = _fast(max_epochs=3, seed=3, class_weights=(1.0, 3.0), prefetch=0).fit(grids, y)
    assert fused.history_ == again.history_ and np.array_equal(fused.coef_, again.coef_)
    monkeypatch.setattr(SegmentationProbe, "_fused", lambda self, n_grids: False)
    plain = _fast(max_epochs=3, seed=3, class_weights=(1.0, 3.0)).fit(grids, y)
    for a, b in zip(plain.history_, fused.history_, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    np.testing.assert_allclose(fused.coef_, plain.coef_, rtol=1e-3, atol=1e-5)
    assert not np.array_equal(fused.coef_, plain.coef_)  # (two different paths were taken)


def test_refuses_mismatched_inputs():
    grid16, _, masks = planted(10)
    with pytest.raises(ValueError, match="masks"):
        SegmentationProbe().fit(grid16, masks[:5])
    with pytest.raises(ValueError, match="grid must be"):
        SegmentationProbe(grid="grid8").fit(grid16, masks)
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationProbe(class_weights=(1, 2, 3)).fit(grid16, masks)
    with pytest.raises(ValueError, match="labels outside"):
        SegmentationProbe(max_epochs=1).fit(grid16, masks.astype(np.int64) * 3)


@pytest.mark.parametrize(
    "preprocessing",
    [
        None,
        {"resize": "resize", "input_size": 32},
        {"resize": "pad", "input_size": 32},
        {"resize": "crop", "input_size": 32, "resize_to": 36},
    ],
)
def test_images_sample_into_the_model_frame_like_their_masks(preprocessing):
    """An X-ray and its mask land on the same model-frame pixels (overlays line up)."""
    from probes.segmentation.masks import image_to_model_input, to_model_input

    rng = np.random.default_rng(0)
    image = rng.random((45, 60)).astype(np.float32)
    mask = image > 0.7
    sampled = image_to_model_input(image, (16, 16), preprocessing)
    assert sampled.dtype == np.float32 and sampled.shape == (16, 16)
    np.testing.assert_array_equal(sampled > 0.7, to_model_input(mask, (16, 16), preprocessing))
    if preprocessing and preprocessing["resize"] == "pad":  # the padded band is 0
        assert (sampled[0] == 0).all()


def test_validation_is_passed_as_every_probe_takes_it(planted_store):
    """``fit(X, y, X_val, y_val)`` as LinearProbe; the earlier ``eval_set`` pair is the same."""
    group, grid16, _, masks = planted_store
    train, val = np.arange(0, 48), np.arange(48, 64)
    grids = StoreGrids(group, train, ["grid16"])
    held = StoreGrids(group, val, ["grid16"])
    y, y_val = PackedMasks.from_array(masks[train]), PackedMasks.from_array(masks[val])
    a = _fast(max_epochs=2, batch_size=8).fit(grids, y, held, y_val)
    b = _fast(max_epochs=2, batch_size=8).fit(grids, y, eval_set=(held, y_val))
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.history_ == b.history_ and a.best_epoch_ == b.best_epoch_
    with pytest.raises(ValueError, match="both X_val and y_val"):
        _fast().fit(grids, y, held)
