"""A corpus of bad inputs: each gets a clear error naming the file or manifest row, or a
recorded skip under ``--skip-bad``; no row already written is lost."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from embedcache.encoders import build_encoder
from embedcache.extract import extract
from embedcache.intake import ImageReadError, ManifestError, load_manifest
from embedcache.phantoms.writers import write_image
from embedcache.store import open_store
from embedcache.store.layout import FEATURE_ARRAYS

HEADER = {"patient_id": "BAD", "sex": "F", "age": "50", "view": "PA"}


def _image(side: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side] / side
    return (0.2 + 0.6 * x * y).astype(np.float32)


def _dicom(path: Path) -> Path:
    write_image(path, _image(), "dicom-mono2", "bad-corpus", HEADER)
    return path


def _png(path: Path) -> Path:
    write_image(path, _image(), "png", "bad-corpus", HEADER)
    return path


def truncated_dicom(d: Path) -> Path:
    path = _dicom(d / "truncated.dcm")
    path.write_bytes(path.read_bytes()[:-3000])
    return path


def dicom_without_pixels(d: Path) -> Path:
    path = _dicom(d / "nopixels.dcm")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def multiframe_dicom(d: Path) -> Path:
    path = _dicom(d / "multiframe.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path)
    return path


def empty_png(d: Path) -> Path:
    (path := d / "empty.png").write_bytes(b"")
    return path


def text_named_png(d: Path) -> Path:
    (path := d / "notes.png").write_text("this is a radiology report, not an image\n")
    return path


def truncated_png(d: Path) -> Path:
    path = _png(d / "truncated.png")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def one_pixel_png(d: Path) -> Path:
    Image.fromarray(np.array([[128]], np.uint8)).save(path := d / "tiny.png")
    return path


def folder_as_image(d: Path) -> Path:
    (path := d / "a_folder.png").mkdir()
    return path


def float_tiff_out_of_range(d: Path) -> Path:
    Image.fromarray((_image() * 4000).astype(np.float32)).save(path := d / "hounsfield.tif")
    return path


def nan_tiff(d: Path) -> Path:
    image = _image()
    image[3, 3] = np.nan
    Image.fromarray(image).save(path := d / "nan.tif")
    return path


def corrupt_jpeg(d: Path) -> Path:
    Image.fromarray((_image() * 255).astype(np.uint8)).save(path := d / "corrupt.jpg")
    data = bytearray(path.read_bytes())
    data[200:] = bytes(len(data) - 200)  # scan data zeroed: undecodable
    path.write_bytes(bytes(data[: len(data) // 2]))
    return path


def gif_image(d: Path) -> Path:
    Image.fromarray((_image() * 255).astype(np.uint8)).save(path := d / "scan.gif")
    return path


def missing_file(d: Path) -> Path:
    return d / "never_written.dcm"


#: Unreadable files: (maker, words the reason must contain).
BAD_FILES = {
    "truncated DICOM": (truncated_dicom, "truncat"),
    "DICOM without pixel data": (dicom_without_pixels, "pixel data"),
    "multi-frame DICOM": (multiframe_dicom, "frame"),
    "0-byte PNG": (empty_png, "empty"),
    "text file named .png": (text_named_png, "not a recognised image"),
    "truncated PNG": (truncated_png, "truncat"),
    "1x1 image": (one_pixel_png, "1x1"),
    "float TIFF out of [0, 1]": (float_tiff_out_of_range, "span [800"),
    "float TIFF with NaN": (nan_tiff, "nan"),
    "corrupt JPEG": (corrupt_jpeg, ""),
    "GIF (unsupported format)": (gif_image, "not a recognised image"),
    "missing file": (missing_file, "not found"),
    "folder named .png": (folder_as_image, "directory"),
}
#: Caught when the manifest is loaded, before any compute (without --skip-bad).
CHECKED_UP_FRONT = {"missing file", "folder named .png"}


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return build_encoder(f"hf:{tiny_encoder_dir}")


@pytest.fixture(scope="module")
def good_rows(phantom_manifest) -> pd.DataFrame:
    manifest = load_manifest(phantom_manifest)
    return manifest.table.head(6).copy()  # absolute paths


def _manifest(folder: Path, good: pd.DataFrame, bad: dict[str, Path], at: int) -> Path:
    """Good rows with the bad ones inserted at row ``at`` (0-based)."""
    bad_rows = pd.DataFrame(
        {
            "image_id": [f"bad-{i:02d}" for i in range(len(bad))],
            "path": [str(p) for p in bad.values()],
            "patient_id": "BAD",
        }
    )
    table = pd.concat([good.iloc[:at], bad_rows, good.iloc[at:]], ignore_index=True)
    table.to_csv(path := folder / "manifest.csv", index=False)
    return path


def _extract(manifest, encoder, store, **kw):
    return extract(
        manifest,
        encoder,
        store,
        rows_per_shard=2,
        batch_size=2,
        num_workers=0,
        progress=False,
        log=lambda *_: None,
        **kw,
    )


def test_corpus_is_large_enough():
    assert len(BAD_FILES) + len(MANIFEST_CASES) >= 15


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_file_stops_naming_file_row_and_id_and_keeps_written_rows(
    case, encoder, good_rows, tmp_path
):
    make, words = BAD_FILES[case]
    bad_path = make(tmp_path)
    manifest = _manifest(tmp_path, good_rows, {case: bad_path}, at=5)
    store = tmp_path / "s.zarr"
    if case in CHECKED_UP_FRONT:
        with pytest.raises(ManifestError, match=rf"row 6.*bad-00.*{bad_path.name}"):
            _extract(manifest, encoder, store)
        return
    with pytest.raises(ImageReadError) as info:
        _extract(manifest, encoder, store)
    message = str(info.value)
    assert bad_path.name in message and "row 6" in message and "bad-00" in message
    assert words.lower() in message.lower()
    with open_store(store) as s:  # the shards before the bad row are kept
        done = s.group(s.keys()[0]).done
    assert done[:4].all() and not done[5]


def test_skip_bad_records_every_case_and_extracts_the_rest(encoder, good_rows, tmp_path):
    bad = {case: make(tmp_path) for case, (make, _) in BAD_FILES.items()}
    manifest = _manifest(tmp_path, good_rows, bad, at=3)
    result = _extract(manifest, encoder, tmp_path / "s.zarr", skip_bad=True)
    assert (result.skipped, result.written) == (len(bad), len(good_rows))
    with open_store(tmp_path / "s.zarr") as s:
        group = s.group(result.key)
        reasons = group.skip_reasons()
        assert group.done.all()
        assert group.skipped.sum() == len(bad)
        kept_ids = group.ids[~group.skipped].tolist()
        features = {n: group.read_rows(n, np.flatnonzero(~group.skipped)) for n in FEATURE_ARRAYS}
    assert kept_ids == good_rows.image_id.tolist()
    for i, (case, (_, words)) in enumerate(BAD_FILES.items()):
        assert words.lower() in reasons[f"bad-{i:02d}"].lower(), (case, reasons[f"bad-{i:02d}"])
    # The good rows hold the same numbers as a run without any bad input.
    clean = tmp_path / "clean"
    clean.mkdir()
    good_only = _manifest(clean, good_rows, {}, at=0)
    ref = _extract(good_only, encoder, clean / "s.zarr")
    with open_store(clean / "s.zarr") as s:
        for name in FEATURE_ARRAYS:
            np.testing.assert_array_equal(features[name], s.group(ref.key).array(name)[:])


def test_fixing_the_bad_file_and_resuming_completes(encoder, good_rows, tmp_path):
    bad_path = truncated_png(tmp_path)
    manifest = _manifest(tmp_path, good_rows, {"x": bad_path}, at=2)
    with pytest.raises(ImageReadError):
        _extract(manifest, encoder, tmp_path / "s.zarr")
    shutil.copy(good_rows.path.iloc[0], bad_path)  # the user restores the file
    result = _extract(manifest, encoder, tmp_path / "s.zarr")
    assert result.already_done == 2 and result.written == len(good_rows) + 1 - 2


def test_rgba_png_is_read_as_grey_with_a_warning(encoder, good_rows, tmp_path):
    rgba = np.dstack([(_image() * 255).astype(np.uint8)] * 3 + [np.full((64, 64), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(path := tmp_path / "rgba.png")
    manifest = _manifest(tmp_path, good_rows, {"rgba": path}, at=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _extract(manifest, encoder, tmp_path / "s.zarr")
    assert result.written == len(good_rows) + 1 and result.skipped == 0
    assert any("rgba.png" in str(w.message) for w in caught)


def _write(folder: Path, text: str) -> Path:
    (path := folder / "manifest.csv").write_text(text)
    return path


MANIFEST_CASES = {
    "duplicate ids": (
        "image_id,path,patient_id\na,{img},p1\nb,{img},p2\na,{img},p3\n",
        r"duplicate.*'a'.*rows 1 and 3",
    ),
    "missing columns": ("image_id,file\na,{img}\n", r"missing.*path.*patient_id"),
    "empty patient id": (
        "image_id,path,patient_id\na,{img},p1\nb,{img},\n",
        r"row 2.*'b'.*patient_id",
    ),
    "empty manifest": ("image_id,path,patient_id\n", r"no data rows"),
    "empty image id": ("image_id,path,patient_id\n,{img},p1\n", r"row 1.*image_id"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_bad_manifest_names_row_and_column(case, good_rows, encoder, tmp_path):
    text, pattern = MANIFEST_CASES[case]
    manifest = _write(tmp_path, text.format(img=good_rows.path.iloc[0]))
    with pytest.raises(ManifestError, match=pattern) as info:
        _extract(manifest, encoder, tmp_path / "s.zarr")
    assert "manifest.csv" in str(info.value)
    assert not (tmp_path / "s.zarr").exists() or not open_store(tmp_path / "s.zarr").keys()
