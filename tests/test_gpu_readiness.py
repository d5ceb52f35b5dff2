"""GPU readiness, shown on the CPU: each defect that would give wrong numbers, crash or waste GPU
time on the first CUDA run, reproduced here where the CPU can show it (bf16 autocast exists on
CPU; pinning, clock placement, RNG capture and the cuML attribute are checked through fakes).
The same paths on a real GPU are in test_gpu.py, which runs only when CUDA is present."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedcache.extract.batches import Batch, collate
from embedcache.extract.runner import (
    MAX_DECODE_WORKERS,
    default_workers,
    exact_fp32,
    key_material,
    resolve_device,
)
from embedcache.store.layout import encoder_key
from probes.finetune import checkpoint as ckpt
from probes.segmentation.head import _LinearGridHead

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load_benchmark(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the default suite stays on the CPU (tests/conftest.py) -------------------------------------


def test_the_default_suite_runs_on_the_cpu_even_on_a_gpu_host():
    if os.environ.get("EMBEDCACHE_TEST_GPU") == "1":
        pytest.skip("the GPU module's session (EMBEDCACHE_TEST_GPU=1) may see the GPU")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available()
    assert resolve_device("auto").type == "cpu"


# -- (1) segmentation head under bf16 autocast ---------------------------------------------------


def _outlier_head(ratio: float, n_classes: int, shapes, seed: int = 0):
    """A head whose standardisation statistics are those of features with channel means of
    ``ratio`` standard deviations (ViT grids have such channels), and such features."""
    gen = torch.Generator().manual_seed(seed)
    head = _LinearGridHead(shapes, n_classes, (32, 32), True, gen)
    grids = []
    for g, (h, w, c) in enumerate(shapes):
        sd = torch.rand(c, generator=gen) + 0.5
        mean = ratio * sd * torch.where(torch.rand(c, generator=gen) < 0.5, -1.0, 1.0)
        getattr(head, f"mean{g}").copy_(mean)
        getattr(head, f"scale{g}").copy_(1 / sd)
        grids.append(torch.randn(4, h, w, c, generator=gen) * sd + mean)
    return head, grids


def _reference_scores(head, grids) -> torch.Tensor:
    """The head's scores in float64 from standardised features (no fold, no bf16)."""
    total = 0
    for g, x in enumerate(grids):
        z = (x.double() - getattr(head, f"mean{g}").double()) * getattr(head, f"scale{g}").double()
        weight = head.weight[g].detach().double()
        z = z @ (weight[1:] - weight[:1] if head.binary else weight).T
        if g:
            base = grids[0].shape[1:3]
            z = F.interpolate(z.permute(0, 3, 1, 2), size=base, mode="bilinear", align_corners=True)
            z = z.permute(0, 2, 3, 1)
        total = total + z
    bias = head.bias.detach().double()
    total = (total + (bias[1:] - bias[:1] if head.binary else bias)).permute(0, 3, 1, 2)
    return F.interpolate(total, size=(32, 32), mode="bilinear", align_corners=True)


@pytest.mark.parametrize("ratio", [0, 5, 20, 100])
@pytest.mark.parametrize(
    "n_classes, shapes",
    [(2, [(8, 8, 768)]), (3, [(8, 8, 768)]), (2, [(8, 8, 768), (4, 4, 768)])],
    ids=["binary", "three-class", "two-grids"],
)
def test_segmentation_head_under_bf16_autocast_matches_fp32_with_outlier_channels(
    ratio, n_classes, shapes
):
    head, grids = _outlier_head(ratio, n_classes, shapes)
    with torch.no_grad():
        reference = _reference_scores(head, grids)
        fp32 = head(grids)  # the CPU path: standardisation folded into the weights
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = head(grids)
    assert amp.dtype == torch.float32 and amp.shape == fp32.shape
    assert (fp32.double() - reference).abs().max() < 1e-3
    error = (amp.double() - reference).abs()
    # Before standardising in float32 first: 0.003 mean error at ratio 0, 0.26 at 100.
    assert error.mean() < 1e-2 and error.max() < 5e-2, (error.mean(), error.max())


def test_segmentation_head_under_autocast_keeps_gradients_for_fine_tuning():
    """The fine-tune path (grids that require grad) standardises in float32 as well and
    still returns gradients for the grids and the head."""
    head, grids = _outlier_head(100, 2, [(8, 8, 768)])
    x = grids[0].requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = head([x])
    error = (scores.detach().double() - _reference_scores(head, [x.detach()])).abs()
    assert error.mean() < 1e-2
    scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert head.weight[0].grad is not None and head.bias.grad is not None


# -- (2) the benchmark's bare-forward clock ------------------------------------------------------


def test_bare_forward_reads_the_clock_only_after_the_device_sync():
    bench = _load_benchmark("extraction")
    events: list[str] = []

    def encoder(batch):
        events.append(f"forward {len(batch)}")

    def clock() -> float:
        events.append("clock")
        return float(len(events))

    bench.bare_forward(encoder, torch.zeros(5, 1, 4, 4), 2, lambda: events.append("sync"), clock)
    assert events == [
        "sync",
        "clock",
        "forward 2",
        "forward 2",
        "forward 1",
        "sync",  # queued kernels finish inside the timed span
        "clock",
    ]
    assert bench.device_sync(torch.device("cuda")) is torch.cuda.synchronize


# -- (3) fp32 means fp32 on CUDA, and the key says where the numbers came from -------------------


def test_fp32_extraction_on_cuda_turns_tf32_off_and_restores_it():
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.allow_tf32 = True  # cuDNN's default
        torch.set_float32_matmul_precision("high")  # a user's TF32 matmuls
        with exact_fp32(torch.device("cuda"), "fp32"):
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
        for device, precision in (("cuda", "bf16"), ("cpu", "fp32")):
            with exact_fp32(torch.device(device), precision):
                assert torch.backends.cudnn.allow_tf32  # untouched
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


class _KeyedEncoder:
    preset = types.SimpleNamespace(name="p")

    def key_material(self) -> dict:
        return {"preset": "p", "weights": {"random_init": 0}}


def test_the_store_key_records_the_device_off_the_cpu_only():
    enc = _KeyedEncoder()
    cpu = key_material(enc, "fp32", "float16", torch.device("cpu"))
    cuda = key_material(enc, "fp32", "float16", torch.device("cuda", 1))
    # CPU stores keep the key they always had; a GPU run never resumes a CPU group.
    assert cpu == {
        "preset": "p",
        "weights": {"random_init": 0},
        "precision": "fp32",
        "dtype": "float16",
    }
    assert cuda == {**cpu, "device": "cuda"}
    assert encoder_key("p", cpu) != encoder_key("p", cuda)
    # The fine-tune records the key extraction gives on its device (rows line up with probes').
    from probes.finetune.run import store_key

    assert store_key(enc, "fp32") == encoder_key("p", cpu)
    cuda_bf16 = key_material(enc, "bf16", "float16", torch.device("cuda"))
    assert store_key(enc, "bf16", torch.device("cuda", 0)) == encoder_key("p", cuda_bf16)


# -- (4) cuML's iteration count ------------------------------------------------------------------


def _fake_cuml(monkeypatch, n_iter: int | None, num_iters: int | None):
    class LogisticRegression:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def fit(self, X, y):
            self.coef_ = np.ones((1, X.shape[1]))
            self.intercept_ = np.zeros(1)
            if n_iter is not None:  # cuML >= 25.08
                self.n_iter_ = np.array([n_iter])
            if num_iters is not None:  # earlier releases: only the QN solver counts
                self.solver_model = types.SimpleNamespace(num_iters=num_iters)
            return self

    cuml = types.ModuleType("cuml")
    linear_model = types.ModuleType("cuml.linear_model")
    linear_model.LogisticRegression = LogisticRegression
    cuml.linear_model = linear_model
    cupy = types.ModuleType("cupy")
    cupy.asarray = np.asarray
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.linear_model", linear_model)
    monkeypatch.setitem(sys.modules, "cupy", cupy)


@pytest.mark.parametrize(
    "n_iter, num_iters, expected, converged",
    [(7, None, 7, True), (None, 9, 9, True), (None, 1000, 1000, False), (None, None, -1, False)],
    ids=["new-cuml", "old-cuml", "old-cuml-max-iter", "no-count"],
)
def test_cuml_iterations_are_read_from_every_release(
    monkeypatch, n_iter, num_iters, expected, converged
):
    from probes.linear.backends import cuml_backend

    _fake_cuml(monkeypatch, n_iter, num_iters)
    X, Y = np.zeros((6, 3), np.float32), np.array([[0, 1, 0, 1, 0, 1]]).T
    (path,) = cuml_backend.fit_paths(X, Y, np.array([0.1, 1.0]), max_iter=1000)
    assert path.n_iter.tolist() == [expected, expected]
    assert path.converged.tolist() == [converged, converged]


# -- (5) torchrun coordination without the object collectives ------------------------------------

_RANKS_CHILD = textwrap.dedent(
    """
    import torch.distributed as dist
    from embedcache.extract.distributed import Ranks, rank_from_env

    def refuse(*args, **kwargs):
        raise AssertionError("object collectives (pickle, weights_only) are not to be used")

    dist.broadcast_object_list = dist.all_gather_object = refuse
    info = rank_from_env()
    with Ranks(info, __import__("torch").device("cpu")) as ranks:
        shared = ranks.share({"pending": list(range(1000)), "note": "é"} if ranks.is_main else None)
        assert shared == {"pending": list(range(1000)), "note": "é"}, shared
        got = ranks.gather({"rank": info.rank, "text": "x" * (5 + 300 * info.rank)})
        assert got == [{"rank": r, "text": "x" * (5 + 300 * r)} for r in range(2)], got
        ranks.barrier()
    open(f"ok-{info.rank}", "w").close()  # (stdout of two ranks interleaves)
    """
)


def test_ranks_share_and_gather_over_tensor_collectives_only(tmp_path):
    from test_distributed_extract import run_torchrun

    script = tmp_path / "ranks_child.py"
    script.write_text(_RANKS_CHILD)
    proc = run_torchrun(2, [str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ok-0").exists() and (tmp_path / "ok-1").exists()


# -- (8) fine-tune RNG state: the training device only -------------------------------------------


def test_checkpoint_rng_holds_the_training_gpu_only_and_resumes_on_fewer_gpus(monkeypatch):
    calls: list[tuple] = []
    states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(4)}

    def get_rng_state(device="cuda"):
        calls.append(("get", torch.device(device).index))
        return states[torch.device(device).index]

    def set_rng_state(state, device="cuda"):
        calls.append(("set", torch.device(device).index, int(state[0])))

    def refuse(*args):
        raise AssertionError("every visible GPU's state was touched")

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    state = ckpt.rng_state(torch.device("cuda", 2))
    assert torch.equal(state["cuda"], states[2]) and calls == [("get", 2)]
    cpu_before = torch.get_rng_state()
    ckpt.set_rng_state(state, torch.device("cuda", 0))  # resumed where one GPU is visible
    assert calls[-1] == ("set", 0, 2) and torch.equal(torch.get_rng_state(), cpu_before)
    # A checkpoint of the previous version (every visible GPU's state, here four): the entry of
    # the training device is restored; a device it did not have is left alone.
    old = {"cpu": cpu_before, "cuda": [states[i] for i in range(4)]}
    ckpt.set_rng_state(old, torch.device("cuda", 1))
    assert calls[-1] == ("set", 1, 1)
    ckpt.set_rng_state({**old, "cuda": old["cuda"][:1]}, torch.device("cuda", 3))
    assert calls[-1] == ("set", 1, 1)
    assert ckpt.rng_state("cpu").keys() == {"cpu"}  # CPU training: no CUDA state at all


# -- (9) pinned batches ---------------------------------------------------------------------------


def test_extraction_batches_are_pinned_by_the_dataloader(monkeypatch):
    from torch.utils.data._utils.pin_memory import pin_memory  # the DataLoader's pin step

    pinned: list[torch.Tensor] = []

    def fake_pin(self, *args):  # pinning needs an accelerator; record what would be pinned
        out = self.clone()
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = collate(
        [(0, torch.ones(1, 4, 4), None), (1, None, "broken"), (2, torch.zeros(1, 4, 4), None)]
    )
    out = pin_memory(batch)
    assert isinstance(out, Batch) and len(pinned) == 1 and out.pixels is pinned[0]
    assert out.rows == [0, 2] and out.failed == [(1, "broken")]
    assert torch.equal(out.pixels, batch.pixels)
    empty = collate([(3, None, "broken")])
    assert pin_memory(empty) is empty and len(pinned) == 1


# -- (10) no blocking copy per forward -----------------------------------------------------------


def test_encoder_normalisation_is_made_once_per_device_and_survives_inference_mode(
    tiny_encoder_spec, offline
):
    from embedcache.encoders import build_encoder

    encoder = build_encoder(tiny_encoder_spec)
    size = encoder.preprocessing.input_size
    pixels = torch.rand(2, 1, size, size)
    with torch.inference_mode():  # extraction asks first
        expected = encoder(pixels).embedding.clone()
    first = encoder._normalisation(pixels.device, pixels.dtype)
    assert encoder._normalisation(pixels.device, pixels.dtype) is first  # no new copy
    mean = torch.tensor(encoder.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.preprocessing.std).view(1, 3, 1, 1)
    assert torch.equal(first[0], mean) and torch.equal(first[1], std)
    # Then fine-tuning: the cached tensors must not be inference tensors (saved for backward).
    pixels.requires_grad_(True)
    out = encoder(pixels).embedding
    out.sum().backward()
    assert pixels.grad is not None
    assert torch.allclose(out.detach(), expected, atol=1e-6)


# -- (11) decode workers -------------------------------------------------------------------------


def test_default_decode_workers_use_the_host_up_to_the_measured_cap():
    assert default_workers(1, cores=2) == 1
    assert default_workers(1, cores=16) == 15  # a 16-core GPU host: all cores but one
    assert default_workers(4, cores=16) == 3  # four ranks share the node
    assert default_workers(1, cores=128) == MAX_DECODE_WORKERS


def test_phantom_cohorts_made_in_parallel_are_the_same_bytes(tmp_path):
    from embedcache.phantoms import CohortSpec, make_cohort

    spec = CohortSpec(n_patients=3, images_per_patient=(1, 2), size=48)
    serial = make_cohort(tmp_path / "serial", spec).parent
    parallel = make_cohort(tmp_path / "parallel", spec, workers=2).parent
    files = sorted(p.relative_to(serial) for p in serial.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(parallel) for p in parallel.rglob("*") if p.is_file())
    for name in files:
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name


# -- (6) the GPU check script ---------------------------------------------------------------------


def test_gpu_check_makes_its_cohort_before_the_timed_steps():
    script = (BENCHMARKS / "gpu_check.sh").read_text()
    made = script.index("make_cohort(")
    timed = [line for line in script.splitlines() if line.lstrip().startswith("timeout ")]
    assert timed and all(script.index(line) > made for line in timed)
    assert "--manifest" in script and "workers=" in script
    result = subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_check.sh")], capture_output=True)
    assert result.returncode == 0, result.stderr


# -- (5) gradient checkpointing is non-reentrant (DDP with unused parameters needs it) -----------


@pytest.mark.parametrize(
    "spec, weights",
    [(None, None), ("timm:vit_tiny_patch16_224", "none")],
    ids=["transformers", "timm"],
)
def test_gradient_checkpointing_is_non_reentrant(
    monkeypatch, spec, weights, tiny_encoder_spec, offline
):
    """Reentrant checkpointing (torch's default when ``use_reentrant`` is not passed, as in timm
    < 1.0.13 and open_clip < 2.32) breaks under DDP with ``find_unused_parameters``: every
    family's checkpointing must take torch's non-reentrant path."""
    import torch.utils.checkpoint as checkpointing

    from embedcache.encoders import build_encoder
    from probes.finetune.model import build_model, enable_gradient_checkpointing

    reentrant = checkpointing.CheckpointFunction.apply  # checkpoint() looks it up at call time

    def refuse(*args):
        raise AssertionError("reentrant checkpointing")

    monkeypatch.setattr(checkpointing.CheckpointFunction, "apply", refuse)
    assert reentrant is not refuse
    encoder = build_encoder(spec or tiny_encoder_spec, weights)
    model = build_model(encoder, "classification", n_outputs=1, seed=0).train()
    enable_gradient_checkpointing(model.encoder)
    name, block = next(
        (n, m) for n, m in model.encoder.named_modules() if re.search(r"\.(layer|blocks)\.0$", n)
    )
    first = next(m for m in block.modules() if not list(m.children()))  # e.g. its norm1
    calls = []
    first.register_forward_hook(lambda *_: calls.append(name))
    size = encoder.preprocessing.input_size
    model(torch.rand(1, 1, size, size)).sum().backward()
    assert len(calls) == 2  # checkpointed: recomputed in the backward pass, not reentrantly
