"""probes.finetune, piece by piece: the optimiser's parameter groups, encoder weights that move
under fine-tuning and never under probing, the probes' own heads, gradient checkpointing, early
stopping, the per-process row plan, augmentation and atomic checkpoints."""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import re
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import transformers
from helpers import save_tiny_segformer

from embedcache.encoders import build_encoder
from embedcache.extract import extract
from embedcache.extract.batches import CohortImages
from embedcache.intake import load_manifest
from probes.core.features import FeatureSet
from probes.finetune import FinetuneConfig, default_encoder_lr, finetune
from probes.finetune import checkpoint as ckpt
from probes.finetune.augment import augment_batch
from probes.finetune.data import Plan, eval_batches, train_batches
from probes.finetune.model import build_model, enable_gradient_checkpointing
from probes.finetune.optim import encoder_depths, make_optimizer
from probes.finetune.train import EarlyStopping
from probes.linear.probe import LinearProbe
from probes.segmentation.head import _LinearGridHead
from probes.segmentation.masks import load_masks
from probes.segmentation.probe import SegmentationProbe

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def encoder(tiny_encoder_spec):
    return build_encoder(tiny_encoder_spec)


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    return save_tiny_segformer(tmp_path_factory.mktemp("segformer"))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_probes_import_no_model_library():
    code = (
        "import sys; from probes.cli import build_parser; build_parser(); "
        "import probes.finetune.run, probes.finetune.train, probes.finetune.segformer_head; "
        "print(sorted(m for m in ('transformers', 'timm', 'open_clip') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- parameter groups ---------------------------------------------------------------------------


def test_parameter_groups_carry_the_configured_learning_rates(encoder):
    model = build_model(copy.deepcopy(encoder), "classification", n_outputs=2, seed=0)
    config = FinetuneConfig(encoder_lr=3e-5, head_lr=2e-3, weight_decay=0.05)
    optimizer = make_optimizer(model, config, encoder.preprocessing.input_size)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["encoder", "head"]
    assert groups["encoder"]["lr"] == 3e-5 and groups["head"]["lr"] == 2e-3
    assert all(g["weight_decay"] == 0.05 for g in optimizer.param_groups)
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["encoder"] == {id(p) for p in model.encoder.parameters()}
    assert ids["head"] == {id(p) for p in model.head.parameters()}
    assert len(ids["encoder"]) > 10 and len(ids["head"]) == 2


def test_encoder_lr_zero_freezes_the_encoder(encoder):
    model = build_model(copy.deepcopy(encoder), "classification", n_outputs=1, seed=0)
    optimizer = make_optimizer(model, FinetuneConfig(encoder_lr=0.0), 56)
    assert [g["name"] for g in optimizer.param_groups] == ["head"]
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_layer_decay_follows_execution_order(encoder, segformer_dir):
    # DINOv2: embeddings < layer.0 < layer.1 (the deepest, at encoder_lr).
    depths = encoder_depths(encoder, 56)
    assert depths["model.embeddings.cls_token"] == 0
    assert depths["model.embeddings.patch_embeddings.projection.weight"] == 0
    assert depths["model.encoder.layer.0.attention.q_proj.weight"] == 1
    assert depths["model.encoder.layer.1.mlp.fc1.weight"] == 2
    assert depths["model.layernorm.weight"] == 2  # after the last block: its depth
    model = build_model(copy.deepcopy(encoder), "classification", n_outputs=1, seed=0)
    config = FinetuneConfig(encoder_lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    groups = {g["name"]: g["lr"] for g in make_optimizer(model, config, 56).param_groups}
    assert groups == pytest.approx(
        {"encoder.depth0": 2.5e-4, "encoder.depth1": 5e-4, "encoder.depth2": 1e-3, "head": 1e-2}
    )

    # SegFormer: per stage its patch embedding, its block, its norm, in the order they run.
    segformer = build_encoder("segformer-b4", weights=str(segformer_dir))
    depths = encoder_depths(segformer, 512)
    stages = [
        [
            depths[f"model.stages.{i}.patch_embeddings.proj.weight"],
            depths[f"model.stages.{i}.blocks.0.attention.q_proj.weight"],
            depths[f"model.stages.{i}.layer_norm.weight"],
        ]
        for i in range(4)
    ]
    assert stages == [[0, 1, 1], [1, 2, 2], [2, 3, 3], [3, 4, 4]]

    # Execution order, not registration order: a module that registers its final norm first.
    class Backwards(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(4)
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
            self.embed = torch.nn.Linear(3, 4)

        def forward(self, pixels):
            x = self.embed(pixels.mean((2, 3)))
            for block in self.blocks:
                x = block(x)
            return self.norm(x)

    depths = encoder_depths(Backwards(), 8)
    assert [
        depths[f"{m}.weight"] for m in ("embed", "blocks.0", "blocks.1", "blocks.2", "norm")
    ] == [
        0,
        1,
        2,
        3,
        3,
    ]


def test_default_encoder_learning_rates():
    assert default_encoder_lr("hf-dinov2", "classification") == 1e-7  # the reference
    assert default_encoder_lr("timm-swin", "segmentation") == 1e-7
    assert default_encoder_lr("hf-segformer", "classification") == 1e-6
    assert default_encoder_lr("hf-segformer", "segmentation") == 1e-5
    cfg = FinetuneConfig(task="segmentation").resolved("hf-segformer")
    assert cfg.encoder_lr == 1e-5 and cfg.head_lr == 1e-4 and cfg.weight_decay == 1e-2
    assert FinetuneConfig(encoder_lr=3e-4).resolved("hf-segformer").encoder_lr == 3e-4


# -- encoder weights move under fine-tuning, never under probing --------------------------------


@pytest.mark.parametrize(
    "target",
    [{"labels": ["cardiomegaly"]}, {"mask": "heart_mask"}],
    ids=["classification", "segmentation"],
)
def test_encoder_weights_change_under_finetuning_and_stay_when_frozen(
    target, phantom_manifest, tiny_encoder_spec, tmp_path
):
    pristine = _state(build_encoder(tiny_encoder_spec))
    trained = {}
    for encoder_lr in (1e-3, 0.0):
        out = tmp_path / f"lr{encoder_lr}"
        finetune(
            phantom_manifest,
            tiny_encoder_spec,
            out,
            config=FinetuneConfig(encoder_lr=encoder_lr, head_lr=1e-2, max_epochs=2, batch_size=4),
            rounds=[0],
            num_workers=0,
            num_threads=1,
            progress=False,
            n_boot=10,
            **target,
        )
        state = ckpt.load_state(ckpt.round_dir(out, 0) / "best.pt")["model"]
        trained[encoder_lr] = state
        encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if "encoder." in k}
        assert encoder_state.keys() == pristine.keys()
        changed = [k for k in pristine if not torch.equal(pristine[k], encoder_state[k])]
        if encoder_lr:
            # Every trained weight matrix moved (layer norms, attention, MLP, patch embedding).
            weights = [k for k in pristine if k.endswith("weight") and "mask_token" not in k]
            assert set(weights) <= set(changed), sorted(set(weights) - set(changed))[:5]
        else:
            assert changed == []
    # The heads trained in both runs (parameters only: the grid head's buffers are constants).
    heads = [
        {k: v for k, v in s.items() if re.match(r"head\.(linear|probe)\.(weight|bias)", k)}
        for s in trained.values()
    ]
    assert heads[0] and all(not torch.equal(heads[1][k], heads[0][k]) for k in heads[0])


def test_extraction_and_probing_never_change_encoder_weights(
    phantom_manifest, tiny_encoder_spec, tmp_path
):
    encoder = build_encoder(tiny_encoder_spec)
    before = _state(encoder)
    flags = [p.requires_grad for p in encoder.parameters()]
    store = tmp_path / "s.zarr"
    extract(phantom_manifest, encoder, store, num_workers=0, progress=False, log=lambda *_: None)
    fs = FeatureSet.open(store, phantom_manifest)
    LinearProbe().fit(fs.load(), fs.labels("cardiomegaly"))
    grids = FeatureSet.open(store, phantom_manifest, feature="grid16")
    masks = load_masks(grids, "heart_mask", (16, 16))
    SegmentationProbe(max_epochs=2, device="cpu", early_stopping=False).fit(grids, masks)
    _assert_identical(before, _state(encoder))
    assert [p.requires_grad for p in encoder.parameters()] == flags


# -- the probes' heads --------------------------------------------------------------------------


def test_heads_are_the_probes_heads(encoder):
    cls = build_model(copy.deepcopy(encoder), "classification", n_outputs=3, seed=11)
    torch.manual_seed(11)
    reference = torch.nn.Linear(encoder.global_dim, 3)  # how the reference head starts
    _assert_identical(_state(cls.head.linear), _state(reference))

    seg = build_model(
        copy.deepcopy(encoder), "segmentation", n_outputs=2, seed=5, mask_shape=(16, 16)
    )
    probe_head = _LinearGridHead([(4, 4, 32)], 2, (16, 16), True, torch.Generator().manual_seed(5))
    assert type(seg.head.probe) is _LinearGridHead and seg.head.levels == (16,)
    _assert_identical(_state(seg.head.probe), _state(probe_head))
    grids = torch.randn(2, 4, 4, 32, requires_grad=True)
    scores = seg.head.probe([grids])
    with torch.no_grad():  # the probe's CPU path (chunked products) on frozen grids
        frozen = probe_head([grids.detach()])
    torch.testing.assert_close(scores, frozen, rtol=0, atol=1e-5)
    scores.sum().backward()  # and the gradient reaches the grids (the encoder)
    assert grids.grad is not None and grids.grad.abs().sum() > 0


def test_segformer_decode_head_starts_from_the_checkpoint(segformer_dir, encoder):
    segformer = build_encoder("segformer-b4", weights=str(segformer_dir))
    model = build_model(
        segformer, "segmentation", n_outputs=2, seed=0, mask_shape=(128, 128), seg_head="segformer"
    )
    head = model.head
    assert head.weights_from == "checkpoint"
    saved = transformers.SegformerForSemanticSegmentation.from_pretrained(segformer_dir)
    for name in ("linear_fuse.weight", "linear_projections.0.proj.weight", "batch_norm.bias"):
        torch.testing.assert_close(
            head.decode.get_parameter(name), saved.decode_head.get_parameter(name), rtol=0, atol=0
        )
    assert head.decode.classifier.out_channels == 2  # resized from the checkpoint's 150
    scores = model.train()(torch.rand(2, 1, 512, 512, generator=torch.Generator().manual_seed(0)))
    assert scores.shape == (2, 1, 128, 128)  # logit difference at stride 4
    scores.square().mean().backward()
    stage1 = model.encoder.model.stages[0].blocks[0].mlp.fc1.weight
    assert stage1.grad is not None and stage1.grad.abs().sum() > 0  # stride-4 stage trains too
    with pytest.raises(ValueError, match="needs a SegFormer encoder"):
        build_model(
            copy.deepcopy(encoder),
            "segmentation",
            n_outputs=2,
            seed=0,
            mask_shape=(16, 16),
            seg_head="segformer",
        )


def test_gradient_checkpointing_gives_the_same_gradients(encoder):
    plain = build_model(copy.deepcopy(encoder), "classification", n_outputs=1, seed=0).train()
    checkpointed = copy.deepcopy(plain)
    assert enable_gradient_checkpointing(checkpointed.encoder) == ["model"]
    pixels = torch.rand(3, 1, 56, 56, generator=torch.Generator().manual_seed(0))
    calls = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        layer = model.encoder.model.encoder.layer[0].mlp  # inside the checkpointed forward
        hook = layer.register_forward_hook(
            lambda *_, name=name: calls.update({name: calls.get(name, 0) + 1})
        )
        model(pixels).square().sum().backward()
        hook.remove()
    assert calls == {"plain": 1, "checkpointed": 2}  # recomputed in the backward pass
    for (name, a), (_, b) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        if a.grad is None:
            assert b.grad is None, name
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="no sub-module offering activation checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


# -- early stopping, row plans, augmentation, checkpoints ---------------------------------------


def test_early_stopping_is_the_reference_rule():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    losses = [1.0, 0.95, 0.85, 0.84, 0.83]  # 0.95: best but no min_delta gain
    best = [stopper.update(e, v) for e, v in enumerate(losses) if not stopper.stopped]
    assert best == [True, True, True, True, True] and stopper.best_epoch == 4
    assert stopper.stopped  # 0.84 and 0.83 are not 0.1 below 0.85
    stopper = EarlyStopping(patience=2, min_delta=0.0)
    for e, v in enumerate([1.0, 0.5, 0.7, 0.6]):
        stopper.update(e, v)
    assert stopper.stopped and stopper.best_epoch == 1
    restored = EarlyStopping(2, 0.0)
    restored.load_state_dict(stopper.state_dict())
    assert restored == stopper


def test_row_plans_split_the_rows_between_processes(phantom_manifest):
    manifest = load_manifest(phantom_manifest)
    images = CohortImages(manifest.paths, lambda image: torch.zeros(1, 4, 4))
    rows = np.arange(1, len(manifest), 2)
    seen = []
    for rank in range(3):
        plan = Plan(world_size=3, rank=rank, batch_size=2)
        seen += [r for batch in eval_batches(images, rows, plan) for r in batch.rows]
    assert sorted(seen) == rows.tolist()  # every row once, none repeated

    def epoch_rows(epoch, world_size, rank):
        plan = Plan(world_size=world_size, rank=rank, batch_size=3, seed=7)
        return [r for b in train_batches(images, rows, plan, epoch) for r in b.rows]

    assert sorted(epoch_rows(0, 1, 0)) == rows.tolist()
    assert epoch_rows(0, 1, 0) == epoch_rows(0, 1, 0)  # seeded
    assert epoch_rows(0, 1, 0) != epoch_rows(1, 1, 0)  # reshuffled each epoch
    two = epoch_rows(0, 2, 0) + epoch_rows(0, 2, 1)
    assert set(two) == set(rows.tolist()) and len(two) == 2 * -(-len(rows) // 2)


def test_augmentation_is_seeded_and_masks_follow_the_pixels():
    pixels = torch.zeros(4, 1, 64, 64)
    pixels[:, :, 20:40, 24:44] = 1.0
    masks = pixels[:, 0] > 0.5
    a = augment_batch(pixels, masks, torch.Generator().manual_seed(1))
    b = augment_batch(pixels, masks, torch.Generator().manual_seed(1))
    c = augment_batch(pixels, masks, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    moved, moved_masks = a
    assert moved_masks.dtype == torch.bool and moved.shape == pixels.shape
    assert not torch.equal(moved_masks, masks)
    bright = moved[:, 0] > moved[:, 0].mean(dim=(1, 2), keepdim=True) + 0.3
    overlap = (bright & moved_masks).sum((1, 2)) / (bright | moved_masks).sum((1, 2))
    assert bool((overlap > 0.85).all()), overlap


def test_checkpoints_are_atomic_and_hold_tensors_only(tmp_path):
    folder = ckpt.round_dir(tmp_path, 2)
    path = ckpt.save_atomic({"model": {"w": torch.arange(3.0)}, "epoch": 4}, folder / "last.pt")
    assert ckpt.load_state(path)["epoch"] == 4
    stale = folder / f".last.pt.123{ckpt.TMP_SUFFIX}"
    stale.write_bytes(b"half a file")
    assert ckpt.clear_partial(folder) == [stale] and not stale.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]
    evil = folder / "evil.pt"
    torch.save({"args": argparse.Namespace(a=1)}, evil)  # an object: refused by weights_only
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_state(evil)
