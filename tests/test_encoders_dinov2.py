"""The ``hf-dinov2`` family: presets, local/hub/random weights, token bookkeeping.

Every checkpoint here is a tiny random instance of the real transformers class, written with
``save_pretrained`` and loaded back through the path a user's real checkpoint takes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
import transformers
from helpers import put_in_hub_cache, save_tiny_dinov2
from transformers import (
    Dinov2Model,
    Dinov2WithRegistersModel,
)

from embedcache.encoders import Preprocessing, build_encoder, resolve_preset
from embedcache.encoders.hub import WeightsUnavailableError

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network, empty hub cache

RAD_DINO_PROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 518},
    "do_center_crop": True,
    "crop_size": {"height": 518, "width": 518},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5307, 0.5307, 0.5307],
    "image_std": [0.2583, 0.2583, 0.2583],
    "resample": 3,
}


def save_tiny(folder: Path, *, registers: int = 0, seed: int = 0) -> Path:
    """A tiny random DINOv2 (with ``registers`` register tokens) saved like a hub checkpoint."""
    return save_tiny_dinov2(
        folder, seed, registers=registers, std=0.5, processor=RAD_DINO_PROCESSOR
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dinov2")
    return {
        "plain": save_tiny(root / "plain", seed=1),
        "plain-other": save_tiny(root / "plain-other", seed=2),
        "registers": save_tiny(root / "registers", registers=4, seed=3),
    }


def reference(folder: Path, pixels01: torch.Tensor, mean, std):
    """What the study did: the HF model on input normalised by hand, outside any adapter."""
    cls = Dinov2WithRegistersModel if "registers" in folder.name else Dinov2Model
    model = cls.from_pretrained(folder).eval()
    x = pixels01.expand(-1, 3, -1, -1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model(pixel_values=x), model.config


@pytest.mark.parametrize(
    ("preset", "kind", "side"),
    [
        ("dinov2-small", "plain", 16),
        ("dinov2-with-registers-small", "registers", 16),
        ("rad-dino", "plain", 37),
    ],
)
def test_local_checkpoint_matches_the_model_itself(checkpoints, preset, kind, side):
    folder = checkpoints[kind]
    enc = build_encoder(preset, weights=str(folder))
    pp = enc.preprocessing
    assert pp.input_size == side * 14
    assert enc.grid_specs[16].stride == 14 and enc.grid_specs[16].shape == (side, side, 32)
    assert enc.grid_specs[32].stride == 28 and enc.grid_specs[32].shape == (
        side // 2,
        side // 2,
        32,
    )
    assert enc.global_dim == 32
    assert enc.prefix_tokens == (5 if kind == "registers" else 1)

    pixels = torch.rand(
        2, 1, pp.input_size, pp.input_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        feats = enc(pixels)
    out, config = reference(folder, pixels, pp.mean, pp.std)
    prefix = 1 + getattr(config, "num_register_tokens", 0)
    patches = out.last_hidden_state[:, prefix:].reshape(2, side, side, 32)

    g16, g32 = feats.grids[16], feats.grids[32]
    assert feats.embedding.shape == (2, 32) and feats.embedding.dtype == torch.float32
    assert g16.shape == (2, side, side, 32) and g16.dtype == torch.float32 and g16.is_contiguous()
    assert g32.shape == (2, side // 2, side // 2, 32) and g32.is_contiguous()
    torch.testing.assert_close(g16, patches, rtol=0, atol=1e-6)
    pooled = F.avg_pool2d(patches.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(g32, pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats.embedding, out.pooler_output, rtol=0, atol=1e-6)
    # pooler_output is the layer-normed CLS, not a register token
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])


def test_forward_normalises_exactly_once(checkpoints):
    enc = build_encoder("rad-dino", weights=str(checkpoints["plain"]))
    pixels = torch.rand(1, 1, 518, 518, generator=torch.Generator().manual_seed(1))
    mean, std = (0.5307,) * 3, (0.2583,) * 3
    with torch.inference_mode():
        feats = enc(pixels)
        grey_as_rgb = enc(pixels.expand(-1, 3, -1, -1))
    once, _ = reference(checkpoints["plain"], pixels, mean, std)
    x1 = ((pixels - 0.5307) / 0.2583).expand(-1, 3, -1, -1)
    twice, _ = reference(checkpoints["plain"], x1[:, :1], mean, std)
    torch.testing.assert_close(feats.embedding, once.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(grey_as_rgb.embedding, feats.embedding, rtol=0, atol=0)
    assert not torch.allclose(feats.embedding, twice.pooler_output, atol=1e-3)


def test_presets_are_the_real_architectures():
    rad = resolve_preset("rad-dino")
    assert rad.source == "microsoft/rad-dino"
    assert rad.preprocessing == Preprocessing(
        518, (0.5307,) * 3, (0.2583,) * 3, resize="crop", interpolation="bicubic"
    )
    assert (rad.arch["hidden_size"], rad.arch["num_hidden_layers"], rad.arch["patch_size"]) == (
        768,
        12,
        14,
    )
    expected = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
    for size, (hidden, layers, heads) in expected.items():
        for name, registers in ((f"dinov2-{size}", 0), (f"dinov2-with-registers-{size}", 4)):
            preset = resolve_preset(name)
            arch = preset.arch
            assert (
                arch["hidden_size"],
                arch["num_hidden_layers"],
                arch["num_attention_heads"],
            ) == (
                hidden,
                layers,
                heads,
            )
            assert arch.get("num_register_tokens", 0) == registers
            assert preset.source == f"facebook/{name}"
            assert preset.preprocessing.input_size == 224
            assert preset.preprocessing.resize_to == 256
            assert preset.options["global"] == "pooler"


def test_dinov2_processor_geometry_resize_256_crop_224():
    pp = resolve_preset("dinov2-base").preprocessing
    image = torch.rand(300, 400, generator=torch.Generator().manual_seed(2)).numpy()
    out = pp.prepare(image)
    # HF: shorter side -> 256, longer int(256 * 400 / 300) = 341, then the centre 224 x 224
    big = F.interpolate(
        torch.from_numpy(image)[None, None], size=(256, 341), mode="bicubic", antialias=True
    )
    torch.testing.assert_close(out, big[0, :, 16:240, 58:282])
    square = pp.prepare(image[:, :300])
    assert square.shape == (1, 224, 224)
    with pytest.raises(ValueError, match="resize_to"):
        Preprocessing(224, resize="resize", resize_to=256)
    with pytest.raises(ValueError, match="at least"):
        Preprocessing(224, resize="crop", resize_to=200)


@pytest.fixture(scope="module")
def random_small():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    encoder = build_encoder("dinov2-small", weights="none")
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG was consumed"
    return encoder


def state_digest(encoder) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode() + t.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_weights_none_is_deterministic(random_small):
    b = build_encoder("dinov2-small", weights="none")
    c = build_encoder("dinov2-small", weights="none", seed=1)
    sa, sb = random_small.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["model.embeddings.cls_token"], c.state_dict()["model.embeddings.cls_token"]
    )
    assert random_small.weights_id == {
        "random_init": 0,
        "arch": dict(resolve_preset("dinov2-small").arch),
    }
    assert c.weights_id["random_init"] == 1
    pixels = torch.rand(1, 1, 224, 224)
    with torch.inference_mode():
        assert torch.equal(random_small(pixels).grids[16], b(pixels).grids[16])


def test_weights_none_is_identical_in_another_process(random_small):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from embedcache.encoders import build_encoder; "
        "from test_encoders_dinov2 import state_digest; "
        "print(state_digest(build_encoder('dinov2-small', weights='none')))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "7"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    assert done.stdout.strip().splitlines()[-1] == state_digest(random_small)


def test_weights_id_identifies_the_checkpoint(checkpoints, tmp_path):
    a = build_encoder("dinov2-small", weights=str(checkpoints["plain"]))
    b = build_encoder("dinov2-small", weights=str(checkpoints["plain-other"]))
    copy = shutil.copytree(checkpoints["plain"], tmp_path / "copy")
    c = build_encoder("dinov2-small", weights=str(copy))
    assert a.weights_id["local"] == str(checkpoints["plain"].resolve())
    assert len(a.weights_id["sha256"]) == 64
    assert a.weights_id["sha256"] != b.weights_id["sha256"]
    assert a.weights_id["sha256"] == c.weights_id["sha256"]
    assert a.key_material() != b.key_material()


def test_hub_id_loads_from_the_cache_with_its_commit(checkpoints, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    put_in_hub_cache(checkpoints["plain"], "facebook/dinov2-small", tmp_path / "hf-cache", commit)
    enc = build_encoder("dinov2-small")  # the preset's own source, offline, from the cache
    assert enc.weights_id == {"hub": "facebook/dinov2-small", "revision": commit}
    assert enc.grid_specs[16].shape == (16, 16, 32)


def test_clear_errors(checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder("dinov2-small", weights=str(tmp_path / "no-such-folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_encoder("dinov2-small", weights=str(tmp_path / "empty"))
    with pytest.raises(KeyError, match="unknown encoder 'dinov2-tiny'.*rad-dino"):
        build_encoder("dinov2-tiny")
    with pytest.raises(WeightsUnavailableError) as err:
        build_encoder("dinov2-small", weights="nobody/not-cached-anywhere")
    for hint in ("--weights DIR", "hf auth login", "--weights none"):
        assert hint in str(err.value)
    with pytest.raises(ValueError, match="dinov2_with_registers"):
        build_encoder("dinov2-small", weights=str(checkpoints["registers"]))


def test_truncated_checkpoint_is_refused(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(checkpoints["plain"], tmp_path / "truncated")
    tensors = load_file(folder / "model.safetensors")
    dropped = {k: v for k, v in tensors.items() if "layer.1." not in k}
    save_file(dropped, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks .* parameters"):
        build_encoder("dinov2-small", weights=str(folder))


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_only_when_asked(checkpoints, monkeypatch, trust):
    seen: list[dict] = []
    original = transformers.Dinov2Model.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.Dinov2Model, "from_pretrained", spy)
    build_encoder("dinov2-small", weights=str(checkpoints["plain"]), trust_remote_code=trust)
    assert len(seen) == 1
    assert seen[0]["trust_remote_code"] is trust
    assert seen[0]["use_safetensors"] is True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "side", "pooled"), [("rad-dino", 37, 18), ("dinov2-base", 16, 8)]
)
def test_full_size_random_weights(preset, side, pooled):
    enc = build_encoder(preset, weights="none")
    size = enc.preprocessing.input_size
    with torch.inference_mode():
        feats = enc(torch.rand(1, 1, size, size))
    assert feats.embedding.shape == (1, 768)
    assert feats.grids[16].shape == (1, side, side, 768)
    assert feats.grids[32].shape == (1, pooled, pooled, 768)
    assert enc.grid_specs[16].shape == (side, side, 768) and enc.grid_specs[16].stride == 14
    assert enc.grid_specs[32].shape == (pooled, pooled, 768) and enc.grid_specs[32].stride == 28
    assert sum(p.numel() for p in enc.parameters()) > 85_000_000
