"""Extra taps: the class (or pooled) token of chosen blocks, stored beside the global vector.

DINOv2's linear evaluation concatenates the last 4 blocks' class tokens (after the final norm).
``embedcache extract --taps last4`` stores them as ``tap<b>`` arrays of the same group (part of
the key); ``probes linear --feature taps`` (or ``tap<b>``) probes them.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import adapter_input, save_tiny_dinov2

from embedcache.cli import main as embedcache_main
from embedcache.encoders import build_encoder
from embedcache.encoders.base import parse_taps
from embedcache.intake import load_manifest, read_image
from embedcache.store import open_store
from embedcache.store.verify import verify_group
from probes.cli import main as probes_main
from probes.core.features import FeatureError, FeatureSet

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache


def test_parse_taps():
    assert parse_taps("last4", 12) == (8, 9, 10, 11)
    assert parse_taps("8,9,10,11", 12) == parse_taps([-4, -3, -2, -1], 12) == (8, 9, 10, 11)
    assert parse_taps("11, 3,3", 12) == (3, 11)
    for bad in ("last13", "last0", "12", "-13", "x", ""):
        with pytest.raises(ValueError, match="taps"):
            parse_taps(bad, 12)


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_dinov2_last_tap_is_the_global_vector(tmp_path, registers):
    """RAD-DINO's global vector is ``pooler_output``, the final-normed class token: the last
    block's tap equals it; every tap is the block's normed class token (registers skipped)."""
    folder = save_tiny_dinov2(tmp_path / "w", registers=registers)
    spec = "dinov2-with-registers-small" if registers else "rad-dino"
    enc = build_encoder(spec, weights=str(folder))
    plain_key = enc.key_material()
    enc.set_taps("last2")  # the tiny model has 2 blocks
    assert enc.taps == (0, 1) and enc.tap_dim == 32
    assert enc.key_material()["taps"] == [0, 1] and "taps" not in plain_key
    image = np.random.default_rng(0).random((70, 60)).astype(np.float32)
    pixels = enc.preprocessing.prepare(image)[None]
    with torch.inference_mode():
        feats = enc(pixels)
        out = enc.model(pixel_values=adapter_input(enc, image), output_hidden_states=True)
        block0 = enc.model.layernorm(out.hidden_states[1])[:, 0]
    assert set(feats.taps) == {0, 1}
    torch.testing.assert_close(feats.taps[1], feats.embedding, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.taps[1], out.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.taps[0], block0, rtol=0, atol=1e-6)
    assert not torch.allclose(feats.taps[0], feats.taps[1])


def test_timm_vit_last_tap_is_the_global_vector():
    enc = build_encoder("timm:vit_tiny_patch16_224", weights="none")
    enc.set_taps("last4")
    assert enc.taps == (8, 9, 10, 11) and enc.tap_dim == 192
    x = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    mean, std = (
        torch.tensor(v).view(1, 3, 1, 1) for v in (enc.preprocessing.mean, enc.preprocessing.std)
    )
    with torch.inference_mode():
        feats = enc(x)
        _, found = enc.model.forward_intermediates(
            (x.expand(-1, 3, -1, -1) - mean) / std,
            indices=[8],
            norm=True,
            return_prefix_tokens=True,
        )
    # vit_tiny's pre-logits: the final-normed class token
    torch.testing.assert_close(feats.taps[11], feats.embedding, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.taps[8], found[0][1][:, 0], rtol=0, atol=1e-5)
    assert feats.grids[16].shape == (2, 14, 14, 192)  # the grids are unchanged by taps


def test_open_clip_taps_are_the_trunks_class_tokens():
    enc = build_encoder("biomedclip", weights="none")
    enc.set_taps([-1])
    x = torch.rand(1, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    pp = enc.preprocessing
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pp.mean, pp.std))
    with torch.inference_mode():
        feats = enc(x)
        tokens = enc.visual.trunk.forward_features((x.expand(-1, 3, -1, -1) - mean) / std)
    assert enc.taps == (11,) and feats.embedding.shape == (1, 512)  # projected, unlike the tap
    torch.testing.assert_close(feats.taps[11], tokens[:, 0], rtol=0, atol=1e-5)


def test_hierarchical_models_refuse_taps():
    enc = build_encoder("timm:convnext_atto", weights="none")
    with pytest.raises(ValueError, match="single-scale ViT"):
        enc.set_taps("last2")


def test_extract_taps_then_probe_them(phantom_manifest, tiny_encoder_spec, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    common = [str(phantom_manifest), "--encoder", tiny_encoder_spec, "--out", str(store)]
    common += ["--workers", "0", "--no-progress", "--rows-per-shard", "8"]
    assert embedcache_main(["extract", *common]) == 0
    assert embedcache_main(["extract", *common, "--taps", "last2"]) == 0
    capsys.readouterr()
    with open_store(store) as opened:
        keys = opened.keys()
        assert len(keys) == 2  # taps are part of the key: a group of their own
        tapped = next(k for k in keys if opened.group(k).layout.taps)
        group = opened.group(tapped)
        n = len(load_manifest(phantom_manifest))
        assert group.layout.taps == (0, 1) and group.array("tap1").shape == (n, 32)
        assert group.attrs["key_material"]["taps"] == [0, 1]
        np.testing.assert_array_equal(group.array("tap1")[:], group.array("global")[:])
        assert not np.array_equal(group.array("tap0")[:], group.array("tap1")[:])
        assert verify_group(group).ok

    # the stored tap equals the encoder's own for one image
    enc = build_encoder(tiny_encoder_spec)
    enc.set_taps("last2")
    manifest = load_manifest(phantom_manifest)
    with torch.inference_mode():
        feats = enc(enc.preprocessing.prepare(read_image(manifest.paths[3]))[None])
    fs = FeatureSet.open(store, phantom_manifest, encoder=tapped, feature="taps")
    assert fs.shape == (n, 64)
    row = fs.load([3])[0]
    np.testing.assert_allclose(row[:32], feats.taps[0][0].numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(row[32:], feats.taps[1][0].numpy(), rtol=2e-3, atol=2e-3)
    with pytest.raises(FeatureError, match="no taps"):
        FeatureSet.open(
            store, phantom_manifest, encoder=next(k for k in keys if k != tapped), feature="taps"
        )

    def linear(feature: str, out: str) -> pd.DataFrame:
        argv = ["linear", str(store), "--manifest", str(phantom_manifest), "--encoder", tapped]
        argv += ["--label", "pneumothorax", "--feature", feature, "--out", str(tmp_path / out)]
        assert probes_main([*argv, "--n-boot", "20", "--quiet"]) == 0
        return pd.read_parquet(tmp_path / out / "predictions.parquet")

    taps = linear("taps", "taps")
    assert set(taps["feature"]) == {"taps"}
    assert json.loads((tmp_path / "taps" / "run.json").read_text())["feature"] == "taps"
    assert taps["score"].between(0, 1).all() and len(taps) > 0
    # a named tap: the last block's is the global vector, so its probe is the global probe's
    last, global_ = linear("tap1", "tap1"), linear("global", "global")
    np.testing.assert_array_equal(last["score"].to_numpy(), global_["score"].to_numpy())
    with pytest.raises(SystemExit):
        probes_main(["linear", str(store), "--manifest", "m", "--label", "x", "--feature", "grid8"])
