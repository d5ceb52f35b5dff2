"""``probes finetune`` end to end: it beats the linear probe where a frozen random encoder is
blind, on the probes' own folds and prediction schema; SIGKILLed and resumed it ends with the
numbers of an uninterrupted run; segmentation, the SegFormer baseline and a two-process DDP run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import save_tiny_segformer
from PIL import Image

from embedcache.encoders import build_encoder
from embedcache.extract import extract
from probes.cli import main
from probes.core.results import PREDICTION_COLUMNS, read_table
from probes.finetune import FinetuneConfig, finetune
from probes.finetune import checkpoint as ckpt
from probes.segmentation.run import PREDICTION_COLUMNS as SEGMENTATION_COLUMNS

pytestmark = pytest.mark.usefixtures("offline")

CHILD = Path(__file__).with_name("finetune_kill_child.py")


def bar_cohort(folder: Path, n: int, seed: int = 0, size: int = 56) -> Path:
    """PNG cohort with a planted local pattern: on noise, one bright bar (16 x 4 px) at a random
    place, horizontal in positives (``target`` 1), vertical in negatives. Both classes have the
    same bright area, so the global intensity says nothing; the bar's orientation is local."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    target = rng.permutation(np.arange(n) < n // 2).astype(int)
    rows = []
    for i in range(n):
        image = rng.normal(0.4, 0.08, (size, size))
        top, left = rng.integers(4, size - 20, 2)
        if target[i]:
            image[top + 6 : top + 10, left : left + 16] += 0.5
        else:
            image[top : top + 16, left + 6 : left + 10] += 0.5
        path = f"images/i{i:03d}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / path)
        rows.append({"image_id": f"i{i:03d}", "path": path, "patient_id": f"p{i:03d}"})
        rows[-1]["target"] = int(target[i])
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def bars(tmp_path_factory) -> Path:
    return bar_cohort(tmp_path_factory.mktemp("bars"), 160)


@pytest.fixture(scope="module")
def small_bars(tmp_path_factory) -> Path:
    return bar_cohort(tmp_path_factory.mktemp("small-bars"), 40, seed=1)


def _finetune_cli(manifest, encoder, out, *extra, quiet: bool = True) -> int:
    return main(
        [
            "finetune",
            str(manifest),
            "--encoder",
            str(encoder),
            "--out",
            str(out),
            "--workers",
            "0",
            "--threads",
            "1",
            "--n-boot",
            "20",
            *(["--quiet"] if quiet else []),
            *extra,
        ]
    )


def test_finetune_beats_the_linear_probe_on_the_same_folds(
    bars, tiny_encoder_dir, tiny_encoder_spec, tmp_path, capsys
):
    store = tmp_path / "s.zarr"
    extract(bars, tiny_encoder_spec, store, num_workers=0, progress=False, log=lambda *_: None)
    probe_out, ft_out = tmp_path / "probe", tmp_path / "ft"
    args = ["--label", "target", "--n-boot", "20", "--quiet"]
    assert (
        main(["linear", str(store), "--manifest", str(bars), "--out", str(probe_out), *args]) == 0
    )
    assert (
        _finetune_cli(
            bars,
            tiny_encoder_dir,  # a checkpoint folder: read as hf:<folder>
            ft_out,
            "--label",
            "target",
            "--encoder-lr",
            "3e-3",
            "--head-lr",
            "3e-3",
            "--batch-size",
            "8",
            "--epochs",
            "25",
        )
        == 0
    )
    screen = capsys.readouterr().out
    assert "fine-tune (encoder lr 0.003, head lr 0.003)" in screen and "AUROC median" in screen

    # The same folds, row for row, and the same prediction schema and encoder key.
    pd.testing.assert_frame_equal(
        pd.read_csv(probe_out / "folds.csv", dtype=str),
        pd.read_csv(ft_out / "folds.csv", dtype=str),
    )
    probe, tuned = (read_table(out / "predictions.parquet") for out in (probe_out, ft_out))
    assert list(tuned.columns) == list(probe.columns) == list(PREDICTION_COLUMNS)
    assert set(tuned["encoder"]) == set(probe["encoder"]) and set(tuned["probe"]) == {"finetune"}
    params = json.loads(tuned["params"].iat[0])
    assert (params["encoder_lr"], params["head_lr"]) == (3e-3, 3e-3)
    key = ["image_id", "round", "split"]
    rows = probe[key].merge(tuned[key], how="outer", indicator=True)
    assert (rows["_merge"] == "both").all()  # every probe row has its fine-tune row
    run = json.loads((ft_out / "run.json").read_text())
    assert run["probe"] == "finetune" and run["encoder_lr"] == 3e-3 and run["head_lr"] == 3e-3
    assert set(run["epochs_run"]) == set(run["best_epoch"]) == {"0", "1", "2", "3", "4"}

    # The frozen random encoder's global vector is blind to the bar's orientation; training it
    # end to end finds the bar.
    probe_auroc = pd.read_csv(probe_out / "results.csv")["auroc"].median()
    tuned_auroc = pd.read_csv(ft_out / "results.csv")["auroc"].median()
    assert probe_auroc < 0.7, probe_auroc
    assert tuned_auroc > 0.8 and tuned_auroc > probe_auroc + 0.25, (tuned_auroc, probe_auroc)


SETTINGS = {
    "labels": ["target"],
    "config": {"encoder_lr": 3e-3, "head_lr": 3e-3, "max_epochs": 5, "batch_size": 8},
    "rounds": [0, 1],
    "num_workers": 0,
    "num_threads": 1,
    "n_boot": 20,
    "progress": False,
}


def _run(manifest, spec, out):
    settings = {**SETTINGS, "config": FinetuneConfig(**SETTINGS["config"])}
    return finetune(manifest, spec, out, **settings)


@pytest.mark.parametrize(
    "points",
    [["epoch:1:2"], ["save:3", "epoch:0:3"]],
    ids=["after-epoch", "mid-write-then-after-epoch"],
)
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(
    points, small_bars, tiny_encoder_spec, tmp_path
):
    reference = _run(small_bars, tiny_encoder_spec, tmp_path / "reference")
    out = tmp_path / "killed"
    for point in points:
        proc = subprocess.run(
            [sys.executable, str(CHILD), str(small_bars), tiny_encoder_spec, str(out)]
            + [json.dumps(SETTINGS), point],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        if point.startswith("save"):  # half a file, under its temporary name only
            assert list(ckpt.round_dir(out, 0).glob(f".*{ckpt.TMP_SUFFIX}"))
    assert not (out / "predictions.parquet").exists()  # the run really was cut short
    resumed = _run(small_bars, tiny_encoder_spec, out)
    assert any(info["resumed_from"] for info in resumed.rounds)
    assert not list((out / "checkpoints").rglob(f"*{ckpt.TMP_SUFFIX}"))
    pd.testing.assert_frame_equal(resumed.predictions, reference.predictions)
    pd.testing.assert_frame_equal(resumed.results, reference.results)
    for ours, theirs in zip(resumed.rounds, reference.rounds, strict=True):
        assert ours["history"] == theirs["history"] and ours["best_epoch"] == theirs["best_epoch"]


def test_resume_refuses_the_checkpoints_of_another_run(small_bars, tiny_encoder_spec, tmp_path):
    config = FinetuneConfig(max_epochs=1, head_lr=1e-3)
    kwargs = dict(labels=["target"], rounds=[0], num_workers=0, progress=False, n_boot=10)
    finetune(small_bars, tiny_encoder_spec, tmp_path, config=config, **kwargs)
    with pytest.raises(ValueError, match=r"params.head_lr: 0.001 there, 0.01 now"):
        finetune(
            small_bars,
            tiny_encoder_spec,
            tmp_path,
            config=FinetuneConfig(max_epochs=1, head_lr=1e-2),
            **kwargs,
        )


def test_segmentation_end_to_end(phantom_manifest, tiny_encoder_spec, tmp_path, capsys):
    out = tmp_path / "seg"
    assert (
        _finetune_cli(
            phantom_manifest,
            tiny_encoder_spec,
            out,
            "--mask",
            "heart_mask",
            "--grid",
            "16+32",
            "--encoder-lr",
            "1e-4",
            "--head-lr",
            "1e-2",
            "--epochs",
            "2",
            "--rounds",
            "0",
            "--augment",
            "--class-weights",
            "1,2",
            "--save-masks",
            quiet=False,
        )
        == 0
    )
    screen = capsys.readouterr()
    assert "Dice" in screen.out
    # The progress bar: round, epochs, training and validation loss, validation Dice.
    assert "round 0" in screen.err and "2/2" in screen.err
    assert all(f"{name}=" in screen.err for name in ("train", "val", "val_dice"))
    predictions = read_table(out / "predictions.parquet")
    assert list(predictions.columns) == [*SEGMENTATION_COLUMNS, "pred_rle"]
    # the saved masks are the scored ones: their area is the predicted area of every row
    from embedcache.intake.masks import siim_rle_decode

    for rle, area in zip(predictions["pred_rle"], predictions["pred_area"], strict=True):
        assert siim_rle_decode(rle, 16, 16).mean() == pytest.approx(area)
    assert set(predictions["round"]) == {0} and set(predictions["grid"]) == {"grid16+grid32"}
    assert set(predictions["mask_size"]) == {"16x16"}  # 4x the tiny encoder's 4x4 grid16
    assert predictions["dice"].between(0, 1).all() and (predictions["fn"] >= 0).all()
    folds = pd.read_csv(out / "folds.csv", dtype=str)
    test_ids = folds.loc[folds["round_0"] == "test", "image_id"]
    scored = predictions.loc[predictions["split"] == "test", "image_id"]
    assert sorted(scored) == sorted(test_ids)
    results = pd.read_csv(out / "results.csv")
    assert list(results["round"]) == [0] and "dice_ci_low" in results.columns
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "segmentation" and run["encoder_lr"] == 1e-4
    # the report draws the overlays on the encoder's own raster, read from run.json
    from probes.report.overlays import store_preprocessing
    from probes.report.runs import load_run

    assert store_preprocessing(load_run(out)) == run["preprocessing"]
    assert run["preprocessing"]["input_size"] > 0
    assert json.loads(predictions["params"].iat[0])["class_weights"] == [1.0, 2.0]


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    return save_tiny_segformer(tmp_path_factory.mktemp("segformer"))


@pytest.mark.parametrize(
    "target, encoder_lr",
    [(["--label", "cardiomegaly"], 1e-6), (["--mask", "heart_mask"], 1e-5)],
    ids=["classification", "segmentation"],
)
def test_segformer_baseline_trains_with_its_own_learning_rates(
    target, encoder_lr, segformer_dir, phantom_manifest, tmp_path
):
    out = tmp_path / "segformer"
    extra = ["--weights", str(segformer_dir), "--epochs", "1", "--rounds", "0"]
    assert _finetune_cli(phantom_manifest, "segformer-b4", out, *target, *extra) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["encoder_family"] == "hf-segformer" and run["encoder_lr"] == encoder_lr
    assert run["history"]["0"][0]["lr_encoder"] == encoder_lr
    assert run["history"]["0"][0]["lr_head"] == 1e-4
    if "--mask" in target:  # SegFormer's own decode head at stride 4, as the reference baseline
        assert run["feature"] == "segformer-head" and run["mask_size"] == [128, 128]
    best = ckpt.load_state(ckpt.round_dir(out, 0) / "best.pt")["model"]
    pristine = build_encoder("segformer-b4", weights=str(segformer_dir)).state_dict()
    moved = [k for k, v in pristine.items() if not torch.equal(v, best[f"encoder.{k}"])]
    assert len(moved) > len(pristine) // 2  # the encoder trained, at its own learning rate


def test_two_processes_under_torchrun(small_bars, tiny_encoder_spec, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is installed with torch"
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [torchrun, "--nproc-per-node", "2", "-m", "probes.cli.finetune", "finetune"]
        + [str(small_bars), "--encoder", tiny_encoder_spec, "--label", "target"]
        + ["--encoder-lr", "1e-3", "--epochs", "2", "--rounds", "0", "--batch-size", "4"]
        + ["--device", "cpu", "--workers", "0", "--threads", "1", "--n-boot", "10"]
        + ["--quiet", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["epochs_run"] == {"0": 2}
    predictions = read_table(out / "predictions.parquet")
    folds = pd.read_csv(out / "folds.csv", dtype=str)
    for part in ("val", "test"):  # each row scored once, whichever process scored it
        scored = predictions.loc[predictions["split"] == part, "image_id"]
        assert sorted(scored) == sorted(folds.loc[folds["round_0"] == part, "image_id"])
    assert predictions["score"].between(0, 1).all()
    # Rank 0 alone wrote: one set of files, no leftovers.
    assert sorted(p.name for p in ckpt.round_dir(out, 0).iterdir()) == [
        "best.pt",
        "predictions.parquet",
        "round.json",
    ]
