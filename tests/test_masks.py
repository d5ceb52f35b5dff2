"""Mask codecs: hand-derived examples, randomized round trips, and the real SIIM/CheXmask files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import shared_file
from PIL import Image
from scipy import ndimage

from embedcache.intake.masks import (
    chexmask_rle_decode,
    chexmask_rle_encode,
    read_mask,
    resize_mask,
    siim_rle_decode,
    siim_rle_encode,
)

# 4 x 4 mask, row r / column c:
#   . X . .
#   . X . .
#   . . . X
#   . . . X
# Column-major (SIIM) raster, index = c * 4 + r: column 1 gives 4, 5; column 3 gives 14, 15.
#   runs (start, length) = (4, 2), (14, 2); relative offsets: 4 - 0 = 4, 14 - (4 + 2) = 8
#   -> "4 2 8 2"
# Row-major (CheXmask) raster, index = r * 4 + c: 1, 5, 11, 15 -> 1-based starts 2, 6, 12, 16
#   -> "2 1 6 1 12 1 16 1"
SQUARE = np.array(
    [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]],
    dtype=bool,
)
SQUARE_SIIM = "4 2 8 2"
SQUARE_CHEXMASK = "2 1 6 1 12 1 16 1"

# 2 x 3 mask (height 2, width 3) so that a swapped height/width cannot pass:
#   X . .
#   X . X
# Column-major, index = c * 2 + r: 0, 1 (column 0), 5 (column 2) -> runs (0, 2), (5, 1)
#   offsets 0 and 5 - 2 = 3 -> "0 2 3 1"
# Row-major, index = r * 3 + c: 0, 3, 5 -> 1-based "1 1 4 1 6 1"
WIDE = np.array([[1, 0, 0], [1, 0, 1]], dtype=bool)
WIDE_SIIM = "0 2 3 1"
WIDE_CHEXMASK = "1 1 4 1 6 1"


# ---------------------------------------------------------------- hand-derived examples


def test_siim_hand_examples_are_column_major():
    assert siim_rle_encode(SQUARE) == SQUARE_SIIM
    np.testing.assert_array_equal(siim_rle_decode(SQUARE_SIIM, 4, 4), SQUARE)
    assert siim_rle_encode(WIDE) == WIDE_SIIM
    np.testing.assert_array_equal(siim_rle_decode(WIDE_SIIM, 2, 3), WIDE)


def test_chexmask_hand_examples_are_row_major_and_one_based():
    assert chexmask_rle_encode(SQUARE) == SQUARE_CHEXMASK
    np.testing.assert_array_equal(chexmask_rle_decode(SQUARE_CHEXMASK, 4, 4), SQUARE)
    assert chexmask_rle_encode(WIDE) == WIDE_CHEXMASK
    np.testing.assert_array_equal(chexmask_rle_decode(WIDE_CHEXMASK, 2, 3), WIDE)


def test_the_two_dialects_disagree_on_the_same_string():
    # Read with the wrong raster order, the same numbers give another mask.
    as_siim = siim_rle_decode("0 2 3 1", 2, 3)
    as_row_major_relative = np.zeros(6, dtype=bool)
    as_row_major_relative[[0, 1, 5]] = True
    assert not np.array_equal(as_siim, as_row_major_relative.reshape(2, 3))


def test_siim_empty_spellings():
    for empty in ("-1", " -1", "-1 ", "", "   ", float("nan"), None):
        mask = siim_rle_decode(empty, 5, 7)
        assert mask.shape == (5, 7) and mask.dtype == bool and not mask.any()
    assert siim_rle_encode(np.zeros((5, 7), dtype=bool)) == "-1"


def test_siim_tolerates_surrounding_spaces_and_unions_rows():
    np.testing.assert_array_equal(siim_rle_decode(" 0 2 3 1 ", 2, 3), WIDE)
    # The same mask as two csv rows, one region each, plus an empty row.
    np.testing.assert_array_equal(siim_rle_decode(["0 2", " 5 1", "-1"], 2, 3), WIDE)
    np.testing.assert_array_equal(siim_rle_decode(pd.Series(["0 2", "5 1"]), 2, 3), WIDE)
    assert not siim_rle_decode([], 2, 3).any()


def test_siim_default_size_is_siim_1024():
    assert siim_rle_decode("-1").shape == (1024, 1024)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("4 2 8", "odd number"),
        ("4 -2", "negative length"),
        ("-4 2", "negative offset"),
        ("4 2 8 3", "past the end"),
        ("4 2.5", "not an integer"),
        ("a b", "not an integer"),
    ],
)
def test_siim_rejects_malformed_rle(rle, message):
    with pytest.raises(ValueError, match=message):
        siim_rle_decode(rle, 4, 4)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("2 1 6", "odd number"),
        ("2 -1", "negative length"),
        ("0 1", "1-based"),
        ("16 2", "past the end"),
    ],
)
def test_chexmask_rejects_malformed_rle(rle, message):
    with pytest.raises(ValueError, match=message):
        chexmask_rle_decode(rle, 4, 4)


def test_chexmask_last_pixel_is_in_range():
    mask = chexmask_rle_decode("16 1", 4, 4)
    assert mask[3, 3] and mask.sum() == 1


def test_encoders_reject_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        siim_rle_encode(np.zeros((2, 2, 2), dtype=bool))


# ---------------------------------------------------------------- randomized round trips


def test_random_round_trips_both_dialects():
    rng = np.random.default_rng(20240601)
    for trial in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, size=2))
        density = [0.0, 1.0, 0.02, 0.5, 0.9][trial % 5]
        mask = rng.random((height, width)) < density
        if trial % 3 == 0:  # blobby masks too, with long runs crossing columns
            mask = ndimage.binary_dilation(mask, iterations=2)
        siim = siim_rle_encode(mask)
        np.testing.assert_array_equal(siim_rle_decode(siim, height, width), mask)
        chexmask = chexmask_rle_encode(mask)
        np.testing.assert_array_equal(chexmask_rle_decode(chexmask, height, width), mask)
        assert (siim == "-1") == (not mask.any())


# ---------------------------------------------------------------- resize_mask


def test_resize_mask_enlarges_by_pixel_replication():
    out = resize_mask(WIDE, (4, 6))
    assert out.dtype == bool and out.shape == (4, 6)
    np.testing.assert_array_equal(out, np.kron(WIDE, np.ones((2, 2), dtype=bool)))


def test_resize_mask_shrinks_by_sampling_centres():
    big = np.kron(SQUARE, np.ones((3, 3), dtype=bool))  # 12 x 12, blocks of 3
    np.testing.assert_array_equal(resize_mask(big, (4, 4)), SQUARE)
    np.testing.assert_array_equal(resize_mask(SQUARE, (4, 4)), SQUARE)


def test_resize_mask_keeps_area_and_location_of_a_disc():
    yy, xx = np.mgrid[:1024, :1024]
    disc = (yy - 300) ** 2 + (xx - 700) ** 2 < 150**2
    small = resize_mask(disc, (256, 256))
    assert abs(small.mean() - disc.mean()) < 0.002
    rows, cols = np.nonzero(small)
    assert abs(rows.mean() * 4 + 1.5 - 300) < 2 and abs(cols.mean() * 4 + 1.5 - 700) < 2
    assert resize_mask(disc, (37, 53)).shape == (37, 53)


def test_resize_mask_rejects_bad_input():
    with pytest.raises(ValueError):
        resize_mask(np.zeros((2, 2, 3)), (4, 4))
    with pytest.raises(ValueError):
        resize_mask(SQUARE, (0, 4))


# ---------------------------------------------------------------- read_mask


def test_read_mask_formats(tmp_path):
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:30, 5:20] = True
    files = {
        "m.png": Image.fromarray(mask.astype(np.uint8) * 255),
        "ones.png": Image.fromarray(mask.astype(np.uint8)),  # label maps stored as 0/1
        "m16.png": Image.fromarray(mask.astype(np.uint16) * 65535),
        "m.tif": Image.fromarray(mask.astype(np.uint8) * 255),
        "bits.png": Image.fromarray(mask.astype(np.uint8) * 255).convert("1"),
        "rgb.png": Image.fromarray(np.stack([mask.astype(np.uint8) * 200] * 3, axis=-1)),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
        out = read_mask(tmp_path / name)
        assert out.dtype == bool and out.shape == (40, 50), name
        np.testing.assert_array_equal(out, mask, err_msg=name)


def test_read_mask_jpeg_thresholds_at_half_of_max(tmp_path):
    yy, xx = np.mgrid[:64, :64]
    mask = (yy - 30.3) ** 2 + (xx - 35.7) ** 2 < 17.2**2
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.jpg", quality=50)
    raw = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert ((raw != 0) != mask).sum() > 20, "JPEG should leave artefacts for this test to mean much"
    out = read_mask(tmp_path / "m.jpg")
    assert out.dtype == bool and (out != mask).mean() < 0.005
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "empty.jpg")
    assert not read_mask(tmp_path / "empty.jpg").any()


def test_read_mask_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "not_a_mask.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="not_a_mask.png"):
        read_mask(bad)
    with pytest.raises(FileNotFoundError):
        read_mask(tmp_path / "missing.png")


def test_read_real_chexmask_png():
    heart = read_mask(shared_file("chexmask/H_mask.png"))
    left = read_mask(shared_file("chexmask/LL_mask.png"))
    right = read_mask(shared_file("chexmask/RL_mask.png"))
    assert heart.shape == left.shape == right.shape == (899, 786)
    assert heart.dtype == bool and 0.02 < heart.mean() < 0.30
    assert ndimage.label(heart)[1] == 1
    # Patient's right lung is on the image's left, the heart in between.
    x_of = {name: np.nonzero(m)[1].mean() for name, m in [("R", right), ("H", heart), ("L", left)]}
    assert x_of["R"] < x_of["H"] < x_of["L"]


# ---------------------------------------------------------------- real SIIM RLE csv


def load_siim_rows() -> pd.DataFrame:
    frame = pd.read_csv(shared_file("siim/train-rle-sample.csv"), dtype=str, keep_default_na=False)
    frame.columns = [c.strip() for c in frame.columns]  # the header is "ImageId, EncodedPixels"
    return frame


def test_real_siim_rows_round_trip_exactly():
    frame = load_siim_rows()
    n_positive = 0
    for cell in frame["EncodedPixels"]:
        mask = siim_rle_decode(cell)
        if cell.strip() == "-1":
            assert not mask.any()
            continue
        n_positive += 1
        # Pneumothoraces are plausible regions: neither a speck nor half the image.
        assert 50 < mask.sum() < 0.5 * mask.size
        assert siim_rle_encode(mask) == cell.strip()
    assert n_positive > 10


def test_real_siim_images_union_their_rows():
    frame = load_siim_rows()
    for _, rows in frame.groupby("ImageId"):
        union = siim_rle_decode(list(rows["EncodedPixels"]))
        assert np.array_equal(siim_rle_decode(siim_rle_encode(union)), union)
    # The sample happens to hold one row per image: split real masks into two regions (rows)
    # to check that the union of several rows is the image's mask.
    positives = [c for c in frame["EncodedPixels"] if c.strip() != "-1"][:10]
    for cell in positives:
        mask = siim_rle_decode(cell)
        top, bottom = mask.copy(), mask.copy()
        top[512:] = False
        bottom[:512] = False
        rows = [siim_rle_encode(top), siim_rle_encode(bottom)]
        union = siim_rle_decode(rows)
        np.testing.assert_array_equal(union, mask)
        assert siim_rle_encode(union) == cell.strip()


# ---------------------------------------------------------------- real CheXmask RLE csv


def test_real_chexmask_hearts_and_lungs_are_anatomical():
    frame = pd.read_csv(shared_file("chexmask/ChestX-Ray8-sample.csv"))
    assert len(frame) > 0
    for _, row in frame.iterrows():
        height, width = int(row["Height"]), int(row["Width"])
        heart = chexmask_rle_decode(row["Heart"], height, width)
        left = chexmask_rle_decode(row["Left Lung"], height, width)
        right = chexmask_rle_decode(row["Right Lung"], height, width)
        for cell, mask in [(row["Heart"], heart), (row["Left Lung"], left)]:
            assert chexmask_rle_encode(mask) == cell.strip()
        assert 0.02 < heart.mean() < 0.30
        labels, n_blobs = ndimage.label(heart)
        assert n_blobs == 1
        heart_y, heart_x = ndimage.center_of_mass(heart)
        left_y, left_x = ndimage.center_of_mass(left)
        right_y, right_x = ndimage.center_of_mass(right)
        assert width / 4 < heart_x < 3 * width / 4
        assert heart_y > left_y and heart_y > right_y
        # Patient's right lung on the image's left: a transposed decode would break this.
        assert right_x < heart_x < left_x
