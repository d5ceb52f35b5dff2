"""Shared fixtures: a tiny real-architecture encoder checkpoint, a phantom cohort, the real
samples beside the project, and an offline Hugging Face hub.

Nothing is downloaded: the encoder is a randomly initialised DINOv2 of the real architecture,
saved like a hub checkpoint and loaded back through the same path a user's folder takes. Plain
helper functions (checkpoint writers, ...) are in helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHARED_DATA, save_tiny_dinov2


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


@pytest.fixture(scope="module")
def shared_data() -> Path:
    """The real chest X-ray samples beside the project (../shared/data), or skip."""
    folder = SHARED_DATA.resolve()
    if not folder.is_dir():
        pytest.skip(f"real chest X-ray samples not found at {folder} (outside the shared setup)")
    return folder


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and an empty Hugging Face cache (``tmp_path / "hf-cache"``), whatever the
    machine has. Encoder test modules use it for every test (``pytestmark``)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
