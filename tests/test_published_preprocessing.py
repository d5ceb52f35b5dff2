"""Every checkpoint's own preprocessing is compared with the preset's.

For one model of each family, a tiny checkpoint is saved with the preprocessing file its library
writes (``preprocessor_config.json``, timm's ``config.json``, ``open_clip_config.json``,
MedImageInsight's ``config.yaml``) set to differ from the preset in size, crop, interpolation
and mean/std. Loading it must warn once, naming each field with both values, keep the preset's
values (they are part of the store key), and record the comparison in the store's provenance.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import timm
import torch
import transformers
import yaml
from helpers import randomise, save_hf_checkpoint, save_tiny_dinov2, save_tiny_segformer
from safetensors.torch import save_file

from embedcache.encoders import build_encoder, resolve_preset
from embedcache.encoders.davit import DaViT
from embedcache.encoders.openclip_vision import build_visual, vision_arch
from embedcache.extract import extract
from embedcache.store import open_store

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

LOGGER = "embedcache.encoders._published"
#: A processor that crops (shortest edge 256, centre 224), bilinear, mean 0.4 / std 0.3.
CROP_PROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "resample": 2,
    "do_normalize": True,
    "image_mean": [0.4, 0.4, 0.4],
    "image_std": [0.3, 0.3, 0.3],
}
#: The same, bicubic (the SigLIP and SegFormer presets resample bilinear).
CROP_BICUBIC = {**CROP_PROCESSOR, "resample": 3}
#: A processor that squashes to 192 x 192, bicubic, mean 0.4 / std 0.3.
SQUASH_PROCESSOR = {
    "image_processor_type": "SiglipImageProcessor",
    "size": {"height": 192, "width": 192},
    "resample": 3,
    "image_mean": [0.4, 0.4, 0.4],
    "image_std": [0.3, 0.3, 0.3],
}
TINY_SWIN = dict(
    img_size=768, window_size=12, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)
)
TIMM_CFG = {  # differs from timm's own convnext_atto / Ark+ settings in every pixel field
    "input_size": [3, 256, 256],
    "crop_pct": 0.8,
    "crop_mode": "center",
    "interpolation": "bilinear",
    "mean": [0.4, 0.4, 0.4],
    "std": [0.3, 0.3, 0.3],
}
TINY_BIOMEDCLIP = {
    "embed_dim": 32,
    "vision_cfg": {
        "timm_model_name": "vit_tiny_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    },
}
TINY_DAVIT_SPEC = {
    "DIM_EMBED": [16, 24, 32, 40],
    "DEPTHS": [1, 1, 1, 1],
    "NUM_HEADS": [2, 2, 2, 2],
    "NUM_GROUPS": [2, 2, 2, 2],
    "PATCH_SIZE": [7, 3, 3, 3],
    "PATCH_STRIDE": [4, 2, 2, 2],
    "PATCH_PADDING": [3, 1, 1, 1],
    "PATCH_PRENORM": [False, True, True, True],
    "WINDOW_SIZE": 12,
}


def tiny_siglip(folder: Path, processor: dict, patch: int = 14, image_size: int = 448) -> Path:
    config = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=patch,
        image_size=image_size,
    )
    model = randomise(transformers.SiglipVisionModel(config), 0)
    return save_hf_checkpoint(model, folder, processor)


def with_processor(folder: Path, processor: dict) -> Path:
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def timm_checkpoint(folder: Path, name: str, kwargs: dict, cfg: dict, file: str) -> Path:
    folder.mkdir(parents=True)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    save_file(model.state_dict(), folder / file)
    (folder / "config.json").write_text(json.dumps({"architecture": name, "pretrained_cfg": cfg}))
    return folder / file


def open_clip_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    visual = build_visual(vision_arch(TINY_BIOMEDCLIP))
    torch.save(
        {f"visual.{k}": v for k, v in visual.state_dict().items()},
        folder / "open_clip_pytorch_model.bin",
    )
    preprocess = {
        "size": 256,
        "resize_mode": "squash",
        "interpolation": "bilinear",
        "mean": [0.4, 0.4, 0.4],
        "std": [0.3, 0.3, 0.3],
    }
    config = {"model_cfg": TINY_BIOMEDCLIP, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def davit_release(root: Path) -> Path:
    folder = root / "2024.09.27"
    (folder / "vision_model").mkdir(parents=True)
    config = {
        "IMAGE_ENCODER": {
            "NAME": "davit_v1",
            "NUM_CLASSES": 0,
            "IMAGE_SIZE": [384, 384],
            "IMAGE_MEAN": [0.4, 0.4, 0.4],
            "IMAGE_STD": [0.3, 0.3, 0.3],
            "SPEC": TINY_DAVIT_SPEC,
        },
        "UNICL_MODEL": {"DIM_PROJECTION": 8},
        "AUG": {"INTERPOLATION": "bilinear"},
        "TEST": {"CENTER_CROP": True},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    spec = TINY_DAVIT_SPEC
    model = DaViT(
        embed_dims=spec["DIM_EMBED"],
        depths=spec["DEPTHS"],
        num_heads=spec["NUM_HEADS"],
        num_groups=spec["NUM_GROUPS"],
        patch_size=spec["PATCH_SIZE"],
        patch_stride=spec["PATCH_STRIDE"],
        patch_padding=spec["PATCH_PADDING"],
        patch_prenorm=spec["PATCH_PRENORM"],
        window_size=spec["WINDOW_SIZE"],
    )
    tensors = {"image_encoder." + k: v for k, v in model.state_dict().items()}
    tensors["image_projection"] = torch.randn(40, 8)
    save_file(tensors, folder / "vision_model" / "medimageinsigt-v1.0.0.pt")
    return root


#: family -> (spec, weights maker(tmp_path) -> location, fields that must be named).
CASES = {
    "hf-dinov2": (
        "rad-dino",
        lambda root: save_tiny_dinov2(root / "w", processor=CROP_PROCESSOR),
        {"input_size", "resize_to", "interpolation", "mean", "std"},
    ),
    "hf-siglip": (
        "medsiglip-448",
        lambda root: tiny_siglip(root / "w", CROP_BICUBIC),
        {"input_size", "resize", "interpolation", "mean", "std"},
    ),
    "hf-segformer": (
        "segformer-b4",
        lambda root: with_processor(save_tiny_segformer(root / "w"), CROP_BICUBIC),
        {"input_size", "resize", "interpolation", "mean", "std"},
    ),
    "timm": (
        "timm:convnext_atto",
        lambda root: timm_checkpoint(
            root / "w", "convnext_atto", {}, TIMM_CFG, "model.safetensors"
        ),
        {"input_size", "resize_to", "interpolation", "mean", "std"},
    ),
    "ark": (
        "ark-plus",
        lambda root: timm_checkpoint(
            root / "w", "swin_large_patch4_window12_384", TINY_SWIN, TIMM_CFG, "ark.safetensors"
        ),
        {"input_size", "resize", "interpolation", "mean", "std"},
    ),
    "open-clip": (
        "biomedclip",
        lambda root: open_clip_folder(root / "w"),
        {"input_size", "resize", "interpolation", "mean", "std"},
    ),
    "davit": (
        "medimageinsight",
        lambda root: davit_release(root / "w"),
        {"input_size", "resize", "interpolation", "mean", "std"},
    ),
}


@pytest.mark.parametrize("family", list(CASES))
def test_a_checkpoint_with_other_preprocessing_warns_naming_each_field(family, tmp_path, caplog):
    spec, make, named = CASES[family]
    preset = resolve_preset(spec)
    assert preset.family == family
    location = make(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        enc = build_encoder(spec, weights=str(location))
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1, caplog.text  # once, all fields in one message
    message = warnings[0].getMessage()
    check = enc.preprocessing_check
    assert set(check["differs"]) == named
    for name, (ours, theirs) in check["differs"].items():
        assert f"'{name}': ({ours!r}, {theirs!r})" in message
    assert check["source"] in message and Path(check["source"]).is_file()
    assert enc.preprocessing == preset.preprocessing  # the preset's values are used
    assert check["differs"]["mean"] == [list(preset.preprocessing.mean), [0.4, 0.4, 0.4]]
    assert enc.describe()["preprocessing_check"] == check  # into the store's provenance
    assert "preprocessing_check" not in enc.key_material()


def test_the_generic_hf_spec_compares_other_weights(tmp_path, caplog):
    spec_folder = save_tiny_dinov2(tmp_path / "a")
    weights = save_tiny_dinov2(tmp_path / "b", processor={**SQUASH_PROCESSOR, "resample": 2})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        enc = build_encoder(f"hf:{spec_folder}", weights=str(weights))
    assert set(enc.preprocessing_check["differs"]) == {
        "input_size",
        "resize",
        "interpolation",
        "mean",
        "std",
    }
    same = build_encoder(f"hf:{spec_folder}")  # the spec's own folder: nothing differs
    assert same.preprocessing_check["differs"] == {}


def test_a_matching_or_missing_config_is_recorded_without_a_warning(tmp_path, caplog):
    folder = save_tiny_dinov2(tmp_path / "same", processor=RAD_DINO_PROCESSOR)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        enc = build_encoder("rad-dino", weights=str(folder))
    assert not [r for r in caplog.records if r.name == LOGGER]
    assert enc.preprocessing_check["differs"] == {}
    assert enc.preprocessing_check["checkpoint"]["resize_to"] == 518
    (folder / "preprocessor_config.json").unlink()
    bare = build_encoder("rad-dino", weights=str(folder))
    assert bare.preprocessing_check == {
        "source": None,
        "note": "no preprocessing config with the weights",
    }
    assert build_encoder("rad-dino", weights="none").preprocessing_check is None


#: microsoft/rad-dino's preprocessor_config.json (BitImageProcessor), as the preset reads it.
RAD_DINO_PROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 518},
    "do_center_crop": True,
    "crop_size": {"height": 518, "width": 518},
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5307, 0.5307, 0.5307],
    "image_std": [0.2583, 0.2583, 0.2583],
}


def test_rescale_is_compared(tmp_path):
    processor = {**RAD_DINO_PROCESSOR, "rescale_factor": 1 / 65535}
    enc = build_encoder(
        "rad-dino", weights=str(save_tiny_dinov2(tmp_path / "w", processor=processor))
    )
    assert set(enc.preprocessing_check["differs"]) == {"rescale", "mean", "std"}


def test_chexagent_reads_mean_and_std_from_its_checkpoint(tmp_path, caplog):
    """The reference read CheXagent's normalisation from the checkpoint's processor at run
    time: here too, when the checkpoint has one; the other fields stay the preset's."""
    processor = {**SQUASH_PROCESSOR, "size": {"height": 512, "width": 512}, "resample": 2}
    folder = tiny_siglip(tmp_path / "w", processor, patch=16, image_size=512)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        enc = build_encoder("chexagent", weights=str(folder))
    preset = resolve_preset("chexagent")
    assert enc.preprocessing.mean == (0.4, 0.4, 0.4) and enc.preprocessing.std == (0.3, 0.3, 0.3)
    assert preset.preprocessing.mean == (0.5, 0.5, 0.5)  # the registry's preset is untouched
    assert enc.preprocessing.interpolation == "bicubic"  # the study's, not the checkpoint's
    check = enc.preprocessing_check
    assert check["adopted"] == ["mean", "std"] and set(check["differs"]) == {"interpolation"}
    message = caplog.records[-1].getMessage()
    assert "'interpolation': ('bicubic', 'bilinear')" in message and "'mean'" not in message
    assert enc.key_material()["preprocessing"]["mean"] == (0.4, 0.4, 0.4)  # in the key
    pixels = torch.full((1, 1, 512, 512), 0.4)
    seen = []
    encode = enc.encode
    enc.encode = lambda x: seen.append(x) or encode(x)
    with torch.inference_mode():
        enc(pixels)
    assert seen[0].abs().max() < 1e-6  # (0.4 - 0.4) / 0.3: normalised with the checkpoint's


def test_the_comparison_is_recorded_in_the_store(phantom_manifest, tmp_path):
    folder = save_tiny_dinov2(tmp_path / "w", processor=CROP_PROCESSOR)
    result = extract(
        phantom_manifest,
        "rad-dino",
        tmp_path / "s.zarr",
        weights=str(folder),
        num_workers=0,
        progress=False,
        log=lambda *_: None,
    )
    with open_store(tmp_path / "s.zarr") as store:
        check = store.group(result.key).attrs["encoder"]["preprocessing_check"]
    assert check["source"] == f"{folder}/preprocessor_config.json"
    assert check["differs"]["input_size"] == [518, 224]
    assert check["differs"]["interpolation"] == ["bicubic", "bilinear"]


def test_medsiglip_pad_preset_is_googles_serving_pipeline():
    """``medsiglip-448-pad`` equals Google's serving code: zero-pad to a square (the extra row or
    column at the bottom/right), then ``SiglipImageProcessor`` with its class defaults."""
    preset = resolve_preset("medsiglip-448-pad")
    pp = preset.preprocessing
    assert (pp.input_size, pp.resize, pp.interpolation) == (448, "pad", "bicubic")
    image = np.random.default_rng(0).random((301, 250)).astype(np.float32)
    dh = image.shape[0] - image.shape[1]
    padded = np.pad(image, ((0, 0), (dh // 2, dh - dh // 2)))  # predictor._zero_pad_image...
    processor = transformers.SiglipImageProcessor(
        do_rescale=False, size={"height": 448, "width": 448}
    )
    rgb = np.repeat(padded[..., None], 3, axis=-1)
    theirs = processor(images=rgb, return_tensors="pt")["pixel_values"][0]
    ours = (pp.prepare(image).expand(3, -1, -1) - 0.5) / 0.5
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert resolve_preset("medsiglip-448").preprocessing.resize == "resize"  # the reference's
