"""Our DaViT and the ``davit`` family (preset ``medimageinsight``).

The MedImageInsight package cannot be installed here, so the DaViT is checked three ways:
reference numbers computed with the release's ``davit_v1.py`` on a small configuration (run once,
offline, outside this package), a direct comparison with that code when it is importable, and
the encoder wiring against our own DaViT on checkpoints written in the release's layout
(``2024.09.27/config.yaml`` + ``vision_model/medimageinsigt-v1.0.0.pt``, safetensors, UniCL key
names, language tensors that must be ignored).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import yaml
from helpers import shared_file
from safetensors.torch import save_file

from embedcache.encoders import GridSpec, Preprocessing, build_encoder, resolve_preset
from embedcache.encoders._weights import CheckpointError
from embedcache.encoders.davit import DaViT
from embedcache.encoders.hub import WeightsUnavailableError
from embedcache.encoders.medimageinsight import build_davit
from embedcache.encoders.registry import LoadOptions, WeightsSource
from embedcache.intake.images import read_image

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

NIH_IMAGE = "nih/00000001_000.png"  # under ../shared/data (helpers.SHARED_DATA)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: Small DaViT whose maps (28, 14, 7, 4 at 112 px) all need window padding (window 5).
SMALL = dict(
    embed_dims=(16, 32, 48, 64),
    depths=(1, 1, 2, 1),
    num_heads=(2, 2, 3, 4),
    num_groups=(2, 2, 3, 4),
    patch_size=(7, 3, 3, 3),
    patch_stride=(4, 2, 2, 2),
    patch_padding=(3, 1, 1, 1),
    patch_prenorm=(False, True, True, True),
    window_size=5,
)

#: The release's config.yaml SPEC, shrunk (window 12 at 480 px: maps 120, 60, 30, 15).
TINY_SPEC = {
    "DIM_EMBED": [16, 32, 48, 64],
    "DEPTHS": [1, 1, 2, 1],
    "NUM_HEADS": [2, 2, 3, 4],
    "NUM_GROUPS": [2, 2, 3, 4],
    "PATCH_SIZE": [7, 3, 3, 3],
    "PATCH_STRIDE": [4, 2, 2, 2],
    "PATCH_PADDING": [3, 1, 1, 1],
    "PATCH_PRENORM": [False, True, True, True],
    "WINDOW_SIZE": 12,
    "DROP_PATH_RATE": 0.2,
    "ENABLE_CHECKPOINT": True,
}
TINY_PROJECTION = 24


def seeded_state(model: torch.nn.Module, seed: int) -> tuple[dict, torch.Generator]:
    """Values for every tensor of ``model``, in sorted-name order from one generator."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in sorted(model.state_dict().items()):
        offset = 1.0 if name.endswith(("norm.weight", "norms.weight")) else 0.0
        state[name] = torch.randn(tensor.shape, generator=gen) * 0.3 + offset
    return state, gen


def test_davit_matches_the_release_code_numbers():
    """Reference values: ``davit_v1.DaViT(**SMALL, num_classes=0)`` of the MedImageInsight
    release (visual-layer/MedImageInsight@5deb6c3, MedImageInsight/ImageEncoder/davit_v1.py) with
    these tensors and this input, run offline with its training-only imports stubbed."""
    model = DaViT(**SMALL).eval()
    state, gen = seeded_state(model, 7)
    model.load_state_dict(state)
    x = torch.randn(1, 3, 112, 112, generator=gen)
    with torch.inference_mode():
        pooled, maps = model.forward_intermediates(x)
    expected_pooled = [-0.158246, -0.161815, 0.933174, 0.181024, -0.307476, -0.313305]
    torch.testing.assert_close(pooled[0, :6], torch.tensor(expected_pooled), rtol=1e-4, atol=1e-5)
    expected = [  # (side, map[0, 1, 2, :4], mean |map|)
        (28, [-3.42489, 11.82416, 1.84854, -8.37741], 5.417127),
        (14, [9.39851, -16.88336, 10.12118, 2.5548], 12.855485),
        (7, [43.89455, -2.74181, -17.20222, -27.62085], 35.543461),
        (4, [-9.77234, -41.97665, 4.94262, -7.71397], 20.574236),
    ]
    for feature_map, (side, values, mean_abs) in zip(maps, expected, strict=True):
        assert feature_map.shape[1:3] == (side, side)
        torch.testing.assert_close(
            feature_map[0, 1, 2, :4], torch.tensor(values), rtol=1e-4, atol=1e-4
        )
        assert feature_map.abs().mean().item() == pytest.approx(mean_abs, rel=1e-5)
    assert model.stage_sides(112) == [28, 14, 7, 4] and model.strides == [4, 8, 16, 32]


def test_davit_matches_the_release_package_when_installed():
    """Direct comparison when the release code is importable (``medimageinsights`` installed)."""
    try:
        release = importlib.import_module("MedImageInsight.ImageEncoder.davit_v1")
    except ImportError:
        pytest.skip("the MedImageInsight release code is not installed")
    ours = DaViT(**SMALL).eval()
    state, gen = seeded_state(ours, 3)
    ours.load_state_dict(state)
    theirs = release.DaViT(num_classes=0, drop_path_rate=0.0, **SMALL).eval()
    theirs.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 112, 112, generator=gen)
    with torch.inference_mode():
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x))


def write_release(
    root: Path, seed: int, *, old_names: bool = False
) -> tuple[DaViT, torch.Tensor, Path]:
    """A tiny MedImageInsight release folder; returns the reference DaViT, projection, root."""
    folder = root / "2024.09.27"
    (folder / "vision_model").mkdir(parents=True)
    config = {
        "IMAGE_ENCODER": {
            "NAME": "davit_v1",
            "NUM_CLASSES": 0,
            "IMAGE_SIZE": [480, 480],
            "SPEC": TINY_SPEC,
        },
        "LANG_ENCODER": {"NAME": "transformer", "WIDTH": 8},
        "UNICL_MODEL": {"DIM_PROJECTION": TINY_PROJECTION},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    model = DaViT(**tiny_davit_args()).eval()
    state, gen = seeded_state(model, seed)
    model.load_state_dict(state)
    projection = torch.randn(64, TINY_PROJECTION, generator=gen)
    if old_names:  # the layout davit_v1/UniCLModel still convert: visual.*, old block names
        tensors = {"visual." + to_old_name(k): v for k, v in state.items()}
        tensors["vision_projection"] = projection
    else:
        tensors = {"image_encoder." + k: v for k, v in state.items()}
        tensors["image_projection"] = projection
    tensors["lang_encoder.token_embedding.weight"] = torch.randn(10, 8, generator=gen)
    tensors["lang_projection"] = torch.randn(8, TINY_PROJECTION, generator=gen)
    tensors["logit_scale"] = torch.ones(())
    save_file(tensors, folder / "vision_model" / "medimageinsigt-v1.0.0.pt")
    return model, projection, root


def tiny_davit_args() -> dict:
    keys = {
        "DIM_EMBED": "embed_dims",
        "DEPTHS": "depths",
        "NUM_HEADS": "num_heads",
        "NUM_GROUPS": "num_groups",
        "PATCH_SIZE": "patch_size",
        "PATCH_STRIDE": "patch_stride",
        "PATCH_PADDING": "patch_padding",
        "PATCH_PRENORM": "patch_prenorm",
        "WINDOW_SIZE": "window_size",
    }
    return {arg: TINY_SPEC[key] for key, arg in keys.items()}


_OLD = (  # current DaViT name -> the name of the older DaViT code, as the release maps them
    ("spatial_block.conv1.fn.dw", "0.cpe.0.proj"),
    ("spatial_block.window_attn.fn", "0.attn"),
    ("spatial_block.conv2.fn.dw", "0.cpe.1.proj"),
    ("spatial_block.ffn.fn.net", "0.mlp"),
    ("spatial_block.window_attn.norm", "0.norm1"),
    ("spatial_block.ffn.norm", "0.norm2"),
    ("channel_block.conv1.fn.dw", "1.cpe.0.proj"),
    ("channel_block.channel_attn.fn", "1.attn"),
    ("channel_block.conv2.fn.dw", "1.cpe.1.proj"),
    ("channel_block.ffn.fn.net", "1.mlp"),
    ("channel_block.channel_attn.norm", "1.norm1"),
    ("channel_block.ffn.norm", "1.norm2"),
)


def to_old_name(name: str) -> str:
    for new, old in _OLD:
        name = name.replace(new, old)
    if name.startswith("convs."):
        name = "conv_embeds." + name[len("convs.") :]
    if name.startswith("blocks."):
        name = "main_blocks." + name[len("blocks.") :]
    return name


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("mii"), seed=11)


@pytest.mark.parametrize("where", ["repository", "release-folder", "file"])
def test_medimageinsight_loads_the_release_layout(release, where):
    model, projection, root = release
    location = {
        "repository": root,
        "release-folder": root / "2024.09.27",
        "file": root / "2024.09.27" / "vision_model" / "medimageinsigt-v1.0.0.pt",
    }[where]
    enc = build_encoder("medimageinsight", weights=str(location))
    assert enc.grid_specs == {16: GridSpec(16, (30, 30, 48)), 32: GridSpec(32, (15, 15, 64))}
    assert enc.global_dim == TINY_PROJECTION
    assert enc.weights_id["local"].endswith("vision_model/medimageinsigt-v1.0.0.pt")
    assert len(enc.weights_id["sha256"]) == 64
    saved, loaded = model.state_dict(), enc.model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert torch.equal(enc.image_projection.detach(), projection)

    pixels = torch.rand(2, 1, 480, 480, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = enc(pixels)
        x = (
            pixels.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)
        ) / torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)
        pooled, maps = model.forward_intermediates(x)
    embedding = pooled @ projection  # UniCLModel.encode_image(norm=True)
    embedding = embedding / embedding.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(feats.embedding, embedding, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.grids[16], maps[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.grids[32], maps[3], rtol=0, atol=1e-6)
    assert feats.grids[16].is_contiguous() and feats.grids[16].dtype == torch.float32


def test_old_key_names_load_the_same_weights(release, tmp_path):
    model, projection, _ = release
    _, _, old_root = write_release(tmp_path, seed=11, old_names=True)
    enc = build_encoder("medimageinsight", weights=str(old_root))
    saved, loaded = model.state_dict(), enc.model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert torch.equal(enc.image_projection.detach(), projection)


def test_incomplete_or_foreign_checkpoints_are_refused(release, tmp_path):
    from safetensors.torch import load_file

    _, _, root = release
    source = root / "2024.09.27" / "vision_model" / "medimageinsigt-v1.0.0.pt"
    folder = tmp_path / "2024.09.27"
    (folder / "vision_model").mkdir(parents=True)
    shutil.copy(root / "2024.09.27" / "config.yaml", folder / "config.yaml")
    tensors = load_file(source)
    del tensors["image_encoder.blocks.2.1.channel_block.ffn.fn.net.fc1.weight"]
    save_file(tensors, folder / "vision_model" / "truncated.pt")
    with pytest.raises(CheckpointError, match=r"lacks 1 of .*blocks\.2\.1\.channel_block"):
        build_encoder("medimageinsight", weights=str(folder / "vision_model" / "truncated.pt"))

    no_projection = {k: v for k, v in load_file(source).items() if "projection" not in k}
    save_file(no_projection, folder / "no-projection.pt")
    with pytest.raises(CheckpointError, match="not a MedImageInsight checkpoint"):
        build_encoder("medimageinsight", weights=str(folder / "no-projection.pt"))

    bare = shutil.copy(source, tmp_path / "bare.pt")  # no config.yaml: the release architecture
    with pytest.raises(CheckpointError, match="lacks"):
        build_encoder("medimageinsight", weights=str(bare))
    with pytest.raises(WeightsUnavailableError, match="--weights FILE"):
        build_encoder("medimageinsight")  # the hub repository, offline, empty cache


def test_medimageinsight_preset_is_the_release():
    preset = resolve_preset("medimageinsight")
    assert preset.source == "lion-ai/MedImageInsights"
    assert preset.preprocessing == Preprocessing(
        480, *IMAGENET, resize="resize", interpolation="bicubic"
    )
    davit = preset.arch["davit"]
    assert davit["embed_dims"] == [256, 512, 1024, 2048] and davit["depths"] == [1, 1, 9, 1]
    assert davit["num_heads"] == davit["num_groups"] == [8, 16, 32, 64]
    assert davit["window_size"] == 12 and preset.arch["projection_dim"] == 1024
    assert preset.options == {"normalize_global": True}
    with torch.device("meta"):  # the full DaViT, shapes only
        full = DaViT(**davit)
    assert full.stage_sides(480) == [120, 60, 30, 15] and full.strides == [4, 8, 16, 32]
    assert sum(p.numel() for p in full.parameters()) > 350_000_000


def test_preprocessing_equals_the_study_transform():
    """The study: ``T.Resize((480, 480), bicubic)``, ``ToTensor``, ``Normalize`` (ImageNet). On a
    float tensor (torchvision resizes tensors with antialiasing, as PIL does) the match is exact;
    through 8-bit PIL it differs by clipped overshoot and rounding (see test_encoders_timm)."""
    pp = resolve_preset("medimageinsight").preprocessing
    transform = T.Compose(
        [T.Resize((480, 480), interpolation=T.InterpolationMode.BICUBIC), T.Normalize(*IMAGENET)]
    )
    image = read_image(shared_file(NIH_IMAGE))
    for crop in (image, image[:, :400]):  # square and non-square: both stretched to 480 x 480
        tensor = torch.from_numpy(np.ascontiguousarray(crop))[None].expand(3, -1, -1)
        x = pp.prepare(crop)[None].expand(-1, 3, -1, -1)
        mine = (x - torch.tensor(pp.mean).view(1, 3, 1, 1)) / torch.tensor(pp.std).view(1, 3, 1, 1)
        torch.testing.assert_close(mine[0], transform(tensor), rtol=0, atol=1e-5)


def test_weights_none_is_deterministic():
    small = {"davit": tiny_davit_args(), "projection_dim": TINY_PROJECTION}
    preset = dataclasses.replace(resolve_preset("medimageinsight"), arch=small)
    torch.manual_seed(4)
    rng = torch.get_rng_state()
    a = build_davit(preset, WeightsSource("none", seed=0), LoadOptions())
    assert torch.equal(torch.get_rng_state(), rng), "the caller's RNG was consumed"
    b = build_davit(preset, WeightsSource("none", seed=0), LoadOptions())
    c = build_davit(preset, WeightsSource("none", seed=1), LoadOptions())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["image_projection"], sc["image_projection"])
    assert a.weights_id == {"random_init": 0, "arch": small}


@pytest.mark.slow
def test_medimageinsight_full_size_random_weights():
    enc = build_encoder("medimageinsight", weights="none")
    with torch.inference_mode():
        feats = enc(torch.rand(1, 1, 480, 480))
    assert feats.embedding.shape == (1, 1024)
    torch.testing.assert_close(feats.embedding.norm(dim=-1), torch.ones(1))
    assert feats.grids[16].shape == (1, 30, 30, 1024)
    assert feats.grids[32].shape == (1, 15, 15, 2048)
    assert enc.grid_specs == {16: GridSpec(16, (30, 30, 1024)), 32: GridSpec(32, (15, 15, 2048))}
