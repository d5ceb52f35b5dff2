"""Tests for embedcache.intake.images: real PNG/JPEG chest X-rays, PIL formats, colour,
content-based dispatch, and bad inputs. DICOM is tested in test_images_dicom.py.

Expected values are computed independently of the reader (straight from the formulas or PIL's
own decode), never copied from its output.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    assert_read_error,
    assert_unit_image,
    central_vs_lateral,
    chest_phantom,
    write_dicom,
)
from PIL import Image, ImageFile

from embedcache.intake.images import ColourToGreyWarning, read_image

# --- real files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nih/00000001_000.png", "nih/00027426_000.png"])
def test_nih_png_is_pil_decode_over_255(shared_data: Path, name: str) -> None:
    image = read_image(shared_data / name)
    expected = np.asarray(Image.open(shared_data / name)) / 255.0
    assert_unit_image(image, (512, 512))
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-7)
    central, lateral = central_vs_lateral(image)
    assert central > lateral


def test_chexmask_jpeg_heart_is_brighter_than_lungs(shared_data: Path) -> None:
    folder = shared_data / "chexmask"
    image = read_image(folder / "utils_example1.jpg")
    expected = np.asarray(Image.open(folder / "utils_example1.jpg")) / 255.0
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-7)
    heart = np.asarray(Image.open(folder / "H_mask.png")) > 0
    lungs = (np.asarray(Image.open(folder / "LL_mask.png")) > 0) | (
        np.asarray(Image.open(folder / "RL_mask.png")) > 0
    )
    assert_unit_image(image, heart.shape)
    assert image[heart].mean() > image[lungs].mean() + 0.1


# --- dispatch ------------------------------------------------------------------------------


def test_dicom_is_found_by_content_not_extension(tmp_path: Path) -> None:
    stored = chest_phantom()
    named_png = write_dicom(tmp_path / "really_dicom.png", stored)
    np.testing.assert_allclose(read_image(named_png), stored / 4095.0, atol=1e-7)
    Image.fromarray(stored.astype(np.uint8)).save(tmp_path / "really.png", format="PNG")
    (tmp_path / "really.png").rename(tmp_path / "really_png.dcm")
    np.testing.assert_allclose(
        read_image(tmp_path / "really_png.dcm"), stored.astype(np.uint8) / 255.0, atol=1e-7
    )


# --- PNG / JPEG / TIFF ---------------------------------------------------------------------


def test_16_bit_png_and_tiff_scale_by_65535(tmp_path: Path) -> None:
    stored = np.linspace(0, 65535, 40 * 30).round().astype(np.uint16).reshape(40, 30)
    Image.fromarray(stored).save(tmp_path / "a.png")
    Image.fromarray(stored).save(tmp_path / "a.tif")
    Image.fromarray(stored.astype(">u2")).save(tmp_path / "big_endian.tif")
    with Image.open(tmp_path / "big_endian.tif") as stored_big_endian:
        assert stored_big_endian.mode == "I;16B"
    for name in ("a.png", "a.tif", "big_endian.tif"):
        image = read_image(tmp_path / name)
        assert_unit_image(image, (40, 30))
        np.testing.assert_allclose(image, stored / 65535.0, rtol=0, atol=1e-7)


def test_8_bit_tiff_1_bit_png_and_unit_float_tiff(tmp_path: Path) -> None:
    grey = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)
    Image.fromarray(grey).save(tmp_path / "g.tif")
    np.testing.assert_allclose(read_image(tmp_path / "g.tif"), grey / 255.0, atol=1e-7)
    Image.fromarray(grey > 100).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), (grey > 100).astype(np.float32))
    unit = (grey / 255.0).astype(np.float32)
    Image.fromarray(unit).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif"), unit)


def bt601(rgb: np.ndarray) -> np.ndarray:
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0


def test_rgba_png_becomes_luma_grey_with_a_warning(tmp_path: Path) -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (32, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "colour.png")
    with pytest.warns(ColourToGreyWarning, match="colour.png.*alpha dropped"):
        image = read_image(tmp_path / "colour.png")
    assert_unit_image(image, (32, 24))
    np.testing.assert_allclose(image, bt601(rgba.astype(float)), atol=1e-6)


def test_rgb_jpeg_becomes_luma_grey_with_a_warning(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.jpg", quality=95)
    decoded = np.asarray(Image.open(tmp_path / "colour.jpg")).astype(float)
    with pytest.warns(UserWarning, match="colour.jpg"):
        image = read_image(tmp_path / "colour.jpg")
    np.testing.assert_allclose(image, bt601(decoded), atol=1e-6)


def test_grey_saved_as_rgb_is_read_exactly(tmp_path: Path) -> None:
    grey = np.random.default_rng(3).integers(0, 256, (32, 24), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    with pytest.warns(ColourToGreyWarning, match="identical colour channels"):
        image = read_image(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(image, grey.astype(np.float32) / np.float32(255))


def test_grey_with_alpha_and_palette_images(tmp_path: Path) -> None:
    grey = np.random.default_rng(5).integers(0, 256, (32, 24), dtype=np.uint8)
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    with pytest.warns(ColourToGreyWarning, match="la.png.*alpha dropped"):
        np.testing.assert_allclose(read_image(tmp_path / "la.png"), grey / 255.0, atol=1e-7)
    palette_image = Image.fromarray(grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_image.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as stored:
        assert stored.mode == "P"
        expected = bt601(np.asarray(stored.convert("RGB")).astype(float))
    with pytest.warns(ColourToGreyWarning, match="p.png"):
        np.testing.assert_allclose(read_image(tmp_path / "p.png"), expected, atol=1e-6)


# --- bad inputs ----------------------------------------------------------------------------


def test_missing_empty_text_and_directory(tmp_path: Path) -> None:
    assert_read_error(tmp_path / "nowhere.png", "file not found")
    (tmp_path / "empty.png").write_bytes(b"")
    assert_read_error(tmp_path / "empty.png", "empty file")
    (tmp_path / "notes.png").write_text("patient 12, PA view, no findings\n" * 10)
    assert_read_error(tmp_path / "notes.png", "not a recognised image")
    (tmp_path / "notes.dcm").write_text("not a dicom either\n" * 20)
    assert_read_error(tmp_path / "notes.dcm", "not a recognised image")
    assert_read_error(tmp_path, "directory")


def test_truncated_png_and_jpeg(tmp_path: Path) -> None:
    grey = np.random.default_rng(4).integers(0, 256, (64, 64), dtype=np.uint8)
    for name in ("t.png", "t.jpg", "t.tif"):
        Image.fromarray(grey).save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        assert_read_error(tmp_path / name, "could not be decoded")


def test_truncated_pil_images_load_is_refused_process_wide(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "ok.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(tmp_path / "ok.png")


def test_too_small_images(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    assert_read_error(tmp_path / "dot.png", "1x1 pixels; too small, need at least 16x16")
    path = write_dicom(tmp_path / "strip.dcm", np.zeros((8, 64), np.uint16))
    assert_read_error(path, "64x8 pixels; too small")


def test_float_tiff_out_of_range_or_not_finite(tmp_path: Path) -> None:
    values = np.linspace(-0.5, 2.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "hu.tif")
    assert_read_error(tmp_path / "hu.tif", "span [-0.5, 2]; expected within [0, 1]")
    values[3, 4] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    assert_read_error(tmp_path / "nan.tif", "NaN or infinite")


def test_read_error_pickles_for_dataloader_workers(tmp_path: Path) -> None:
    err = assert_read_error(tmp_path / "gone.dcm", "file not found")
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, str(again)) == (err.path, err.reason, str(err))


def test_multi_page_and_signed_tiff(tmp_path: Path) -> None:
    pages = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 200)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    assert_read_error(tmp_path / "pages.tif", "2 frames/pages")
    Image.fromarray(np.full((32, 32), -5, np.int16)).save(tmp_path / "signed.tif")
    assert_read_error(tmp_path / "signed.tif", "signed integer TIFF is not supported")
