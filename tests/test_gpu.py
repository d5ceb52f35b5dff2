"""The CUDA paths on a real GPU, with bf16 tolerances: extraction (bf16 and exact fp32), pinned
batches, the segmentation head and probe under bf16 autocast, the torch linear probe, and a
fine-tune resumed after an interruption (close, not bit-identical: CUDA atomics).

Runs only in a session that may see the GPU: ``make test`` runs it as
``EMBEDCACHE_TEST_GPU=1 pytest tests/test_gpu.py`` after the default suite (which hides CUDA,
see conftest.py). Without CUDA every test here is skipped.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA; run as EMBEDCACHE_TEST_GPU=1 pytest tests/test_gpu.py on a GPU host"
        if os.environ.get("EMBEDCACHE_TEST_GPU") != "1"
        else "no CUDA device on this machine",
    ),
    pytest.mark.usefixtures("offline"),
]


def _extract(manifest, encoder, out, **kw):
    from embedcache.extract import extract

    kw.setdefault("num_workers", 2)
    kw.setdefault("batch_size", 8)
    kw.setdefault("dtype", "float32")
    return extract(manifest, encoder, out, progress=False, log=lambda *_: None, **kw)


def _arrays(path, key) -> dict[str, np.ndarray]:
    from embedcache.store import open_store

    with open_store(path) as store:
        group = store.group(key)
        return {name: np.asarray(group.array(name)[:]) for name in ("global", "grid16", "grid32")}


def test_extraction_on_cuda_matches_the_cpu(phantom_manifest, tiny_encoder_spec, tmp_path):
    cpu = _extract(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr", device="cpu")
    fp32 = _extract(
        phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr", device="cuda", precision="fp32"
    )
    bf16 = _extract(phantom_manifest, tiny_encoder_spec, tmp_path / "s.zarr", device="cuda")
    assert len({cpu.key, fp32.key, bf16.key}) == 3  # never resumed into each other's group
    want = _arrays(tmp_path / "s.zarr", cpu.key)
    exact, half = _arrays(tmp_path / "s.zarr", fp32.key), _arrays(tmp_path / "s.zarr", bf16.key)
    for name, values in want.items():
        # fp32 without TF32: only the order of summation differs from the CPU.
        np.testing.assert_allclose(exact[name], values, rtol=1e-4, atol=1e-4, err_msg=name)
        # bf16: 8 bits of mantissa through every layer.
        error = np.abs(half[name] - values)
        scale = np.abs(values).mean()
        assert error.mean() < 3e-2 * scale and error.max() < 0.15 * np.abs(values).max(), name


def test_fp32_extraction_runs_without_tf32(phantom_manifest, tiny_encoder_spec, tmp_path):
    from embedcache.encoders import build_encoder

    encoder = build_encoder(tiny_encoder_spec)
    seen = []
    encode = encoder.encode

    def spy(pixels):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return encode(pixels)

    encoder.encode = spy
    before = torch.backends.cudnn.allow_tf32
    _extract(phantom_manifest, encoder, tmp_path / "s.zarr", device="cuda", precision="fp32")
    assert seen and set(seen) == {(False, False)}
    assert torch.backends.cudnn.allow_tf32 == before  # restored


def test_extraction_batches_arrive_pinned(phantom_manifest, tiny_encoder_spec):
    from torch.utils.data import DataLoader

    from embedcache.encoders import build_encoder
    from embedcache.extract.batches import CohortImages, collate
    from embedcache.intake import load_manifest

    prepare = build_encoder(tiny_encoder_spec).preprocessing.prepare
    images = CohortImages(load_manifest(phantom_manifest).paths[:8], prepare)
    loader = DataLoader(images, batch_size=4, num_workers=2, collate_fn=collate, pin_memory=True)
    batches = list(loader)
    assert batches and all(batch.pixels.is_pinned() for batch in batches)


def test_segmentation_head_under_cuda_bf16_matches_fp32_with_outlier_channels():
    from test_gpu_readiness import _outlier_head, _reference_scores

    for ratio in (0, 20, 100):
        head, grids = _outlier_head(ratio, 2, [(16, 16, 768), (8, 8, 768)])
        grids = [g.half() for g in grids]  # as stored; the reference sees the same values
        reference = _reference_scores(head, [g.float() for g in grids])
        head = head.cuda()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            scores = head([g.cuda() for g in grids]).double().cpu()
        error = (scores - reference).abs()
        assert error.mean() < 1e-2 and error.max() < 5e-2, (ratio, error.mean(), error.max())


@pytest.mark.parametrize("grid", ["grid16", "grid16+grid32"])
def test_segmentation_probe_on_cuda_finds_what_the_cpu_finds(grid):
    from test_probes_segmentation import planted

    from probes.segmentation.metrics import dice_iou
    from probes.segmentation.probe import SegmentationProbe

    grid16, grid32, masks = planted(160)
    # Channels far from zero mean, as ViT grids have: the bf16 path must not lose them.
    grid16 = (grid16.astype(np.float32) + 40.0).astype(np.float16)
    grid32 = (grid32.astype(np.float32) + 40.0).astype(np.float16)
    arrays = (grid16, grid32) if "+" in grid else (grid16,)
    train, test = np.arange(120), np.arange(120, 160)
    dice = {}
    for device in ("cpu", "cuda"):
        probe = SegmentationProbe(
            grid=grid, lr=3e-2, max_epochs=25, batch_size=16, device=device, amp=True
        )
        probe.fit(tuple(a[train] for a in arrays), masks[train])
        predicted = probe.predict(tuple(a[test] for a in arrays))
        dice[device] = dice_iou(predicted, masks[test])[0].mean()
    assert dice["cuda"] > 0.8 and abs(dice["cuda"] - dice["cpu"]) < 0.05, dice


def test_linear_probe_torch_backend_on_cuda_matches_the_cpu():
    from sklearn.metrics import roc_auc_score

    from probes.linear.probe import LinearProbe

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 256)).astype(np.float32) + 30.0  # large means, as ViT
    y = (X[:, :8].sum(1) - 240.0 + rng.normal(0, 2, len(X)) > 0).astype(int)
    fitted = {
        device: LinearProbe(C=1.0, backend="torch", device=device).fit(X[:1500], y[:1500])
        for device in ("cpu", "cuda")
    }
    p_cpu, p_cuda = (fitted[d].predict_proba(X[1500:])[:, 1] for d in ("cpu", "cuda"))
    np.testing.assert_allclose(p_cuda, p_cpu, atol=5e-3)
    auroc = {d: roc_auc_score(y[1500:], p) for d, p in (("cpu", p_cpu), ("cuda", p_cuda))}
    assert abs(auroc["cuda"] - auroc["cpu"]) < 2e-3, auroc


def test_finetune_on_cuda_resumes_close_to_an_uninterrupted_run(tiny_encoder_spec, tmp_path):
    from test_finetune_run import bar_cohort

    from probes.finetune import FinetuneConfig, finetune
    from probes.finetune import checkpoint as ckpt

    manifest = bar_cohort(tmp_path / "bars", 40, seed=1)
    settings = dict(
        labels=["target"],
        config=FinetuneConfig(encoder_lr=3e-3, head_lr=3e-3, max_epochs=2, batch_size=8),
        rounds=[0],
        device="cuda",
        num_workers=2,
        n_boot=20,
        progress=False,
    )
    reference = finetune(manifest, tiny_encoder_spec, tmp_path / "reference", **settings)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(round_index, epoch, record):
        if epoch == 0:
            raise Stop

    out = tmp_path / "interrupted"
    with pytest.raises(Stop):
        finetune(manifest, tiny_encoder_spec, out, on_epoch=stop_after_first_epoch, **settings)
    state = ckpt.load_state(ckpt.round_dir(out, 0) / "last.pt")
    assert isinstance(state["rng"][0]["cuda"], torch.Tensor)  # this GPU's state only
    resumed = finetune(manifest, tiny_encoder_spec, out, **settings)
    assert resumed.rounds[0]["resumed_from"] == 1
    # Not bit-identical on CUDA (atomics in the backward pass): close.
    assert resumed.predictions["image_id"].tolist() == reference.predictions["image_id"].tolist()
    got, want = (run.predictions["score"].to_numpy() for run in (resumed, reference))
    np.testing.assert_allclose(got, want, atol=2e-2)
