"""The ``ark`` family (Ark+ Swin-L at 768 px) and the generic ``timm:`` spec.

Checkpoints are tiny random instances of the real timm architectures, written in the layout a
user's file has (Ark+: timm 0.5.4 key layout, nested under ``teacher``/``state_dict`` with
``module.`` prefixes, plus the Ark projector and task heads) and loaded back through
``build_encoder``. References are timm's own ``forward_intermediates`` / ``forward_head`` on the
same weights.
"""

from __future__ import annotations

import argparse
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms as T
from helpers import shared_file
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

from embedcache.encoders import GridSpec, Preprocessing, build_encoder, resolve_preset
from embedcache.encoders._weights import CheckpointError
from embedcache.encoders.hub import WeightsUnavailableError
from embedcache.intake.images import read_image

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

NIH_IMAGE = "nih/00000001_000.png"  # under ../shared/data (helpers.SHARED_DATA)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SWIN = "swin_large_patch4_window12_384"
#: A tiny Swin at Ark+'s input size and window: stage maps 192, 96, 48, 24; shifted blocks in
#: every stage (so the old layout carries attention masks).
TINY_SWIN = dict(
    img_size=768, window_size=12, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)
)


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values in every tensor (layer norms and biases included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    x = pixels.expand(-1, 3, -1, -1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def timm_reference(model, x, indices):
    """timm's own grids (channels-last) and pooled vector."""
    with torch.inference_mode():
        final, maps = model.forward_intermediates(x, indices=indices, norm=True)
        pooled = model.forward_head(final, pre_logits=True)
    return [m.permute(0, 2, 3, 1) for m in maps], pooled


def old_timm_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A current timm Swin state dict written as timm 0.5.4 wrote it: the inverse of
    ``checkpoint_filter_fn`` (patch merging at the end of stage i instead of the start of stage
    i + 1, relative position indices and attention masks stored)."""
    old = {
        re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k): v
        for k, v in model.state_dict().items()
    }
    for name, buffer in model.named_buffers():
        if name.endswith(("relative_position_index", "attn_mask")):
            old[name] = buffer.clone()
    return old


@pytest.fixture(scope="module")
def ark(tmp_path_factory):
    """A tiny Ark+-layout checkpoint: the reference model, its file in several wrappings."""
    root = tmp_path_factory.mktemp("ark")
    model = randomised(timm.create_model(SWIN, pretrained=False, num_classes=0, **TINY_SWIN), 1)
    old = old_timm_layout(model)
    assert "layers.0.downsample.reduction.weight" in old and "layers.0.blocks.1.attn_mask" in old
    gen = torch.Generator().manual_seed(2)
    extras = {  # what Ark's checkpoint holds besides the Swin: projector, task heads, 1k head
        "projector.weight": torch.randn(20, 128, generator=gen),
        "projector.bias": torch.randn(20, generator=gen),
        "omni_heads.0.weight": torch.randn(14, 20, generator=gen),
        "omni_heads.0.bias": torch.randn(14, generator=gen),
        "head.weight": torch.randn(1000, 128, generator=gen),
        "head.bias": torch.randn(1000, generator=gen),
    }
    teacher = {f"module.{k}": v for k, v in {**old, **extras}.items()}
    student = {k: torch.zeros_like(v) for k, v in teacher.items()}
    files = {
        "teacher": root / "Ark6_tiny.pth.tar",
        "state_dict": root / "state_dict.pth.tar",
        "safetensors": root / "flat.safetensors",
    }
    torch.save({"epoch": 50, "state_dict": student, "teacher": teacher}, files["teacher"])
    torch.save({"epoch": 50, "state_dict": teacher}, files["state_dict"])
    save_file({k: v.contiguous() for k, v in {**old, **extras}.items()}, files["safetensors"])
    return model, extras, files


@pytest.mark.parametrize("layout", ["teacher", "state_dict", "safetensors"])
def test_ark_plus_loads_the_old_timm_layout(ark, layout):
    model, _, files = ark
    enc = build_encoder("ark-plus", weights=str(files[layout]))
    assert enc.grid_specs[16].stride == 16 and enc.grid_specs[16].shape == (48, 48, 64)
    assert enc.grid_specs[32].stride == 32 and enc.grid_specs[32].shape == (24, 24, 128)
    assert enc.global_dim == 128
    assert enc.weights_id["local"] == str(files[layout])
    assert len(enc.weights_id["sha256"]) == 64
    assert enc.weights_id["entry"] == (None if layout == "safetensors" else layout)

    saved = model.state_dict()  # every parameter is the saved tensor (not the zero student)
    loaded = enc.model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    pixels = torch.rand(1, 1, 768, 768, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = enc(pixels)
    (g16, g32), pooled = timm_reference(model, normalise(pixels, *IMAGENET), [2, 3])
    assert feats.grids[16].shape == (1, 48, 48, 64) and feats.grids[16].is_contiguous()
    assert feats.grids[32].shape == (1, 24, 24, 128)
    torch.testing.assert_close(feats.grids[16], g16, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.grids[32], g32, rtol=0, atol=1e-6)  # after the final norm
    torch.testing.assert_close(feats.embedding, pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, g32.mean(dim=(1, 2)), rtol=0, atol=1e-5)


def test_ark_plus_projector_on_request(ark):
    model, extras, files = ark
    plain = build_encoder("ark-plus", weights=str(files["teacher"]))
    projected = build_encoder("ark-plus-projector", weights=str(files["teacher"]))
    assert projected.global_dim == 20 and plain.global_dim == 128
    assert plain.key_material() != projected.key_material()
    pixels = torch.rand(1, 1, 768, 768, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = plain(pixels), projected(pixels)
    expected = a.embedding @ extras["projector.weight"].T + extras["projector.bias"]
    torch.testing.assert_close(b.embedding, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.grids[16], a.grids[16], rtol=0, atol=0)


def test_ark_plus_refuses_incomplete_or_foreign_files(ark, tmp_path):
    _, _, files = ark
    ckpt = torch.load(files["teacher"], weights_only=True)
    del ckpt["teacher"]["module.layers.2.blocks.1.mlp.fc2.weight"]
    torch.save(ckpt, tmp_path / "truncated.pth.tar")
    with pytest.raises(CheckpointError, match=r"lacks 1 of .*layers\.2\.blocks\.1\.mlp\.fc2"):
        build_encoder("ark-plus", weights=str(tmp_path / "truncated.pth.tar"))

    full = torch.load(files["teacher"], weights_only=True)["teacher"]
    no_projector = {k: v for k, v in full.items() if "projector" not in k}
    torch.save({"teacher": no_projector}, tmp_path / "no-projector.pth")
    with pytest.raises(CheckpointError, match="no projector"):
        build_encoder("ark-plus-projector", weights=str(tmp_path / "no-projector.pth"))

    torch.save({"args": argparse.Namespace(lr=1.0), "teacher": {}}, tmp_path / "pickled.pth.tar")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        build_encoder("ark-plus", weights=str(tmp_path / "pickled.pth.tar"))

    torch.save({"teacher": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a Swin"):
        build_encoder("ark-plus", weights=str(tmp_path / "other.pth"))

    with pytest.raises(WeightsUnavailableError, match="--weights FILE"):
        build_encoder("ark-plus")  # the preset's source is a description: by request only
    with pytest.raises(FileNotFoundError):
        build_encoder("ark-plus", weights=str(tmp_path / "missing.pth.tar"))


def test_ark_plus_preset_is_the_reference_architecture():
    preset = resolve_preset("ark-plus")
    assert preset.preprocessing == Preprocessing(768, *IMAGENET, resize="resize")
    arch = preset.arch
    assert (arch["model_name"], arch["img_size"], arch["window_size"], arch["embed_dim"]) == (
        SWIN,
        768,
        12,
        192,
    )
    assert arch["depths"] == [2, 2, 18, 2] and arch["num_heads"] == [6, 12, 24, 48]
    assert [768 // 4 // 2**i for i in range(4)] == [192, 96, 48, 24]
    assert all(side % arch["window_size"] == 0 for side in (192, 96, 48, 24))
    with torch.device("meta"):  # the full Swin-L, shapes only
        enc = build_encoder("ark-plus", weights="none")
    plan = enc.plan
    assert plan.indices == (2, 3) and not plan.pooled
    assert plan.specs[16].shape == (48, 48, 768) and plan.specs[32].shape == (24, 24, 1536)
    assert enc.model.num_features == 1536 and enc.global_dim == 1536
    assert enc.model.patch_embed.img_size == (768, 768) and enc.model.embed_dim == 192
    assert resolve_preset("ark-plus-projector").options == {"projector": True}


def nih_tensor() -> tuple[np.ndarray, torch.Tensor]:
    image = read_image(shared_file(NIH_IMAGE))
    return image, torch.from_numpy(image)[None].expand(3, -1, -1).contiguous()


def ours(preset, image: np.ndarray) -> torch.Tensor:
    """What the encoder sees: prepare, three channels, the preset's mean/std."""
    pp = preset.preprocessing
    return normalise(pp.prepare(image)[None], pp.mean, pp.std)[0]


@pytest.mark.parametrize(
    ("spec", "data_config"),
    [
        ("ark-plus", dict(input_size=(3, 768, 768), interpolation="bicubic", crop_pct=1.0)),
        ("timm:vit_tiny_patch16_224", None),
        ("timm:convnext_atto", None),
    ],
)
def test_preprocessing_equals_timm_transform(spec, data_config):
    """Preprocessing.prepare + normalisation equals timm's eval transform on a real chest X-ray
    given as a float tensor (timm's transform accepts tensors: no 8-bit rounding)."""
    preset = resolve_preset(spec)
    if data_config is None:
        data_config = resolve_data_config(model=timm.create_model(preset.arch["model_name"]))
    else:
        data_config = {**data_config, "mean": IMAGENET[0], "std": IMAGENET[1]}
    transform = create_transform(**data_config)
    image, tensor = nih_tensor()
    torch.testing.assert_close(ours(preset, image), transform(tensor), rtol=0, atol=1e-5)
    side = 396  # non-square (512 x 396): shorter side resized, even crop margins
    if spec == "ark-plus":  # the study stretched (Resize((768, 768))) where timm would crop
        transform = T.Compose(
            [T.Resize((768, 768), T.InterpolationMode.BICUBIC), transform.transforms[-1]]
        )
    torch.testing.assert_close(
        ours(preset, image[:, :side]), transform(tensor[..., :side]), rtol=0, atol=1e-5
    )


def test_odd_crop_margin_matches_timm():
    """torchvision (timm, open_clip) rounds an odd crop margin half to even; HF floors it."""
    preset = resolve_preset("timm:vit_tiny_patch16_224")
    transform = create_transform(
        **resolve_data_config(model=timm.create_model("vit_tiny_patch16_224"))
    )
    image, tensor = nih_tensor()  # 512 x 475: shorter side 248, longer 267, margin 43
    torch.testing.assert_close(
        ours(preset, image[:, :475]), transform(tensor[..., :475]), rtol=0, atol=1e-5
    )


def test_study_uint8_pil_path_differs_by_clipping_and_rounding_only():
    """The study fed 8-bit PIL images: PIL clips bicubic overshoot to [0, 255] and works in 8-bit
    fixed point. Against it, our float pipeline differs by up to ~8/255 at sharp edges (the
    clipped overshoot) and by at most 3/255 once clipped and rounded the same way."""
    preset = resolve_preset("ark-plus")
    image, _ = nih_tensor()
    pil = Image.fromarray(np.round(image * 255).astype(np.uint8)).convert("RGB")
    image8 = np.asarray(pil)[..., 0].astype(np.float32) / 255
    transform = create_transform(input_size=(3, 768, 768), interpolation="bicubic", crop_pct=1.0)
    theirs = transform(pil)[0] * IMAGENET[1][0] + IMAGENET[0][0]  # back to [0, 1]
    mine = preset.preprocessing.prepare(image8)[0]
    assert (mine - theirs).abs().max() < 10 / 255
    clipped = torch.round(mine.clamp(0, 1) * 255) / 255
    assert (clipped - theirs).abs().max() <= 3 / 255 + 1e-6


@pytest.fixture(scope="module")
def timm_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm")
    out = {}
    for i, name in enumerate(("vit_tiny_patch16_224", "convnext_atto")):
        model = randomised(timm.create_model(name, pretrained=False, num_classes=0), 10 + i)
        folder = root / name
        folder.mkdir()
        save_file(model.state_dict(), folder / "model.safetensors")
        torch.save(
            {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
            folder / "train.pth",
        )
        out[name] = (model, folder)
    return out


@pytest.mark.parametrize(
    ("name", "indices", "g16", "g32", "dim"),
    [
        ("vit_tiny_patch16_224", [11], (14, 14, 192), (7, 7, 192), 192),
        ("convnext_atto", [2, 3], (14, 14, 160), (7, 7, 320), 320),
    ],
)
@pytest.mark.parametrize("where", ["folder", "training-file"])
def test_timm_spec_matches_timm_itself(timm_checkpoints, name, indices, g16, g32, dim, where):
    model, folder = timm_checkpoints[name]
    location = folder if where == "folder" else folder / "train.pth"
    enc = build_encoder(f"timm:{name}@{location}")
    assert enc.grid_specs[16].shape == g16 and enc.grid_specs[32].shape == g32
    assert enc.grid_specs[16].stride == 16 and enc.grid_specs[32].stride == 32
    assert enc.global_dim == dim
    saved, loaded = model.state_dict(), enc.model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)

    pp = enc.preprocessing
    pixels = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        feats = enc(pixels)
    maps, pooled = timm_reference(model, normalise(pixels, pp.mean, pp.std), indices)
    torch.testing.assert_close(feats.grids[16], maps[0], rtol=0, atol=1e-6)
    if len(maps) == 2:
        torch.testing.assert_close(feats.grids[32], maps[1], rtol=0, atol=1e-6)
    else:  # ViT: the 2x2 pool of the (normed) token grid, CLS dropped
        pooled16 = torch.nn.functional.avg_pool2d(maps[0].permute(0, 3, 1, 2), 2)
        torch.testing.assert_close(feats.grids[32], pooled16.permute(0, 2, 3, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.embedding, pooled, rtol=0, atol=1e-6)


def test_timm_spec_weights_none_is_deterministic():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = build_encoder("timm:vit_tiny_patch16_224", weights="none")
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG was consumed"
    b = build_encoder("timm:vit_tiny_patch16_224", weights="none")
    c = build_encoder("timm:vit_tiny_patch16_224", weights="none", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.cls_token"], sc["model.cls_token"])
    assert a.weights_id == {"random_init": 0, "arch": {"model_name": "vit_tiny_patch16_224"}}


def test_timm_spec_errors(timm_checkpoints, tmp_path):
    with pytest.raises(ValueError, match="unknown timm model 'vit_nonexistent'"):
        resolve_preset("timm:vit_nonexistent")
    with pytest.raises(FileNotFoundError):
        resolve_preset(f"timm:convnext_atto@{tmp_path / 'missing.pth'}")
    preset = resolve_preset("timm:convnext_atto")
    assert preset.source == "timm/convnext_atto.d2_in1k"
    with pytest.raises(WeightsUnavailableError, match="--weights none"):
        build_encoder("timm:convnext_atto")  # not in the (empty) cache, offline
    _, vit_folder = timm_checkpoints["vit_tiny_patch16_224"]
    with pytest.raises(CheckpointError, match="lacks|does not fit|could not convert"):
        build_encoder(f"timm:convnext_atto@{vit_folder / 'model.safetensors'}")


@pytest.mark.slow
def test_ark_plus_full_size_random_weights():
    enc = build_encoder("ark-plus", weights="none")
    assert sum(p.numel() for p in enc.parameters()) > 190_000_000
    with torch.inference_mode():
        feats = enc(torch.rand(1, 1, 768, 768))
    assert feats.embedding.shape == (1, 1536)
    assert feats.grids[16].shape == (1, 48, 48, 768)
    assert feats.grids[32].shape == (1, 24, 24, 1536)
    assert enc.grid_specs == {16: GridSpec(16, (48, 48, 768)), 32: GridSpec(32, (24, 24, 1536))}
