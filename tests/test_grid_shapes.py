"""Grid shapes come from what the model returns, never from ``input // stride``.

For every family, the planned grid shapes (``grid_specs``, which size the store) equal the maps
of a real forward pass at the preset's input, including input sizes that the stride does not
divide (padded convolutions give the ceiling, valid ones the floor): Xception at 299 px has a
19x19 stride-16 map, Inception v3 a 17x17 one, where ``299 // 16`` is 18.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from helpers import randomise, save_hf_checkpoint, save_tiny_dinov2, save_tiny_segformer
from PIL import Image
from safetensors.torch import save_file

from embedcache.cli import main as cli_main
from embedcache.encoders import EncoderPreset, build_encoder, resolve_preset
from embedcache.encoders.davit import DaViT
from embedcache.encoders.hf_segformer import HFStagesEncoder
from embedcache.encoders.medimageinsight import DaViTEncoder
from embedcache.store import open_store

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

#: A DaViT of MedImageInsight's layout (conv 7/4 then 3/2, padded) with tiny widths.
TINY_DAVIT = dict(
    embed_dims=[16, 24, 32, 40],
    depths=[1, 1, 1, 1],
    num_heads=[2, 2, 2, 2],
    num_groups=[2, 2, 2, 2],
    patch_size=[7, 3, 3, 3],
    patch_stride=[4, 2, 2, 2],
    patch_padding=[3, 1, 1, 1],
    patch_prenorm=[False, True, True, True],
    window_size=3,
)


def timm_folder(root: Path, name: str, size: int) -> str:
    """A random ``name`` saved as a timm hub folder whose ``config.json`` sets the input size:
    the spec ``timm:<name>@<folder>`` then plans at ``size``."""
    folder = root / f"{name}-{size}"
    folder.mkdir()
    model = timm.create_model(name, pretrained=False, num_classes=0)
    save_file(randomise(model, 0, 0.05).state_dict(), folder / "model.safetensors")
    cfg = {"input_size": [3, size, size], "crop_pct": 1.0, "crop_mode": "squash"}
    (folder / "config.json").write_text(json.dumps({"pretrained_cfg": cfg}))
    return f"timm:{name}@{folder}"


def tiny_siglip(root: Path) -> Path:
    import transformers

    config = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        image_size=448,
    )
    model = randomise(transformers.SiglipVisionModel(config), 0)
    return save_hf_checkpoint(model, root / "siglip", {"size": {"height": 448, "width": 448}})


def at_size(spec: str, size: int) -> EncoderPreset:
    preset = resolve_preset(spec)
    pp = dataclasses.replace(preset.preprocessing, input_size=size)
    return dataclasses.replace(preset, preprocessing=pp)


def davit_at(size: int):
    model = randomise(DaViT(**TINY_DAVIT), 0, 0.05).eval()
    projection = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    return DaViTEncoder(at_size("medimageinsight", size), model, projection, {"test": 1}).eval()


def segformer_at(root: Path, size: int):
    from transformers import SegformerModel

    model = SegformerModel.from_pretrained(save_tiny_segformer(root / f"segformer-{size}"))
    return HFStagesEncoder(at_size("segformer-b4", size), model.eval(), {"test": 1}).eval()


#: case -> (builder(tmp_path), expected {level: (h, w)} where the arithmetic would differ).
CASES = {
    "inception": (lambda root: build_encoder("timm:inception_v3", "none"), {16: 17, 32: 8}),
    "xception": (lambda root: build_encoder("timm:legacy_xception", "none"), {16: 19, 32: 10}),
    "efficientnet": (
        lambda root: build_encoder(timm_folder(root, "efficientnet_b0", 200)),
        {16: 13, 32: 7},
    ),
    "resnet": (lambda root: build_encoder(timm_folder(root, "resnet18", 200)), {16: 13, 32: 7}),
    "convnext": (lambda root: build_encoder(timm_folder(root, "convnext_atto", 200)), None),
    "swin": (lambda root: build_encoder("timm:swin_tiny_patch4_window7_224", "none"), None),
    "timm-vit": (lambda root: build_encoder("timm:vit_tiny_patch16_224", "none"), None),
    "hf-dinov2": (lambda root: build_encoder("rad-dino", str(save_tiny_dinov2(root / "d"))), None),
    "hf-siglip": (lambda root: build_encoder("medsiglip-448", str(tiny_siglip(root))), None),
    "open-clip": (lambda root: build_encoder("biomedclip", "none"), None),
    "davit": (lambda root: davit_at(100), {16: 7, 32: 4}),
    "segformer": (lambda root: segformer_at(root, 100), {16: 7, 32: 4}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_planned_grids_equal_a_real_forward(case, tmp_path):
    build, expected = CASES[case]
    enc = build(tmp_path)
    size = enc.preprocessing.input_size
    with torch.inference_mode():
        feats = enc(torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0)))
    for level in (16, 32):
        assert tuple(feats.grids[level].shape[1:]) == enc.grid_specs[level].shape, level
    assert feats.embedding.shape == (1, enc.global_dim)
    if expected:  # the sizes `input // stride` would have got wrong
        for level, side in expected.items():
            assert enc.grid_specs[level].shape[:2] == (side, side)
            assert side != size // enc.grid_specs[level].stride
    if hasattr(enc, "model") and hasattr(enc.model, "forward_intermediates") and case != "davit":
        # timm: the library's own maps for the planned taps
        x = torch.zeros(1, 3, size, size)
        with torch.inference_mode():
            _, maps = enc.model.forward_intermediates(x, indices=list(enc.plan.indices))
        assert tuple(maps[0].shape[2:]) == enc.grid_specs[16].shape[:2]


def tiny_cohort(root: Path, n: int = 2) -> Path:
    rows = []
    for i in range(n):
        pixels = (np.random.default_rng(i).random((80, 64)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        rows.append({"image_id": f"img{i}", "path": f"img{i}.png", "patient_id": f"p{i}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.mark.parametrize(
    ("name", "grid16", "grid32"),
    [
        ("inception_v3", (17, 17, 768), (8, 8, 2048)),
        ("legacy_xception", (19, 19, 728), (10, 10, 2048)),
    ],
)
def test_extract_stores_the_models_own_map_shapes(tmp_path, capsys, name, grid16, grid32):
    """``embedcache extract --encoder timm:<name>`` at the model's own 299 px (random init):
    the store holds the stride-16/32 maps at the shapes the model returns."""
    manifest = tiny_cohort(tmp_path)
    out = tmp_path / "store.zarr"
    argv = ["extract", str(manifest), "--encoder", f"timm:{name}", "--weights", "none"]
    argv += ["--out", str(out), "--workers", "0", "--no-progress", "--device", "cpu"]
    argv += ["--dtype", "float32"]  # random Inception activations outgrow float16
    assert cli_main(argv) == 0
    capsys.readouterr()
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    with torch.inference_mode():
        _, maps = model.forward_intermediates(torch.zeros(1, 3, 299, 299), indices=[3, 4])
    assert [tuple(m.shape[1:]) for m in maps] == [grid16[::-1], grid32[::-1]]  # (C, h, w)
    with open_store(out) as store:
        group = store.group(store.keys()[0])
        assert group.array("grid16").shape == (2, *grid16)
        assert group.array("grid32").shape == (2, *grid32)
        assert group.done.all()
        values = np.asarray(group.array("grid32")[:], dtype=np.float32)
        assert np.isfinite(values).all() and values.std() > 0
        assert group.attrs["encoder"]["preprocessing"]["input_size"] == 299
