"""Tests for embedcache.intake.images: real chest X-rays, synthetic DICOMs, and bad inputs.

Expected values are computed independently of the reader (straight from the DICOM formulas,
pydicom's own decode, or PIL's), never copied from its output.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from embedcache.intake import images
from embedcache.intake.images import ColourToGreyWarning, ImageReadError, read_image

SIIM_DICOM = "siim/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
GDCM_MONO1 = "dicom/gdcm-CR-MONO1-10-chest.dcm"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    frames: int = 1,
    **elements: object,
) -> Path:
    """Write a single-sample DICOM from scratch (Explicit VR Little Endian, with preamble).

    stored: (H, W) or (frames, H, W) uint8/uint16/int16 stored values.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_phantom(shape: tuple[int, int] = (64, 48), bits: int = 12) -> np.ndarray:
    """Density (higher = denser) of a crude chest: soft tissue, two dark lungs, a dense spine.

    Returns uint16 (H, W) over [0, 2**bits - 1], with deterministic noise so every value differs.
    """
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(float)
    density = np.full(shape, 0.55)
    for centre_x in (0.27 * w, 0.73 * w):
        lung = ((x - centre_x) / (0.17 * w)) ** 2 + ((y - 0.5 * h) / (0.35 * h)) ** 2 <= 1
        density[lung] = 0.2
    density[np.abs(x - (w - 1) / 2) < 0.07 * w] = 0.9
    density += np.random.default_rng(0).uniform(-0.05, 0.05, shape)
    return np.round(np.clip(density, 0, 1) * (2**bits - 1)).astype(np.uint16)


def central_vs_lateral(image: np.ndarray) -> tuple[float, float]:
    """Mean of the central column band (spine, mediastinum) and of the two lateral lung bands."""
    h, w = image.shape
    rows = slice(int(0.3 * h), int(0.7 * h))
    central = image[rows, int(0.45 * w) : int(0.55 * w)].mean()
    lateral = np.concatenate(
        [image[rows, int(0.2 * w) : int(0.35 * w)], image[rows, int(0.65 * w) : int(0.8 * w)]],
        axis=1,
    ).mean()
    return float(central), float(lateral)


def assert_unit_image(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.dtype == np.float32
    assert image.shape == shape
    assert image.flags.c_contiguous
    assert image.min() >= 0.0 and image.max() <= 1.0


# --- real files ----------------------------------------------------------------------------


def test_siim_jpeg_baseline_dicom_is_pixel_array_over_255(shared_data: Path) -> None:
    path = shared_data / SIIM_DICOM
    image = read_image(path)
    assert_unit_image(image, (1024, 1024))
    expected = pydicom.dcmread(path).pixel_array / 255.0
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-7)


def test_gdcm_monochrome1_is_windowed_then_inverted(shared_data: Path) -> None:
    path = shared_data / GDCM_MONO1
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (550.0, 1024.0)
    stored = ds.pixel_array.astype(np.float64)
    # PS3.3 C.11.2.1.2.1 LINEAR window with c = 550, w = 1024, then MONOCHROME1 -> 1 - y.
    windowed = np.clip((stored - (550 - 0.5)) / (1024 - 1) + 0.5, 0.0, 1.0)
    image = read_image(path)
    assert_unit_image(image, (440, 440))
    np.testing.assert_allclose(image, 1.0 - windowed, rtol=0, atol=1e-6)


def test_gdcm_monochrome1_lungs_are_darker_than_the_mediastinum(shared_data: Path) -> None:
    central, lateral = central_vs_lateral(read_image(shared_data / GDCM_MONO1))
    assert central > lateral + 0.15  # a missed inversion would give the opposite order


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


# --- synthetic DICOM radiometry ------------------------------------------------------------


def test_monochrome1_and_monochrome2_of_the_same_stored_values_are_x_and_one_minus_x(
    tmp_path: Path,
) -> None:
    stored = chest_phantom()
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", stored))
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono2, stored / 4095.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(mono1, np.float32(1.0) - mono2)


def test_the_same_anatomy_encoded_as_monochrome1_reads_like_monochrome2(tmp_path: Path) -> None:
    density = chest_phantom()
    as_mono2 = read_image(write_dicom(tmp_path / "m2.dcm", density))
    as_mono1 = read_image(  # MONOCHROME1 stores dense tissue as LOW values
        write_dicom(tmp_path / "m1.dcm", 4095 - density, photometric="MONOCHROME1")
    )
    np.testing.assert_allclose(as_mono1, as_mono2, rtol=0, atol=1e-6)
    central, lateral = central_vs_lateral(as_mono1)
    assert central > lateral + 0.3


@pytest.mark.parametrize(
    ("bits_stored", "dtype"), [(8, np.uint8), (12, np.uint16), (16, np.uint16)]
)
def test_unsigned_without_voi_scales_over_the_full_stored_range(
    tmp_path: Path, bits_stored: int, dtype: type
) -> None:
    full = 2**bits_stored - 1
    stored = np.linspace(0, full, 64 * 48).round().astype(dtype).reshape(64, 48)
    image = read_image(write_dicom(tmp_path / "x.dcm", stored, bits_stored=bits_stored))
    assert_unit_image(image, (64, 48))
    np.testing.assert_allclose(image, stored / full, rtol=0, atol=1e-7)
    # Not per-image min-max: a dim image stays dim.
    dim = (stored // 4).astype(dtype)
    dim_image = read_image(write_dicom(tmp_path / "dim.dcm", dim, bits_stored=bits_stored))
    assert dim_image.max() <= 0.25 + 1e-6


def test_signed_pixels_with_rescale_scale_over_the_rescaled_stored_range(tmp_path: Path) -> None:
    stored = np.linspace(-2048, 2047, 64 * 48).round().astype(np.int16).reshape(64, 48)
    path = write_dicom(tmp_path / "s.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024)
    modality = stored * 2.0 - 1024  # 12-bit signed stored range [-2048, 2047], rescaled
    lo, hi = -2048 * 2.0 - 1024, 2047 * 2.0 - 1024
    np.testing.assert_allclose(read_image(path), (modality - lo) / (hi - lo), atol=1e-6)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR function, written out branch by branch, output in [0, 1]."""
    out = ((values - (center - 0.5)) / max(width - 1, 1e-300) + 0.5).astype(np.float64)
    out[values <= center - 0.5 - (width - 1) / 2] = 0.0
    out[values > center - 0.5 + (width - 1) / 2] = 1.0
    return out


@pytest.mark.parametrize(
    ("center", "width", "slope", "intercept"),
    [(2048, 4096, 1, 0), (1000, 400, 1, 0), (600.5, 1, 1, 0), (-300, 1500, 0.5, -1000)],
)
def test_window_follows_the_dicom_linear_function_and_pydicom(
    tmp_path: Path, center: float, width: float, slope: float, intercept: float
) -> None:
    stored = chest_phantom()
    extra = {"RescaleSlope": slope, "RescaleIntercept": intercept} if slope != 1 else {}
    path = write_dicom(tmp_path / "w.dcm", stored, WindowCenter=center, WindowWidth=width, **extra)
    image = read_image(path)
    modality = stored * float(slope) + intercept
    np.testing.assert_allclose(image, linear_window(modality, center, width), atol=1e-6)
    # The reader's float32 fast path agrees with pydicom's own VOI implementation.
    ds = pydicom.dcmread(path)
    y = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    y_min, y_max = intercept, 4095 * float(slope) + intercept
    np.testing.assert_allclose(image, (y - y_min) / (y_max - y_min), atol=1e-6)


def test_first_of_several_windows_is_used(tmp_path: Path) -> None:
    stored = chest_phantom()
    path = write_dicom(
        tmp_path / "w.dcm", stored, WindowCenter=[1000, 3000], WindowWidth=[500, 100]
    )
    np.testing.assert_allclose(read_image(path), linear_window(stored, 1000, 500), atol=1e-6)


def test_sigmoid_window(tmp_path: Path) -> None:
    stored = chest_phantom()
    path = write_dicom(
        tmp_path / "w.dcm", stored, WindowCenter=1500, WindowWidth=800, VOILUTFunction="SIGMOID"
    )
    expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - 1500.0) / 800.0))  # PS3.3 C.11.2.1.3.1
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def voi_lut_item(first_mapped: int, entries: int, depth: int) -> tuple[Dataset, np.ndarray]:
    lut = np.round((np.linspace(0, 1, entries) ** 0.5) * (2**depth - 1)).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [entries, first_mapped, depth])
    item.add_new("LUTData", "US", lut.tolist())  # ambiguous VR (US or OW): say which
    return item, lut


def test_voi_lut_sequence_is_preferred_and_mapped_over_its_output_bits(tmp_path: Path) -> None:
    stored = chest_phantom()
    item, lut = voi_lut_item(first_mapped=500, entries=2048, depth=12)
    path = write_dicom(
        tmp_path / "lut.dcm",
        stored,
        VOILUTSequence=Sequence([item]),
        WindowCenter=100,  # present too, but a VOI LUT Sequence wins
        WindowWidth=10,
    )
    expected = lut[np.clip(stored.astype(int) - 500, 0, 2047)] / 4095.0
    np.testing.assert_allclose(read_image(path), expected, atol=1e-7)


def test_modality_lut_sequence_without_voi(tmp_path: Path) -> None:
    stored = chest_phantom()
    item, lut = voi_lut_item(first_mapped=0, entries=4096, depth=16)
    path = write_dicom(tmp_path / "mlut.dcm", stored, ModalityLUTSequence=Sequence([item]))
    np.testing.assert_allclose(read_image(path), lut[stored] / 65535.0, atol=1e-7)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_lossless_compressed_dicom_reads_exactly_like_uncompressed(
    tmp_path: Path, syntax: str, photometric: str
) -> None:
    plain = write_dicom(
        tmp_path / "plain.dcm",
        chest_phantom(),
        photometric=photometric,
        WindowCenter=2000,
        WindowWidth=3000,
    )
    ds = pydicom.dcmread(plain)
    ds.compress(syntax)
    ds.save_as(tmp_path / "packed.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "packed.dcm").file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_image(tmp_path / "packed.dcm"), read_image(plain))


def test_missing_decoder_names_the_transfer_syntax(tmp_path: Path, monkeypatch) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "plain.dcm", chest_phantom()))
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)

    class NoPlugin:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg-openjpeg"]

    monkeypatch.setattr(images, "get_decoder", lambda syntax: NoPlugin())
    with pytest.raises(ImageReadError, match="JPEG 2000") as err:
        read_image(tmp_path / "j2k.dcm")
    assert str(tmp_path / "j2k.dcm") in str(err.value)


def test_dicom_is_found_by_content_not_extension(tmp_path: Path) -> None:
    stored = chest_phantom()
    named_png = write_dicom(tmp_path / "really_dicom.png", stored)
    np.testing.assert_allclose(read_image(named_png), stored / 4095.0, atol=1e-7)
    Image.fromarray(stored.astype(np.uint8)).save(tmp_path / "really.png", format="PNG")
    (tmp_path / "really.png").rename(tmp_path / "really_png.dcm")
    np.testing.assert_allclose(
        read_image(tmp_path / "really_png.dcm"), stored.astype(np.uint8) / 255.0, atol=1e-7
    )


def test_dicom_without_preamble(tmp_path: Path) -> None:
    stored = chest_phantom()
    ds = pydicom.dcmread(write_dicom(tmp_path / "full.dcm", stored))
    bare = Dataset()
    bare.update(ds)  # no file meta, no preamble: an old-style raw dataset
    pydicom.dcmwrite(tmp_path / "bare.dcm", bare, implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_image(tmp_path / "bare.dcm"), stored / 4095.0, atol=1e-7)


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


def assert_read_error(path: Path, reason: str) -> ImageReadError:
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert reason in err.value.reason, err.value.reason
    return err.value


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


def test_truncated_dicoms(tmp_path: Path) -> None:
    plain = write_dicom(tmp_path / "plain.dcm", chest_phantom())
    data = plain.read_bytes()
    (tmp_path / "cut_native.dcm").write_bytes(data[: len(data) - 1000])
    assert_read_error(tmp_path / "cut_native.dcm", "truncated: pixel data holds")
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    data = (tmp_path / "rle.dcm").read_bytes()
    (tmp_path / "cut_rle.dcm").write_bytes(data[: len(data) - 1000])
    with pytest.warns(UserWarning):  # pydicom's own note that the file ended early
        assert_read_error(tmp_path / "cut_rle.dcm", "truncated")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.PatientID = "P1"
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    assert_read_error(tmp_path / "report.dcm", "no Pixel Data")


def test_multi_frame_dicom(tmp_path: Path) -> None:
    frames = np.stack([chest_phantom(), chest_phantom()])
    path = write_dicom(tmp_path / "cine.dcm", frames, frames=2)
    assert_read_error(path, "multi-frame DICOM (2 frames)")


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


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "plain.dcm", chest_phantom()))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"  # private, unknown to every decoder
    ds.save_as(
        tmp_path / "odd.dcm", enforce_file_format=True, implicit_vr=False, little_endian=True
    )
    assert_read_error(tmp_path / "odd.dcm", "unknown transfer syntax 1.2.3.4.5")
