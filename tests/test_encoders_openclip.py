"""The ``open-clip`` family: preset ``biomedclip`` and the generic ``open_clip:`` spec.

open_clip can build a whole CLIP offline when its text tower is open_clip's own transformer, so
the checkpoints here are tiny ``CustomTextCLIP`` models with BiomedCLIP's vision structure (a timm
ViT trunk, CLS pooling, linear projection) and a tiny text tower whose ``text.*`` tensors the
loader must ignore, saved as open_clip writes them (``open_clip_pytorch_model.bin`` +
``open_clip_config.json``). The references are open_clip's own ``encode_image`` and the trunk's
``forward_features`` (the study's grid) on the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import shared_file
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from embedcache.encoders import GridSpec, Preprocessing, build_encoder, resolve_preset
from embedcache.encoders._weights import CheckpointError
from embedcache.encoders.hub import WeightsUnavailableError
from embedcache.intake.images import read_image

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

NIH_IMAGE = "nih/00000001_000.png"  # under ../shared/data (helpers.SHARED_DATA)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_TEXT = {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
#: BiomedCLIP's model config with a tiny timm ViT (vit_tiny: width 192, 12 blocks, patch 16).
TINY_BIOMEDCLIP = {
    "embed_dim": 32,
    "vision_cfg": {
        "timm_model_name": "vit_tiny_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    },
    "text_cfg": TINY_TEXT,
}
#: An open_clip-native ViT tower (VisionTransformer), registered as a model config name.
TINY_NATIVE_NAME = "embedcache-test-tiny-ViT"
TINY_NATIVE = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": TINY_TEXT,
}


def tiny_clip(model_cfg: dict, seed: int) -> torch.nn.Module:
    model = open_clip.CustomTextCLIP(
        embed_dim=model_cfg["embed_dim"],
        vision_cfg=model_cfg["vision_cfg"],
        text_cfg=model_cfg["text_cfg"],
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def save_open_clip(folder: Path, model, model_cfg: dict, preprocess_cfg: dict) -> Path:
    """The hub layout of an open_clip model: weights + open_clip_config.json."""
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def biomedclip_tiny(tmp_path_factory):
    model = tiny_clip(TINY_BIOMEDCLIP, seed=1)
    keys = model.state_dict().keys()
    assert "visual.head.proj.weight" in keys and any(k.startswith("text.") for k in keys)
    folder = save_open_clip(
        tmp_path_factory.mktemp("biomedclip") / "hub",
        model,
        TINY_BIOMEDCLIP,
        {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    )
    return model, folder


def normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    x = pixels.expand(-1, 3, -1, -1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("where", ["folder", "file"])
def test_biomedclip_loads_the_open_clip_checkpoint(biomedclip_tiny, where):
    model, folder = biomedclip_tiny
    location = folder if where == "folder" else folder / "open_clip_pytorch_model.bin"
    enc = build_encoder("biomedclip", weights=str(location))
    assert enc.grid_specs == {16: GridSpec(16, (14, 14, 192)), 32: GridSpec(32, (7, 7, 192))}
    assert enc.global_dim == 32
    assert enc.weights_id["local"] == str(folder / "open_clip_pytorch_model.bin")
    assert len(enc.weights_id["sha256"]) == 64

    saved = {
        k[len("visual.") :]: v for k, v in model.state_dict().items() if k.startswith("visual.")
    }
    loaded = enc.visual.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    pixels = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = enc(pixels)
        x = normalise(pixels, CLIP_MEAN, CLIP_STD)
        reference = model.encode_image(x)  # open_clip's own projected embedding, not normalised
        tokens = model.visual.trunk.forward_features(x)[:, 1:]  # the study's grid: CLS dropped
    grid = tokens.reshape(2, 14, 14, 192)
    torch.testing.assert_close(feats.embedding, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.grids[16], grid, rtol=0, atol=1e-6)
    pooled = F.avg_pool2d(grid.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(feats.grids[32], pooled, rtol=0, atol=1e-6)
    assert feats.grids[16].is_contiguous() and feats.grids[32].shape == (2, 7, 7, 192)


def test_biomedclip_bare_file_is_held_to_the_preset_architecture(biomedclip_tiny, tmp_path):
    """Without open_clip_config.json beside it, the file must be BiomedCLIP's ViT-B/16."""
    _, folder = biomedclip_tiny
    bare = shutil.copy(folder / "open_clip_pytorch_model.bin", tmp_path / "weights.bin")
    with pytest.raises(CheckpointError, match="does not fit .* differ in shape"):
        build_encoder("biomedclip", weights=str(bare))


def test_missing_or_foreign_tensors_are_refused(biomedclip_tiny, tmp_path):
    model, folder = biomedclip_tiny
    state = model.state_dict()
    del state["visual.trunk.blocks.3.attn.qkv.weight"]
    broken = save_open_clip(tmp_path / "broken", _Holder(state), TINY_BIOMEDCLIP, {})
    with pytest.raises(CheckpointError, match=r"lacks 1 of .*blocks\.3\.attn\.qkv"):
        build_encoder("biomedclip", weights=str(broken))
    text_only = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}
    torch.save(text_only, tmp_path / "text.bin")
    with pytest.raises(CheckpointError, match=r"no visual\.\* tensors"):
        build_encoder("biomedclip", weights=str(tmp_path / "text.bin"))


class _Holder:
    """Something with a state_dict (for writing an altered checkpoint with save_open_clip)."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def test_biomedclip_preset_is_the_reference_model():
    preset = resolve_preset("biomedclip")
    assert preset.source == "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert preset.preprocessing == Preprocessing(
        224, CLIP_MEAN, CLIP_STD, resize="crop", interpolation="bicubic", crop_rounding="round"
    )
    vision = preset.arch["vision_cfg"]
    assert preset.arch["embed_dim"] == 512
    assert (vision["timm_model_name"], vision["timm_pool"], vision["timm_proj"]) == (
        "vit_base_patch16_224",
        "",
        "linear",
    )
    with pytest.raises(WeightsUnavailableError, match="--weights FILE"):
        build_encoder("biomedclip")  # the hub id, offline, empty cache


def test_preprocessing_equals_open_clip_transform():
    """Preprocessing.prepare + normalisation equals open_clip's eval transform built from
    BiomedCLIP's preprocess config, on a real chest X-ray given as a float tensor (the transform
    passes tensors through its mode conversion and to-tensor steps)."""
    preset = resolve_preset("biomedclip")
    cfg = PreprocessCfg(size=224, mean=CLIP_MEAN, std=CLIP_STD)  # + defaults: bicubic, shortest
    transform = image_transform_v2(cfg, is_train=False)
    image = read_image(shared_file(NIH_IMAGE))
    pp = preset.preprocessing
    # Square; non-square with an even crop margin; and with margin 39 (263 - 224), where
    # torchvision's half-to-even rounding puts the window 1 px lower than a floor would.
    for crop in (image, image[:, :396], image[:, :435]):
        tensor = torch.from_numpy(np.ascontiguousarray(crop))[None].expand(3, -1, -1)
        mine = normalise(pp.prepare(crop)[None], pp.mean, pp.std)[0]
        torch.testing.assert_close(mine, transform(tensor), rtol=0, atol=1e-5)

    # The study's path: an 8-bit PIL image. PIL clips bicubic overshoot and rounds to 8 bits.
    pil = Image.fromarray(np.round(image * 255).astype(np.uint8)).convert("RGB")
    theirs = transform(pil)[0] * CLIP_STD[0] + CLIP_MEAN[0]
    mine = pp.prepare(np.asarray(pil)[..., 0].astype(np.float32) / 255)[0]
    assert (mine - theirs).abs().max() < 10 / 255
    assert (torch.round(mine.clamp(0, 1) * 255) / 255 - theirs).abs().max() <= 3 / 255 + 1e-6


@pytest.fixture(scope="module")
def native_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    (root / f"{TINY_NATIVE_NAME}.json").write_text(json.dumps(TINY_NATIVE))
    open_clip.add_model_config(root / f"{TINY_NATIVE_NAME}.json")
    model = tiny_clip(TINY_NATIVE, seed=2)
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
        root / "epoch_3.pt",
    )
    return model, root / "epoch_3.pt"


def test_open_clip_spec_with_a_config_name(native_tiny):
    model, checkpoint = native_tiny
    enc = build_encoder(f"open_clip:{TINY_NATIVE_NAME}@{checkpoint}")
    assert enc.preprocessing == Preprocessing(
        64, CLIP_MEAN, CLIP_STD, resize="crop", crop_rounding="round"
    )
    assert enc.grid_specs == {16: GridSpec(8, (8, 8, 32)), 32: GridSpec(16, (4, 4, 32))}
    assert enc.global_dim == 16 and enc.weights_id["entry"] == "state_dict"
    pixels = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        feats = enc(pixels)
        x = normalise(pixels, CLIP_MEAN, CLIP_STD)
        reference = model.encode_image(x)
        last = model.visual.forward_intermediates(x, indices=[1], normalize_intermediates=True)
    grid = last["image_intermediates"][0].permute(0, 2, 3, 1)
    torch.testing.assert_close(feats.embedding, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.grids[16], grid, rtol=0, atol=1e-6)


def test_open_clip_spec_with_a_folder(biomedclip_tiny, tmp_path):
    model, folder = biomedclip_tiny
    custom = shutil.copytree(folder, tmp_path / "squash")
    config = json.loads((custom / "open_clip_config.json").read_text())
    config["preprocess_cfg"] = {"mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "squash"}
    (custom / "open_clip_config.json").write_text(json.dumps(config))
    preset = resolve_preset(f"open_clip:{custom}")
    assert preset.preprocessing == Preprocessing(224, (0.5,) * 3, (0.25,) * 3, resize="resize")
    enc = build_encoder(f"open_clip:{custom}")
    assert enc.global_dim == 32 and enc.grid_specs[16].shape == (14, 14, 192)
    with pytest.raises(ValueError, match="unknown open_clip model config"):
        resolve_preset(f"open_clip:No-Such-ViT@{custom}")
    with pytest.raises(ValueError, match="<arch>@<checkpoint>"):
        resolve_preset(f"open_clip:{tmp_path}")


def test_weights_none_is_deterministic(native_tiny):
    torch.manual_seed(9)
    state = torch.get_rng_state()
    spec = f"open_clip:{TINY_NATIVE_NAME}@{native_tiny[1]}"
    a = build_encoder(spec, weights="none")
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG was consumed"
    b, c = build_encoder(spec, weights="none"), build_encoder(spec, weights="none", seed=3)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.weights_id["random_init"] == 0


@pytest.mark.slow
def test_biomedclip_full_size_random_weights():
    enc = build_encoder("biomedclip", weights="none")
    assert sum(p.numel() for p in enc.parameters()) > 85_000_000
    with torch.inference_mode():
        feats = enc(torch.rand(1, 1, 224, 224))
    assert feats.embedding.shape == (1, 512)
    assert feats.grids[16].shape == (1, 14, 14, 768)
    assert feats.grids[32].shape == (1, 7, 7, 768)
    assert enc.grid_specs == {16: GridSpec(16, (14, 14, 768)), 32: GridSpec(32, (7, 7, 768))}
