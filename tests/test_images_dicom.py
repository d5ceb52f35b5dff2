"""Tests for embedcache.intake.dicom (through read_image): real DICOMs, synthetic DICOMs,
compressed transfer syntaxes, and bad DICOM inputs.

Expected values are computed independently of the reader (straight from the DICOM formulas or
pydicom's own decode), never copied from its output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import (
    assert_read_error,
    assert_unit_image,
    central_vs_lateral,
    chest_phantom,
    write_dicom,
)
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

from embedcache.intake import dicom
from embedcache.intake.images import ImageReadError, read_image

SIIM_DICOM = "siim/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
GDCM_MONO1 = "dicom/gdcm-CR-MONO1-10-chest.dcm"


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

    monkeypatch.setattr(dicom, "get_decoder", lambda syntax: NoPlugin())
    with pytest.raises(ImageReadError, match="JPEG 2000") as err:
        read_image(tmp_path / "j2k.dcm")
    assert str(tmp_path / "j2k.dcm") in str(err.value)


def test_dicom_without_preamble(tmp_path: Path) -> None:
    stored = chest_phantom()
    ds = pydicom.dcmread(write_dicom(tmp_path / "full.dcm", stored))
    bare = Dataset()
    bare.update(ds)  # no file meta, no preamble: an old-style raw dataset
    pydicom.dcmwrite(tmp_path / "bare.dcm", bare, implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_image(tmp_path / "bare.dcm"), stored / 4095.0, atol=1e-7)


# --- bad inputs ----------------------------------------------------------------------------


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


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "plain.dcm", chest_phantom()))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"  # private, unknown to every decoder
    ds.save_as(
        tmp_path / "odd.dcm", enforce_file_format=True, implicit_vr=False, little_endian=True
    )
    assert_read_error(tmp_path / "odd.dcm", "unknown transfer syntax 1.2.3.4.5")
