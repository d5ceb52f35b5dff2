"""Synthetic cohorts: determinism, labels that agree with masks, planted rates, readable files,
and a pneumothorax signal that is really in the pixels."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from helpers import SHARED_DATA
from PIL import Image
from scipy import ndimage

from embedcache.intake.masks import chexmask_rle_decode, read_mask, siim_rle_decode
from embedcache.phantoms import (
    MANIFEST_COLUMNS,
    CohortSpec,
    cardiothoracic_ratio,
    draw_anatomy,
    make_cohort,
    plan_cohort,
    render_phantom,
)

ALL_FORMATS = ("png", "png16", "dicom-mono2", "dicom-mono1")
SMALL = CohortSpec(n_patients=12, images_per_patient=(1, 3), size=128, formats=ALL_FORMATS, seed=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("cohort")
    manifest = make_cohort(root, SMALL)
    frame = pd.read_csv(manifest, dtype={"ptx_rle": str}, keep_default_na=False)
    return root, frame


def read_pixels(path: Path) -> np.ndarray:
    if path.suffix == ".dcm":
        return pydicom.dcmread(path).pixel_array
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------- planning (no rendering)


def test_plan_hits_prevalences_and_tube_rates_exactly():
    spec = CohortSpec(n_patients=50, images_per_patient=(1, 4), seed=11)
    plan = plan_cohort(spec)
    patients = {p.patient_id: p for p in plan}
    assert len(patients) == 50
    assert sum(p.pneumothorax for p in patients.values()) == 25
    counts = pd.Series([p.patient_id for p in plan]).value_counts()
    assert counts.min() >= 1 and counts.max() <= 4 and (counts > 1).any()
    positives = [p for p in plan if p.pneumothorax]
    negatives = [p for p in plan if not p.pneumothorax]
    assert sum(p.chest_tube for p in positives) == round(0.75 * len(positives))
    assert sum(p.chest_tube for p in negatives) == round(0.11 * len(negatives))
    # Images of one patient share anatomy and patient-level findings.
    for patient_id in counts[counts > 1].index:
        mine = [p for p in plan if p.patient_id == patient_id]
        assert len({p.anatomy for p in mine}) == 1
        assert len({(p.pneumothorax, p.pneumothorax_side, p.sex, p.age) for p in mine}) == 1


def test_plan_cycles_formats_and_rejects_bad_specs():
    plan = plan_cohort(CohortSpec(n_patients=5, images_per_patient=(2, 2), formats=ALL_FORMATS))
    assert [p.image_format for p in plan[:5]] == [*ALL_FORMATS, ALL_FORMATS[0]]
    with pytest.raises(ValueError, match="formats"):
        CohortSpec(formats=("jpeg",))
    with pytest.raises(ValueError, match="tube_rate_positive"):
        CohortSpec(tube_rate_positive=1.5)
    with pytest.raises(ValueError):
        CohortSpec(images_per_patient=(3, 1))


# ---------------------------------------------------------------- one rendered image


def test_render_phantom_shapes_and_anatomy():
    rng = np.random.default_rng(0)
    image, masks = render_phantom(rng, 192, ctr=0.45, pneumothorax_area=0.0, tube=False)
    assert image.dtype == np.float32 and image.shape == (192, 192)
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(masks) == {"heart", "lungs", "pneumothorax"}
    assert all(m.dtype == bool and m.shape == (192, 192) for m in masks.values())
    assert not masks["pneumothorax"].any()
    # Bright = dense: aerated lungs are darker than the heart.
    assert image[masks["lungs"]].mean() + 0.15 < image[masks["heart"]].mean()
    heart_y, heart_x = ndimage.center_of_mass(masks["heart"])
    lungs_y, _ = ndimage.center_of_mass(masks["lungs"])
    assert heart_x > 96 and heart_y > lungs_y  # patient's left (image right), low in the chest
    assert ndimage.label(masks["lungs"])[1] == 2 and ndimage.label(masks["heart"])[1] == 1


@pytest.mark.parametrize("target", [0.38, 0.47, 0.53, 0.66])
def test_render_phantom_realises_the_requested_ctr(target):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        _, masks = render_phantom(rng, 256, ctr=target, pneumothorax_area=0.0, tube=False)
        assert cardiothoracic_ratio(masks["heart"], masks["lungs"]) == pytest.approx(
            target, abs=0.01
        )


@pytest.mark.parametrize("side", ["right", "left"])
def test_pneumothorax_is_darker_and_smoother_than_the_contralateral_lung(side):
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        anatomy = draw_anatomy(rng)
        image, masks = render_phantom(
            rng, 256, ctr=0.45, pneumothorax_area=0.03, tube=False, anatomy=anatomy,
            pneumothorax_side=side,
        )  # fmt: skip
        ptx, lungs = masks["pneumothorax"], masks["lungs"]
        assert 0.02 < ptx.mean() < 0.04
        # The patient's right lung is on the image's left.
        ptx_x = ndimage.center_of_mass(ptx)[1]
        assert (ptx_x < 128) == (side == "right")
        # Mirror the pneumothorax across the thorax midline into the normal lung.
        cols = np.flatnonzero(lungs.any(axis=0))
        mirror_cols = np.clip(cols[0] + cols[-1] - np.arange(256), 0, 255)
        mirror = ptx[:, mirror_cols] & lungs & ~ptx
        assert mirror.sum() > 0.5 * ptx.sum()
        assert image[ptx].mean() < image[mirror].mean() - 0.03
        # Fine-scale texture (lung markings) away from the region borders, whose edges would
        # otherwise dominate a thin crescent's variance.
        texture = (image - ndimage.gaussian_filter(image, 1.0)) ** 2
        inner_ptx = ndimage.binary_erosion(ptx, iterations=2)
        inner_mirror = ndimage.binary_erosion(mirror, iterations=2)
        assert texture[inner_ptx].mean() < 0.85 * texture[inner_mirror].mean()


def test_pneumothorax_area_tracks_the_target():
    for target in (0.002, 0.01, 0.05):
        rng = np.random.default_rng(7)
        _, masks = render_phantom(rng, 256, ctr=0.5, pneumothorax_area=target, tube=False)
        assert masks["pneumothorax"].mean() == pytest.approx(target, rel=0.02)
        assert masks["pneumothorax"].sum() <= masks["lungs"].sum()


def test_cardiothoracic_ratio_on_real_chexmask_masks():
    path = SHARED_DATA / "chexmask" / "ChestX-Ray8-sample.csv"
    if not path.exists():
        pytest.skip(f"real sample not found under {SHARED_DATA}")
    frame = pd.read_csv(path)
    for _, row in frame.iterrows():
        h, w = int(row["Height"]), int(row["Width"])
        lungs = chexmask_rle_decode(row["Left Lung"], h, w) | chexmask_rle_decode(
            row["Right Lung"], h, w
        )
        ratio = cardiothoracic_ratio(chexmask_rle_decode(row["Heart"], h, w), lungs)
        assert 0.3 < ratio < 0.75
    assert np.isnan(cardiothoracic_ratio(np.zeros((4, 4), bool), np.ones((4, 4), bool)))


# ---------------------------------------------------------------- a written cohort


def test_manifest_columns_and_relative_paths(cohort):
    root, frame = cohort
    assert tuple(frame.columns) == MANIFEST_COLUMNS
    assert frame["image_id"].is_unique and len(frame) >= SMALL.n_patients
    for column in ("path", "heart_mask", "ptx_mask", "lungs_mask"):
        for relative in frame[column]:
            assert not Path(relative).is_absolute() and (root / relative).is_file()
    assert set(frame["format"]) == set(ALL_FORMATS)
    assert set(frame["sex"]) <= {"F", "M"} and set(frame["view"]) <= {"PA", "AP"}
    assert frame["age"].between(18, 95).all()


def test_labels_agree_with_masks(cohort):
    root, frame = cohort
    size = SMALL.size
    for row in frame.itertuples():
        ptx = read_mask(root / row.ptx_mask)
        heart = read_mask(root / row.heart_mask)
        lungs = read_mask(root / row.lungs_mask)
        assert ptx.shape == heart.shape == (size, size)
        assert row.pneumothorax == int(ptx.any())
        assert row.ptx_area_pct == pytest.approx(100 * ptx.mean(), abs=1e-4)
        np.testing.assert_array_equal(siim_rle_decode(row.ptx_rle, size, size), ptx)
        assert (row.ptx_rle == "-1") == (row.pneumothorax == 0)
        assert row.cardiomegaly == int(row.ctr > 0.5)
        assert cardiothoracic_ratio(heart, lungs) == pytest.approx(row.ctr, abs=1e-4)
        assert not (ptx & ~lungs).any()


def test_images_are_readable_and_carry_their_patient(cohort):
    root, frame = cohort
    for row in frame.itertuples():
        path = root / row.path
        pixels = read_pixels(path)
        assert pixels.shape == (SMALL.size, SMALL.size)
        if row.format == "png":
            assert pixels.dtype == np.uint8
        elif row.format == "png16":
            assert pixels.dtype == np.uint16 and pixels.max() > 4096
        else:
            ds = pydicom.dcmread(path)
            expected = "MONOCHROME1" if row.format == "dicom-mono1" else "MONOCHROME2"
            assert ds.PhotometricInterpretation == expected
            assert ds.PatientID == row.patient_id and ds.PatientSex == row.sex
            assert ds.ViewPosition == row.view
            assert ds.BitsStored == 12 and ds.BitsAllocated == 16 and pixels.max() <= 4095
            assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, 0)
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == pydicom.uid.ComputedRadiographyImageStorage
    per_patient = frame.groupby("patient_id")["image_id"].count()
    assert (per_patient > 1).any()
    assert (frame.groupby("patient_id")["sex"].nunique() == 1).all()


def test_formats_store_the_same_image(tmp_path):
    """MONOCHROME1 stores the inverse of MONOCHROME2; PNGs hold the same picture."""
    pixels = {}
    for image_format in ALL_FORMATS:
        spec = CohortSpec(n_patients=3, images_per_patient=(1, 2), size=96, formats=(image_format,))
        manifest = make_cohort(tmp_path / image_format, spec)
        frame = pd.read_csv(manifest)
        pixels[image_format] = [read_pixels(tmp_path / image_format / p) for p in frame["path"]]
    for mono2, mono1 in zip(pixels["dicom-mono2"], pixels["dicom-mono1"], strict=True):
        np.testing.assert_array_equal(mono1.astype(int), 4095 - mono2.astype(int))
    for mono2, png, png16 in zip(
        pixels["dicom-mono2"], pixels["png"], pixels["png16"], strict=True
    ):
        assert np.abs(mono2 / 4095 - png / 255).max() <= 0.5 / 255 + 0.5 / 4095 + 1e-9
        assert np.abs(mono2 / 4095 - png16 / 65535).max() <= 0.5 / 4095 + 0.5 / 65535 + 1e-9


def test_same_seed_gives_byte_identical_cohorts(tmp_path):
    spec = CohortSpec(n_patients=4, size=64, formats=ALL_FORMATS, seed=5)
    first, second, other = (tmp_path / name for name in ("a", "b", "c"))
    make_cohort(first, spec)
    make_cohort(second, spec)
    make_cohort(other, CohortSpec(n_patients=4, size=64, formats=ALL_FORMATS, seed=6))
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) > 10
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    assert (first / "manifest.csv").read_bytes() != (other / "manifest.csv").read_bytes()


@pytest.mark.slow
def test_200_image_cohort_is_fast_with_meaningful_size_quartiles(tmp_path):
    spec = CohortSpec(n_patients=200, images_per_patient=(1, 1), size=256, seed=1)
    start = time.perf_counter()
    manifest = make_cohort(tmp_path, spec)
    elapsed = time.perf_counter() - start
    print(f"200 phantoms at 256 px in {elapsed:.1f} s")
    assert elapsed < 60
    frame = pd.read_csv(manifest)
    assert len(frame) == 200
    positives = frame[frame["pneumothorax"] == 1]
    assert len(positives) == 100
    assert positives["chest_tube"].sum() == 75
    assert frame.loc[frame["pneumothorax"] == 0, "chest_tube"].sum() == 11
    assert frame["cardiomegaly"].sum() == 100
    # Tiny to large pneumothoraces: quartiles of mask area are well separated.
    q1, q2, q3 = positives["ptx_area_pct"].quantile([0.25, 0.5, 0.75])
    assert positives["ptx_area_pct"].min() < 0.3 and positives["ptx_area_pct"].max() > 4
    assert q1 < 0.7 * q2 and q2 < 0.7 * q3
