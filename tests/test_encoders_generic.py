"""The generic ``hf:<hub-id-or-folder>`` spec over the ViT-like transformers families.

Each case is a tiny random instance of the real class saved with ``save_pretrained`` (image-text
models saved whole, as on the hub) plus a ``preprocessor_config.json``, loaded through ``hf:DIR``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
import transformers
from helpers import put_in_hub_cache, randomise, save_hf_checkpoint

from embedcache.encoders import Preprocessing, build_encoder, resolve_preset
from embedcache.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from embedcache.encoders.hf_generic import preprocessing_from_processor
from embedcache.encoders.hub import WeightsUnavailableError

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

BLOCK = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
TEXT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99
)
VIT16 = dict(BLOCK, intermediate_size=64, patch_size=16, image_size=64)
BIT = {  # the DINOv2 processor's shape, scaled down: shortest edge 80, crop 70
    "size": {"shortest_edge": 80},
    "do_center_crop": True,
    "crop_size": {"height": 70, "width": 70},
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
    "resample": 3,
}
SQUARE = {
    "size": {"height": 64, "width": 64},
    "image_mean": [0.5] * 3,
    "image_std": [0.5] * 3,
    "resample": 2,
}
CLIP_LIKE = {
    "size": {"shortest_edge": 64},
    "do_center_crop": True,
    "crop_size": {"height": 64, "width": 64},
    "image_mean": [0.4815, 0.4578, 0.4082],
    "image_std": [0.2686, 0.2613, 0.2758],
    "resample": 3,
}


def _model(name: str) -> torch.nn.Module:
    t = transformers
    makers = {
        "dinov2": lambda: t.Dinov2Model(
            t.Dinov2Config(**BLOCK, mlp_ratio=2, patch_size=14, image_size=56)
        ),
        "dinov2_registers": lambda: t.Dinov2WithRegistersModel(
            t.Dinov2WithRegistersConfig(
                **BLOCK, mlp_ratio=2, patch_size=14, image_size=56, num_register_tokens=4
            )
        ),
        "dinov3": lambda: t.DINOv3ViTModel(
            t.DINOv3ViTConfig(
                **BLOCK, intermediate_size=64, patch_size=16, image_size=64, num_register_tokens=2
            )
        ),
        "vit": lambda: t.ViTModel(t.ViTConfig(**VIT16)),
        "vit_no_pooler": lambda: t.ViTModel(t.ViTConfig(**VIT16), add_pooling_layer=False),
        "deit": lambda: t.DeiTModel(t.DeiTConfig(**VIT16)),
        "siglip": lambda: t.SiglipModel(t.SiglipConfig(text_config=TEXT, vision_config=VIT16)),
        "siglip_no_head": lambda: t.SiglipVisionModel(
            t.SiglipVisionConfig(**VIT16, vision_use_head=False)
        ),
        "clip": lambda: t.CLIPModel(
            t.CLIPConfig(text_config=TEXT, vision_config=VIT16, projection_dim=16)
        ),
    }
    return makers[name]()


#: name -> (processor, reference class, prefix tokens, global source, grid side)
CASES = {
    "dinov2": (BIT, "Dinov2Model", 1, "pooler", 5),
    "dinov2_registers": (BIT, "Dinov2WithRegistersModel", 5, "pooler", 5),
    "dinov3": (SQUARE, "DINOv3ViTModel", 3, "pooler", 4),
    "vit": (SQUARE, "ViTModel", 1, "pooler", 4),
    "vit_no_pooler": (SQUARE, "ViTModel", 1, "cls", 4),
    "deit": (SQUARE, "DeiTModel", 2, "pooler", 4),
    "siglip": (SQUARE, "SiglipVisionModel", 0, "pooler", 4),
    "siglip_no_head": (SQUARE, "SiglipVisionModel", 0, "mean", 4),
    "clip": (CLIP_LIKE, "CLIPVisionModel", 1, "pooler", 4),
}


def save_tiny(folder: Path, name: str, seed: int = 0) -> Path:
    return save_hf_checkpoint(randomise(_model(name), seed), folder, CASES[name][0])


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: save_tiny(root / name, name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_hf_spec_matches_the_model_itself(folders, name):
    _, cls_name, prefix, global_source, side = CASES[name]
    enc = build_encoder(f"hf:{folders[name]}")
    pp = enc.preprocessing
    assert enc.prefix_tokens == prefix
    assert enc.preset.options["global"] == global_source
    assert enc.preset.options["model_class"] == cls_name
    assert enc.weights_id["local"] == str(folders[name].resolve())
    assert enc.grid_specs[16].shape == (side, side, 32)
    assert enc.grid_specs[32].shape == (side // 2, side // 2, 32)
    assert enc.grid_specs[32].stride == 2 * enc.grid_specs[16].stride

    pixels = torch.rand(
        2, 1, pp.input_size, pp.input_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        feats = enc(pixels)
        ref = getattr(transformers, cls_name).from_pretrained(folders[name]).eval()
        x = (pixels.expand(-1, 3, -1, -1) - torch.tensor(pp.mean).view(1, 3, 1, 1)) / torch.tensor(
            pp.std
        ).view(1, 3, 1, 1)
        out = ref(pixel_values=x)
    tokens = out.last_hidden_state
    assert tokens.shape[1] == prefix + side * side
    patches = tokens[:, prefix:].reshape(2, side, side, 32)
    expected = {
        "pooler": lambda: out.pooler_output,
        "cls": lambda: tokens[:, 0],
        "mean": lambda: tokens[:, prefix:].mean(1),
    }[global_source]()
    assert feats.grids[16].dtype == torch.float32 and feats.grids[16].is_contiguous()
    torch.testing.assert_close(feats.grids[16], patches, rtol=0, atol=1e-5)
    pooled = F.avg_pool2d(patches.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(feats.grids[32], pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(feats.embedding, expected, rtol=0, atol=1e-5)
    assert feats.embedding.shape == (2, enc.global_dim)


@pytest.mark.parametrize(
    ("processor", "expected"),
    [
        (BIT, Preprocessing(70, IMAGENET_MEAN, IMAGENET_STD, "crop", "bicubic", resize_to=80)),
        (SQUARE, Preprocessing(64, (0.5,) * 3, (0.5,) * 3, "resize", "bilinear")),
        (CLIP_LIKE, Preprocessing(64, (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758), "crop")),
        (
            {"size": {"shortest_edge": 96}, "image_mean": 0.5, "image_std": 0.25},
            Preprocessing(96, (0.5,) * 3, (0.25,) * 3, "crop"),
        ),
        ({"size": 48, "do_normalize": False}, Preprocessing(48, (0.0,) * 3, (1.0,) * 3, "resize")),
        (  # a processor that expects 0-255 inputs: its mean/std move to [0, 1] units
            {
                "size": {"height": 32, "width": 32},
                "do_rescale": False,
                "image_mean": [127.5] * 3,
                "image_std": [51.0] * 3,
            },
            Preprocessing(32, (0.5,) * 3, (0.2,) * 3, "resize"),
        ),
    ],
)
def test_preprocessing_from_processor_config(processor, expected):
    pp, origin = preprocessing_from_processor(processor, image_size=224)
    assert origin == "preprocessor_config.json"
    assert pp.input_size == expected.input_size
    assert (pp.resize, pp.resize_to, pp.interpolation) == (
        expected.resize,
        expected.resize_to,
        expected.interpolation,
    )
    assert pp.mean == pytest.approx(expected.mean) and pp.std == pytest.approx(expected.std)


def test_no_processor_config_falls_back_and_says_so(tmp_path):
    folder = save_tiny(tmp_path / "bare", "vit")
    (folder / "preprocessor_config.json").unlink()
    preset = resolve_preset(f"hf:{folder}")
    assert preset.preprocessing == Preprocessing(64)
    assert preset.options["preprocessing_from"].startswith("defaults")


def test_relative_folder_names_the_same_encoder(folders, monkeypatch):
    monkeypatch.chdir(folders["vit"].parent)
    assert resolve_preset("hf:./vit").name == f"hf:{folders['vit'].resolve()}"


def test_weights_none_builds_the_folder_architecture_deterministically(folders):
    spec = f"hf:{folders['siglip']}"
    a = build_encoder(spec, weights="none")
    b = build_encoder(spec, weights="none")
    assert type(a.model).__name__ == "SiglipVisionModel"
    assert a.weights_id["random_init"] == 0 and a.weights_id["arch"]["hidden_size"] == 32
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    loaded = build_encoder(spec).state_dict()
    assert sa.keys() == loaded.keys()
    assert not all(torch.equal(sa[k], loaded[k]) for k in sa)


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_transformers_only_when_asked(folders, monkeypatch, trust):
    seen: dict[str, list[dict]] = {"config": [], "model": []}
    auto_config = transformers.AutoConfig.from_pretrained
    vision_model = transformers.SiglipVisionModel.from_pretrained

    def config_spy(*args, **kwargs):
        seen["config"].append(kwargs)
        return auto_config(*args, **kwargs)

    def model_spy(*args, **kwargs):
        seen["model"].append(kwargs)
        return vision_model(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config_spy)
    monkeypatch.setattr(transformers.SiglipVisionModel, "from_pretrained", model_spy)
    build_encoder(f"hf:{folders['siglip']}", trust_remote_code=trust)
    assert [k["trust_remote_code"] for k in seen["config"]] == [trust]
    assert [k["trust_remote_code"] for k in seen["model"]] == [trust]


def test_clear_errors(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder(f"hf:{tmp_path / 'nothing-here'}")
    with pytest.raises(WeightsUnavailableError, match="hf auth login"):
        build_encoder("hf:nobody/not-cached-anywhere")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model types .*dinov2.*'bert'"):
        build_encoder(f"hf:{bert}")
    with pytest.raises(ValueError, match="are a ViTModel"):
        build_encoder(f"hf:{folders['dinov2']}", weights=str(folders["vit"]))


def test_hub_id_resolves_through_the_cache(folders, tmp_path):
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    put_in_hub_cache(folders["clip"], "org/tiny-clip", tmp_path / "hf-cache", commit)
    enc = build_encoder("hf:org/tiny-clip")
    assert enc.preset.source == "org/tiny-clip"
    assert enc.preprocessing.mean == pytest.approx(tuple(CLIP_LIKE["image_mean"]))
    assert enc.weights_id == {"hub": "org/tiny-clip", "revision": commit}
    assert type(enc.model).__name__ == "CLIPVisionModel"
