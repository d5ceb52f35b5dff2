"""Shared fixtures: a tiny real-architecture encoder checkpoint, a phantom cohort, the real
samples beside the project, and an offline Hugging Face hub.

Nothing is downloaded: the encoder is a randomly initialised DINOv2 of the real architecture,
saved like a hub checkpoint and loaded back through the same path a user's folder takes. Plain
helper functions (checkpoint writers, ...) are in helpers.py.

The suite runs on the CPU, also on a machine with a GPU: its tolerances and bit-identity checks
are the CPU's (a bf16 CUDA store is not a CPU fp32 store to 2e-3, CUDA atomics are not
bit-reproducible). CUDA devices are hidden from the session and its subprocesses before anything
initialises CUDA, so ``device="auto"`` resolves to the CPU everywhere. The GPU module,
test_gpu.py, runs in its own session with ``EMBEDCACHE_TEST_GPU=1`` (``make test`` runs both).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED_DATA, save_tiny_dinov2

#: Set to 1 to let a session see the GPU (``make test`` does so for tests/test_gpu.py only).
GPU_ENV = "EMBEDCACHE_TEST_GPU"


def pytest_configure(config) -> None:
    if os.environ.get(GPU_ENV) == "1":
        return
    import torch

    if torch.cuda.is_initialized():
        raise pytest.UsageError("CUDA was initialised before tests/conftest.py could hide it")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # read when CUDA initialises: in this process and
    # in every subprocess (torchrun ranks, killed children) the tests start


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
