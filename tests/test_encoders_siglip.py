"""The ``hf-siglip`` family: MedSigLIP, SigLIP 2 (fixed resolution and NaFlex), CheXagent's tower.

Every checkpoint is a tiny random instance of the real transformers class, saved with
``save_pretrained`` in the two layouts users have (the full image-text model, as on the hub, and
the vision tower alone) beside a ``preprocessor_config.json`` like the published one, and loaded
back through the preset's own path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from helpers import (
    adapter_input,
    library_pixels,
    put_in_hub_cache,
    randomise,
    save_hf_checkpoint,
)
from transformers import AutoImageProcessor
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

from embedcache.encoders import build_encoder, resolve_preset
from embedcache.encoders.hub import WeightsUnavailableError
from embedcache.intake import read_image

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TEXT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99
)


def siglip_processor(side: int, resample: int) -> dict:
    """A ``SiglipImageProcessor`` config as published: square resize, mean/std 0.5."""
    return {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": side, "width": side},
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


NAFLEX_PROCESSOR = {
    "image_processor_type": "Siglip2ImageProcessor",
    "do_resize": True,
    "max_num_patches": 256,
    "patch_size": 16,
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

#: preset -> (tiny vision config, its preprocessor_config.json, patch size). MedSigLIP and SigLIP 2
#: are saved at their native size (no interpolation); XraySigLIP with a 384 px position table
#: (interpolated to 512); NaFlex with its 4x4 table (resized to 32x32).
CASES = {
    "medsiglip-448": (dict(TINY, patch_size=14, image_size=448), siglip_processor(448, 2), 14),
    "siglip2-so400m-512": (dict(TINY, patch_size=16, image_size=512), siglip_processor(512, 2), 16),
    "chexagent": (dict(TINY, patch_size=16, image_size=384), siglip_processor(384, 3), 16),
    "siglip2-so400m-naflex-512": (dict(TINY, patch_size=16, num_patches=16), NAFLEX_PROCESSOR, 16),
}
LAYOUTS = ("full", "vision")


def is_naflex(preset: str) -> bool:
    return "num_patches" in CASES[preset][0]


def save_tiny(folder: Path, preset: str, layout: str, seed: int = 0) -> Path:
    vision, processor, _ = CASES[preset]
    t = transformers
    prefix = "Siglip2" if is_naflex(preset) else "Siglip"
    if layout == "full":
        config = getattr(t, f"{prefix}Config")(text_config=TEXT, vision_config=vision)
        model = getattr(t, f"{prefix}Model")(config)
    else:
        model = getattr(t, f"{prefix}VisionModel")(getattr(t, f"{prefix}VisionConfig")(**vision))
    return save_hf_checkpoint(randomise(model, seed), folder, processor)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("siglip")
    return {
        (preset, layout): save_tiny(root / f"{preset}-{layout}", preset, layout, seed=i)
        for i, (preset, layout) in enumerate(
            (preset, layout) for preset in CASES for layout in LAYOUTS
        )
    }


def reference(folder: Path, preset: str, pixels01: torch.Tensor, mean, std):
    """The transformers model itself on input normalised by hand, outside any adapter: an image
    (SigLIP, positions interpolated) or the processor's flattened patches (NaFlex)."""
    x = pixels01.expand(-1, 3, -1, -1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        if not is_naflex(preset):
            model = transformers.SiglipVisionModel.from_pretrained(folder).eval()
            return model(pixel_values=x, interpolate_pos_encoding=True)
        model = transformers.Siglip2VisionModel.from_pretrained(folder).eval()
        patch = CASES[preset][2]
        patches = torch.stack([convert_image_to_patches(image, patch) for image in x])
        side = x.shape[-1] // patch
        return model(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.int32),
            spatial_shapes=torch.tensor([[side, side]] * len(x)),
        )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("preset", list(CASES))
def test_local_checkpoint_matches_the_model_itself(checkpoints, preset, layout):
    folder = checkpoints[preset, layout]
    patch = CASES[preset][2]
    enc = build_encoder(preset, weights=str(folder))
    pp = enc.preprocessing
    assert enc.weights_id["local"] == str(folder.resolve())
    assert enc.prefix_tokens == 0  # SigLIP has no CLS token: the grid is every token
    assert enc.grid_specs[16].stride == patch and enc.grid_specs[16].shape == (32, 32, 32)
    assert enc.grid_specs[32].stride == 2 * patch and enc.grid_specs[32].shape == (16, 16, 32)
    assert enc.global_dim == 32

    size = pp.input_size
    pixels = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = enc(pixels)
    out = reference(folder, preset, pixels, pp.mean, pp.std)
    tokens = out.last_hidden_state
    assert tokens.shape == (2, 32 * 32, 32)
    grid = tokens.reshape(2, 32, 32, 32)
    g16, g32 = feats.grids[16], feats.grids[32]
    assert g16.dtype == torch.float32 and g16.is_contiguous() and g32.is_contiguous()
    torch.testing.assert_close(g16, grid, rtol=0, atol=1e-5)
    pooled = F.avg_pool2d(grid.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(g32, pooled, rtol=0, atol=1e-5)
    assert feats.embedding.shape == (2, 32)
    torch.testing.assert_close(feats.embedding, out.pooler_output, rtol=0, atol=1e-5)


def test_position_table_of_another_size_is_interpolated_and_reported(checkpoints, caplog):
    with caplog.at_level(logging.WARNING, logger="embedcache.encoders.hf_loading"):
        enc = build_encoder("chexagent", weights=str(checkpoints["chexagent", "full"]))
    assert enc.model.config.image_size == 384
    assert "'image_size': (512, 384)" in caplog.text
    assert enc._forward_kwargs == {"interpolate_pos_encoding": True}


#: preset -> (source, input, interpolation, patch, hidden, MLP, layers, heads, model_type)
REFERENCE = {
    "medsiglip-448": (
        "google/medsiglip-448", 448, "bilinear", 14, 1152, 4304, 27, 16, "siglip_vision_model"
    ),
    "siglip2-so400m-512": (
        "google/siglip2-so400m-patch16-512", 512, "bilinear", 16, 1152, 4304, 27, 16,
        "siglip_vision_model",
    ),
    "siglip2-so400m-naflex-512": (
        "google/siglip2-so400m-patch16-naflex", 512, "bilinear", 16, 1152, 4304, 27, 16,
        "siglip2_vision_model",
    ),
    "chexagent": (
        "StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli", 512, "bicubic", 16, 1024, 4096,
        24, 16, "siglip_vision_model",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFERENCE))
def test_presets_are_the_reference_models(name):
    source, size, interpolation, patch, hidden, mlp, layers, heads, model_type = REFERENCE[name]
    preset = resolve_preset(name)
    arch, pp = preset.arch, preset.preprocessing
    assert preset.family == "hf-siglip" and preset.source == source
    assert (pp.input_size, pp.resize, pp.interpolation) == (size, "resize", interpolation)
    assert pp.mean == (0.5, 0.5, 0.5) and pp.std == (0.5, 0.5, 0.5)
    assert arch["model_type"] == model_type
    assert (arch["patch_size"], arch["hidden_size"], arch["intermediate_size"]) == (
        patch,
        hidden,
        mlp,
    )
    assert (arch["num_hidden_layers"], arch["num_attention_heads"]) == (layers, heads)
    assert arch["vision_use_head"] is True and arch["hidden_act"] == "gelu_pytorch_tanh"
    assert arch.get("image_size", size) == size  # the native position table: no interpolation
    assert size // patch == 32
    assert preset.options["global"] == "pooler"


IMAGES = {
    "nih-512": "nih/00000001_000.png",
    "siim-1024": "siim/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "chexmask-899x786": "chexmask/utils_example1.jpg",
}
FIXED = [p for p in CASES if not is_naflex(p)]


@pytest.mark.parametrize("image_name", list(IMAGES))
@pytest.mark.parametrize("preset", FIXED)
def test_preprocessing_equals_the_library_processor(checkpoints, shared_data, preset, image_name):
    """Ours (prepare + the adapter's normalisation) against transformers' own processor, built from
    the checkpoint's preprocessor_config.json, on a real chest X-ray in [0, 1]."""
    folder = checkpoints[preset, "full"]
    image = read_image(shared_data / IMAGES[image_name])
    enc = build_encoder(preset, weights=str(folder))
    processor = AutoImageProcessor.from_pretrained(folder, backend="torchvision")
    assert type(processor).__name__ == "SiglipImageProcessor"
    side = enc.preprocessing.input_size
    # CheXagent: the study resized to 512 (bicubic, as the checkpoint's processor) itself.
    size = {"height": side, "width": side}
    theirs = library_pixels(processor, image, size=size)["pixel_values"]
    ours = adapter_input(enc, image)
    assert ours.shape == theirs.shape == (1, 3, side, side)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("image_name", ["nih-512", "siim-1024"])
def test_naflex_patches_equal_the_library_processor(checkpoints, shared_data, image_name):
    """A square X-ray through ``Siglip2ImageProcessor(max_num_patches=1024)``: 512x512, 32x32
    patches, none padded: exactly the patches the preset feeds the model."""
    preset = "siglip2-so400m-naflex-512"
    folder = checkpoints[preset, "full"]
    image = read_image(shared_data / IMAGES[image_name])
    enc = build_encoder(preset, weights=str(folder))
    processor = AutoImageProcessor.from_pretrained(folder, backend="torchvision")
    theirs = library_pixels(processor, image, max_num_patches=1024)
    assert theirs["spatial_shapes"].tolist() == [[32, 32]]
    assert bool(theirs["pixel_attention_mask"].all())
    ours = convert_image_to_patches(adapter_input(enc, image)[0], 16)
    torch.testing.assert_close(ours[None], theirs["pixel_values"], rtol=0, atol=1e-5)


def test_pil_backend_differs_by_8_bit_quantisation(checkpoints, shared_data):
    """The PIL backend (what transformers 4 ran by default, and the study) resizes 8-bit images:
    within one grey level of ours, never equal."""
    folder = checkpoints["medsiglip-448", "full"]
    image = read_image(shared_data / IMAGES["chexmask-899x786"])
    enc = build_encoder("medsiglip-448", weights=str(folder))
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    theirs = torch.as_tensor(np.asarray(library_pixels(processor, image)["pixel_values"]))
    gap = ((adapter_input(enc, image) - theirs).abs().max() * 0.5).item()  # [0, 1] units
    assert 1e-4 < gap < 1.5 / 255


def test_processor_config_that_disagrees_is_reported(checkpoints, tmp_path, caplog):
    folder = shutil.copytree(checkpoints["medsiglip-448", "vision"], tmp_path / "bicubic")
    (folder / "preprocessor_config.json").write_text(json.dumps(siglip_processor(448, 3)))
    with caplog.at_level(logging.WARNING, logger="embedcache.encoders.hf_loading"):
        enc = build_encoder("medsiglip-448", weights=str(folder))
    assert "'interpolation': ('bilinear', 'bicubic')" in caplog.text
    assert enc.preprocessing.interpolation == "bilinear"  # the preset's, recorded in the key


def _gated_error(url: str):
    from huggingface_hub.errors import GatedRepoError

    # What the hub raises for an account that has not accepted the licence (HTTP 403); built
    # without an HTTP response object, whose class differs between huggingface_hub versions.
    error = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(error, f"403 Client Error. Cannot access gated repo for url {url}.")
    return error


def test_gated_model_says_how_to_get_access(monkeypatch):
    asked: list[str] = []

    def gated(repo_id, filename, **kwargs):
        asked.append(repo_id)
        raise _gated_error(f"https://huggingface.co/{repo_id}/resolve/main/{filename}")

    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", gated)
    monkeypatch.setattr(transformers.utils.hub, "snapshot_download", gated)
    with pytest.raises(WeightsUnavailableError) as err:
        build_encoder("medsiglip-448")
    message = str(err.value)
    assert asked and set(asked) == {"google/medsiglip-448"}
    assert "it is gated" in message
    for hint in (
        "https://huggingface.co/google/medsiglip-448",
        "hf auth login",
        "--weights DIR",
        "--weights none",
    ):
        assert hint in message


def test_not_cached_offline_says_the_same(monkeypatch):
    with pytest.raises(WeightsUnavailableError) as err:
        build_encoder("siglip2-so400m-512")
    for hint in ("--weights DIR", "hf auth login", "huggingface.co/google/siglip2-so400m-patch16"):
        assert hint in str(err.value)


def test_hub_id_loads_from_the_cache_with_its_commit(checkpoints, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = checkpoints["medsiglip-448", "full"]
    put_in_hub_cache(folder, "google/medsiglip-448", tmp_path / "hf-cache", commit)
    enc = build_encoder("medsiglip-448")  # the preset's own source, offline, from the cache
    assert enc.weights_id == {"hub": "google/medsiglip-448", "revision": commit}
    assert enc.grid_specs[16].shape == (32, 32, 32)


def test_wrong_checkpoint_is_refused(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="holds a 'siglip2' model"):
        build_encoder(
            "siglip2-so400m-512", weights=str(checkpoints["siglip2-so400m-naflex-512", "full"])
        )
    with pytest.raises(ValueError, match="holds a 'siglip_vision_model' model"):
        build_encoder(
            "siglip2-so400m-naflex-512", weights=str(checkpoints["siglip2-so400m-512", "vision"])
        )
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(checkpoints["chexagent", "vision"], tmp_path / "headless")
    tensors = load_file(folder / "model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if "head." not in k},  # no pooling head
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(ValueError, match="lacks .* parameters"):
        build_encoder("chexagent", weights=str(folder))


#: preset -> (grid16 stride, channels, vision tower parameters in millions: low, high)
FULL_SIZE = {
    "medsiglip-448": (14, 1152, (420, 440)),
    "siglip2-so400m-512": (16, 1152, (420, 440)),
    "siglip2-so400m-naflex-512": (16, 1152, (420, 440)),
    "chexagent": (16, 1024, (300, 330)),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(FULL_SIZE))
def test_full_size_random_weights(preset, monkeypatch):
    """The full architecture from ``arch``, offline; shapes through a forward pass on the meta
    device (every layer, no arithmetic: a CPU pass of a 400M-parameter tower at 512 px takes
    tens of seconds; benchmarks/encoder_speed.py runs the real one)."""
    stride, channels, (low, high) = FULL_SIZE[preset]
    enc = build_encoder(preset, weights="none")
    assert low * 1e6 < sum(p.numel() for p in enc.parameters()) < high * 1e6
    assert enc.global_dim == channels
    assert enc.grid_specs[16].stride == stride and enc.grid_specs[16].shape == (32, 32, channels)
    assert enc.grid_specs[32].stride == 2 * stride
    assert enc.grid_specs[32].shape == (16, 16, channels)
    # transformers' value checks (NaFlex: positive patch grid) cannot read meta tensors
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    size = enc.preprocessing.input_size
    with torch.inference_mode():
        feats = enc.to("meta")(torch.empty(1, 1, size, size, device="meta"))
    assert feats.embedding.shape == (1, channels)
    assert feats.grids[16].shape == (1, 32, 32, channels)
    assert feats.grids[32].shape == (1, 16, 16, channels)
