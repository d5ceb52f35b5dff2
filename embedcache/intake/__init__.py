"""Chest X-ray intake: manifests, image readers (DICOM/PNG/JPEG/TIFF) and mask codecs."""

from embedcache.intake.images import ImageReadError, read_image
from embedcache.intake.manifest import Manifest, ManifestError, load_manifest
from embedcache.intake.masks import (
    chexmask_rle_decode,
    read_mask,
    resize_mask,
    siim_rle_decode,
    siim_rle_encode,
)

__all__ = [
    "ImageReadError",
    "Manifest",
    "ManifestError",
    "chexmask_rle_decode",
    "load_manifest",
    "read_image",
    "read_mask",
    "resize_mask",
    "siim_rle_decode",
    "siim_rle_encode",
]
