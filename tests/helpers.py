"""Plain functions and constants shared by the tests (fixtures live in conftest.py).

Imported as ``helpers``: pytest puts this folder on ``sys.path`` (its default ``prepend`` import
mode; the tests are not a package), from the repository root and from ``make test`` alike.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from embedcache.intake.images import ImageReadError, read_image

#: The real chest X-ray samples beside the project (``../shared/data``), or
#: ``$EMBEDCACHE_TEST_DATA``.
SHARED_DATA = Path(
    os.environ.get("EMBEDCACHE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

#: A tiny DINOv2 of the real architecture: 56 px input, 4x4 grid16, 2x2 grid32, 32 channels.
TINY_DINOV2 = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_ratio=2,
    patch_size=14,
    image_size=56,
)
#: Its ``preprocessor_config.json``: a BitImageProcessor at 56 px.
TINY_PROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 56},
    "do_center_crop": True,
    "crop_size": {"height": 56, "width": 56},
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.25, 0.25, 0.25],
    "resample": 3,
}


def shared_file(relative: str) -> Path:
    """A file of :data:`SHARED_DATA`, or skip the test when it is not there."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real sample {relative} not found under {SHARED_DATA} (outside this setup)")
    return path


def randomise(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Non-trivial values in every parameter (layer norms, layer scale and pooling heads
    included), drawn from ``seed`` inside a forked RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in model.parameters():
            p.data.normal_(0.0, std)
    return model


def save_hf_checkpoint(model: Any, folder: Path, processor: Mapping[str, Any]) -> Path:
    """``model.save_pretrained(folder)`` beside a ``preprocessor_config.json``: the hub layout."""
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def put_in_hub_cache(folder: Path, repo_id: str, cache: Path, commit: str) -> None:
    """Lay ``folder`` out in the Hugging Face cache ``cache`` as snapshot ``commit`` of hub
    repository ``repo_id``, with ``main`` pointing at it (what a download would leave)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


#: A SegFormer of MiT-B4's layout (four stages, overlapping patch embeddings 7/4 then 3/2) with
#: tiny widths.
TINY_SEGFORMER = dict(
    depths=[1, 1, 1, 1],
    hidden_sizes=[8, 16, 24, 32],
    num_attention_heads=[1, 1, 2, 2],
    sr_ratios=[8, 4, 2, 1],
    decoder_hidden_size=16,
)
#: nvidia/segformer-b4-finetuned-ade-512-512's preprocessor_config.json.
ADE_PROCESSOR = {
    "image_processor_type": "SegformerImageProcessor",
    "do_resize": True,
    "size": 512,
    "resample": 2,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def save_tiny_segformer(folder: Path, seed: int = 3) -> Path:
    """A tiny random SegformerForSemanticSegmentation (150 ADE classes) saved as a checkpoint
    folder, loadable through the segformer-b4 preset's ``--weights DIR`` path."""
    import transformers

    config = transformers.SegformerConfig(**TINY_SEGFORMER, num_labels=150)
    model = randomise(transformers.SegformerForSemanticSegmentation(config), seed)
    return save_hf_checkpoint(model, folder, ADE_PROCESSOR)


def save_tiny_dinov2(
    folder: Path,
    seed: int = 0,
    *,
    registers: int = 0,
    std: float = 0.2,
    processor: Mapping[str, Any] = TINY_PROCESSOR,
) -> Path:
    """A random :data:`TINY_DINOV2` (with ``registers`` register tokens) saved like a hub
    checkpoint."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    if registers:
        config = Dinov2WithRegistersConfig(**TINY_DINOV2, num_register_tokens=registers)
        model = Dinov2WithRegistersModel(config)
    else:
        model = Dinov2Model(Dinov2Config(**TINY_DINOV2))
    folder.mkdir(parents=True, exist_ok=True)
    return save_hf_checkpoint(randomise(model, seed, std), folder, processor)


def adapter_input(encoder, image: np.ndarray) -> torch.Tensor:
    """What the sealed ``Encoder.forward`` hands to ``encode`` for one grey image: ours
    ``Preprocessing.prepare``, then the adapter's own normalisation, ``(1, 3, S, S)``."""
    seen: list[torch.Tensor] = []
    encode = encoder.encode

    def spy(pixels: torch.Tensor):
        seen.append(pixels)
        return encode(pixels)

    encoder.encode = spy
    try:
        with torch.inference_mode():
            encoder(encoder.preprocessing.prepare(image)[None])
    finally:
        del encoder.encode
    return seen[0]


def library_pixels(processor, image: np.ndarray, **kwargs) -> dict:
    """The library processor's output for a grey ``[0, 1]`` image given as three float channels."""
    rgb = np.repeat(image[..., None], 3, axis=-1)
    return processor(images=rgb, do_rescale=False, return_tensors="pt", **kwargs)


# --- image readers (tests/test_images.py, tests/test_images_dicom.py) -------------------------

#: SOP Class UID of Computed Radiography Image Storage.
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


def assert_read_error(path: Path, reason: str) -> ImageReadError:
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert reason in err.value.reason, err.value.reason
    return err.value
