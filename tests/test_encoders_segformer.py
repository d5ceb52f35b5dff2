"""The ``hf-segformer`` family: the MiT-B4 encoder of SegFormer, its native stride-16/32 stages.

Checkpoints are tiny random instances of the real transformers classes (the full semantic
segmentation model as on the hub, and the encoder alone) saved with ``save_pretrained`` beside a
``preprocessor_config.json`` like the published one, loaded back through the preset's path.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers
from helpers import (
    ADE_PROCESSOR,
    TINY_SEGFORMER,
    adapter_input,
    library_pixels,
    randomise,
    save_hf_checkpoint,
)
from transformers import AutoImageProcessor

from embedcache.encoders import build_encoder, resolve_preset
from embedcache.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from embedcache.encoders.hub import WeightsUnavailableError
from embedcache.intake import read_image

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

LAYOUTS = {
    "semantic-segmentation": lambda c: transformers.SegformerForSemanticSegmentation(c),
    "encoder": lambda c: transformers.SegformerModel(c),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("segformer")
    folders = {}
    for seed, (layout, make) in enumerate(LAYOUTS.items()):
        folder = root / layout
        model = make(transformers.SegformerConfig(**TINY_SEGFORMER, num_labels=150))
        folders[layout] = save_hf_checkpoint(randomise(model, seed), folder, ADE_PROCESSOR)
    return folders


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_local_checkpoint_matches_the_model_itself(checkpoints, layout):
    folder = checkpoints[layout]
    enc = build_encoder("segformer-b4", weights=str(folder))
    assert enc.weights_id["local"] == str(folder.resolve())
    assert enc.grid_specs[16].stride == 16 and enc.grid_specs[16].shape == (32, 32, 24)
    assert enc.grid_specs[32].stride == 32 and enc.grid_specs[32].shape == (16, 16, 32)
    assert enc.global_dim == 32

    pp = enc.preprocessing
    pixels = torch.rand(2, 1, 512, 512, generator=torch.Generator().manual_seed(0))
    x = (pixels.expand(-1, 3, -1, -1) - torch.tensor(pp.mean).view(1, 3, 1, 1)) / torch.tensor(
        pp.std
    ).view(1, 3, 1, 1)
    with torch.inference_mode():
        feats = enc(pixels)
        model = transformers.SegformerModel.from_pretrained(folder).eval()
        stages = model(pixel_values=x, output_hidden_states=True).hidden_states
        # The study's classification variant: the mean of the last stage, then its linear head.
        classifier = transformers.SegformerForImageClassification.from_pretrained(folder).eval()
        classifier.classifier = torch.nn.Identity()
        pooled = classifier(pixel_values=x).logits

    assert [tuple(s.shape[1:]) for s in stages] == [
        (8, 128, 128),
        (16, 64, 64),
        (24, 32, 32),
        (32, 16, 16),
    ]
    g16, g32 = feats.grids[16], feats.grids[32]
    assert g16.dtype == torch.float32 and g16.is_contiguous() and g32.is_contiguous()
    torch.testing.assert_close(g16, stages[2].permute(0, 2, 3, 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(g32, stages[3].permute(0, 2, 3, 1), rtol=0, atol=1e-5)
    assert feats.embedding.shape == (2, 32)
    torch.testing.assert_close(feats.embedding, pooled, rtol=0, atol=1e-5)


def test_preset_is_the_reference_model():
    preset = resolve_preset("segformer-b4")
    arch, pp = preset.arch, preset.preprocessing
    assert preset.family == "hf-segformer"
    assert preset.source == "nvidia/segformer-b4-finetuned-ade-512-512"
    assert (pp.input_size, pp.resize, pp.interpolation) == (512, "resize", "bilinear")
    assert (pp.mean, pp.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert arch["hidden_sizes"] == [64, 128, 320, 512]
    assert arch["depths"] == [3, 8, 27, 3]
    assert arch["num_attention_heads"] == [1, 2, 5, 8]
    assert arch["sr_ratios"] == [8, 4, 2, 1]
    assert (arch["patch_sizes"], arch["strides"]) == ([7, 3, 3, 3], [4, 2, 2, 2])


@pytest.mark.parametrize(
    "image_name",
    [
        "nih/00000001_000.png",
        "siim/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
        "chexmask/utils_example1.jpg",
    ],
)
def test_preprocessing_equals_the_library_processor(checkpoints, shared_data, image_name):
    folder = checkpoints["semantic-segmentation"]
    image = read_image(shared_data / image_name)
    enc = build_encoder("segformer-b4", weights=str(folder))
    processor = AutoImageProcessor.from_pretrained(folder, backend="torchvision")
    assert type(processor).__name__ == "SegformerImageProcessor"
    theirs = library_pixels(processor, image)["pixel_values"]
    ours = adapter_input(enc, image)
    assert ours.shape == theirs.shape == (1, 3, 512, 512)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_wrong_checkpoint_and_missing_weights_are_refused(tmp_path):
    vit = tmp_path / "vit"
    transformers.ViTModel(
        transformers.ViTConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
        )
    ).save_pretrained(vit)
    with pytest.raises(ValueError, match="holds a 'vit' model"):
        build_encoder("segformer-b4", weights=str(vit))
    with pytest.raises(WeightsUnavailableError) as err:
        build_encoder("segformer-b4")  # offline, empty cache
    for hint in ("--weights DIR", "hf auth login", "--weights none"):
        assert hint in str(err.value)


@pytest.mark.slow
def test_full_size_random_weights():
    """MiT-B4 from ``arch`` offline: the table's stage shapes, through a real forward pass."""
    enc = build_encoder("segformer-b4", weights="none")
    assert 59e6 < sum(p.numel() for p in enc.parameters()) < 63e6
    assert enc.grid_specs[16].shape == (32, 32, 320) and enc.grid_specs[16].stride == 16
    assert enc.grid_specs[32].shape == (16, 16, 512) and enc.grid_specs[32].stride == 32
    assert enc.global_dim == 512
    with torch.inference_mode():
        feats = enc(torch.rand(1, 1, 512, 512))
    assert feats.embedding.shape == (1, 512)
    assert feats.grids[16].shape == (1, 32, 32, 320)
    assert feats.grids[32].shape == (1, 16, 16, 512)
    assert bool(torch.isfinite(feats.grids[16]).all())
