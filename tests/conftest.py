"""Shared fixtures: a tiny real-architecture encoder checkpoint and a phantom cohort.

Nothing is downloaded: the encoder is a randomly initialised DINOv2 of the real architecture,
saved like a hub checkpoint and loaded back through the same path a user's folder takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY_DINOV2 = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    patch_size=14,
    image_size=56,
)
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


def save_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """A tiny random DINOv2 (56 px input, 4x4 grid16, 2x2 grid32, 32 channels) on disk."""
    from transformers import Dinov2Config, Dinov2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dinov2Model(Dinov2Config(**TINY_DINOV2))
        for p in model.parameters():  # non-trivial values everywhere
            p.data.normal_(0.0, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(TINY_PROCESSOR))
    return folder


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture(scope="session")
def tiny_encoder_spec(tiny_encoder_dir) -> str:
    """An ``hf:<dir>`` spec for the tiny checkpoint."""
    return f"hf:{tiny_encoder_dir}"


@pytest.fixture(scope="session")
def phantom_manifest(tmp_path_factory) -> Path:
    """A small phantom cohort (PNG and both DICOM photometric interpretations)."""
    from embedcache.phantoms import CohortSpec, make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), CohortSpec(n_patients=10, size=96))
