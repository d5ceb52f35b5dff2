"""Write phantom images and masks the way real cohorts arrive: DICOM (both photometric
interpretations) and 8- or 16-bit PNG.

All writers are deterministic: the same pixels and identifiers give byte-identical files (UIDs
are hashed from the cohort seed and image id, and no timestamps are written).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

__all__ = ["DICOM_BITS_STORED", "IMAGE_FORMATS", "write_image", "write_mask_png"]

DICOM_BITS_STORED = 12  # typical of CR detectors; values 0..4095 in 16-bit words
DICOM_MAX = 2**DICOM_BITS_STORED - 1
FIELD_OF_VIEW_MM = 400.0  # detector side, for a plausible ImagerPixelSpacing

# format name -> file suffix
IMAGE_FORMATS = {"png": ".png", "png16": ".png", "dicom-mono2": ".dcm", "dicom-mono1": ".dcm"}


def _quantise(image: np.ndarray, max_value: int, dtype: type) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * max_value).astype(dtype)


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Save a bool ``(H, W)`` mask as an 8-bit greyscale PNG with values 0 and 255."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def _dicom_dataset(
    stored: np.ndarray, photometric: str, uid_seed: str, header: dict[str, str]
) -> Dataset:
    """A minimal but complete CR Image Storage dataset around 16-bit ``stored`` pixels."""
    rows, cols = stored.shape
    sop_uid = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.PatientName = f"Phantom^{header['patient_id']}"
    ds.PatientID = header["patient_id"]
    ds.PatientSex = header["sex"]
    ds.PatientAge = f"{int(header['age']):03d}Y"
    ds.ViewPosition = header["view"]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageComments = "synthetic phantom (embedcache.phantoms), not a patient image"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = DICOM_BITS_STORED
    ds.HighBit = DICOM_BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [f"{FIELD_OF_VIEW_MM / rows:.4f}", f"{FIELD_OF_VIEW_MM / cols:.4f}"]
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    ds.RescaleType = "US"
    # A full-range linear window: a reader that applies the VOI LUT gets the image unchanged.
    ds.WindowCenter = f"{(DICOM_MAX + 1) / 2:g}"
    ds.WindowWidth = f"{DICOM_MAX + 1:g}"
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def write_image(
    path: Path, image: np.ndarray, image_format: str, uid_seed: str, header: dict[str, str]
) -> None:
    """Write a float ``(H, W)`` image in [0, 1] (bright = dense) in one of ``IMAGE_FORMATS``.

    - ``png``: 8-bit greyscale, ``round(image * 255)``.
    - ``png16``: 16-bit greyscale, ``round(image * 65535)``.
    - ``dicom-mono2``: 12 bits stored, ``v = round(image * 4095)``, MONOCHROME2.
    - ``dicom-mono1``: the same ``v`` stored as ``4095 - v`` with MONOCHROME1, so that a reader
      that honours the photometric interpretation recovers the MONOCHROME2 image exactly.

    ``header`` holds ``patient_id``, ``sex``, ``age`` and ``view`` for the DICOM header;
    ``uid_seed`` makes the DICOM UIDs unique per image yet reproducible.
    """
    if image_format == "png":
        Image.fromarray(_quantise(image, 255, np.uint8)).save(path)
    elif image_format == "png16":
        Image.fromarray(_quantise(image, 65535, np.uint16)).save(path)
    elif image_format in ("dicom-mono2", "dicom-mono1"):
        stored = _quantise(image, DICOM_MAX, np.uint16)
        photometric = "MONOCHROME2"
        if image_format == "dicom-mono1":
            # MONOCHROME1 displays low values as white: store the inverse of the MONOCHROME2
            # values so the same anatomy comes back after a correct reader inverts it.
            stored = (DICOM_MAX - stored).astype(np.uint16)
            photometric = "MONOCHROME1"
        _dicom_dataset(stored, photometric, uid_seed, header).save_as(
            path, enforce_file_format=True
        )
    else:
        raise ValueError(f"unknown image format {image_format!r}; known: {sorted(IMAGE_FORMATS)}")
