"""Probes on CUDA, each with its time: the linear probe's torch backend (a C sweep with inner
folds), and the segmentation probe on a store of ViT-B-sized grids (grid16, and grid16+grid32),
bf16 autocast. Part of ``benchmarks/gpu_check.sh``; the inputs are made before each clock starts.

Features are synthetic with a planted signal (as in probe_linear.py and probe_segmentation.py),
offset by a large per-channel mean as ViT features have, so the bf16 path is exercised where it
used to lose logits.

    python benchmarks/gpu_probes.py [--n-linear 10000] [--n-seg 512] [--side 37] [--epochs 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules
from probe_linear import make_features  # noqa: E402
from probe_segmentation import KEY, build  # noqa: E402

from embedcache.store import open_store  # noqa: E402

DEVICE = torch.device("cuda")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn) -> tuple[float, object]:
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - start, out


def linear(n: int, d: int) -> None:
    """Torch backend on CUDA: 10 values of C chosen by 5 inner folds, refit; test AUROC."""
    from sklearn.metrics import roc_auc_score

    from probes.linear.probe import LinearProbe

    X, y = make_features(n, d)
    X += 30.0  # large channel means, as ViT features have
    train, test = np.arange(int(0.8 * n)), np.arange(int(0.8 * n), n)
    probe = LinearProbe(Cs=10, cv=5, backend="torch", device=str(DEVICE))
    seconds, _ = _seconds(lambda: probe.fit(X[train], y[train]))
    auroc = roc_auc_score(y[test], probe.decision_function(X[test]))
    print(
        f"linear probe (torch, {DEVICE.type})  {n} x {d}, 10 C x 5 folds + refit: {seconds:6.2f} s, "
        f"test AUROC {auroc:.3f}, C {float(probe.C_[0]):.3g}"
    )


def segmentation(work: Path, n: int, side: int, channels: int, epochs: int) -> None:
    """SegmentationProbe on CUDA (bf16 autocast) over the store's grids; held-out Dice."""
    from probes.segmentation.masks import PackedMasks
    from probes.segmentation.metrics import dice_iou
    from probes.segmentation.probe import SegmentationProbe, StoreGrids

    build(work, n, side, channels)
    store = open_store(work / "s.zarr")
    group = store.group(KEY)
    masks = PackedMasks(np.load(work / "masks.npy")[:n], (4 * side, 4 * side))
    train, test = np.arange(int(0.8 * n)), np.arange(int(0.8 * n), n)
    truth = masks.take(test)
    precision = "bf16" if DEVICE.type == "cuda" else "fp32"
    for grid in ("grid16", "grid16+grid32"):
        names = grid.split("+")
        grids = StoreGrids(group, np.arange(n), names)
        probe = SegmentationProbe(
            grid=grid,
            device=str(DEVICE),
            amp=True,
            max_epochs=epochs,
            early_stopping=False,
            lr=1e-2,
        )
        seconds, _ = _seconds(lambda p=probe, g=grids: p.fit(g.subset(train), masks.subset(train)))
        dice = dice_iou(probe.predict(grids.subset(test)), truth)[0].mean()
        print(
            f"segmentation probe ({grid:<13}) {len(train)} images of {side}x{side}x{channels} "
            f"fp16, {epochs} epochs, {precision}: {seconds:6.2f} s "
            f"({seconds / epochs:.2f} s/epoch), held-out Dice {dice:.3f}"
        )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-linear", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--n-seg", type=int, default=512)
    parser.add_argument("--side", type=int, default=37, help="grid16 side (RAD-DINO: 37)")
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for GPU machines")
    torch.zeros(1, device=DEVICE)  # the CUDA context outside the timed parts
    linear(args.n_linear, args.d)
    work = Path(tempfile.mkdtemp(prefix="embedcache-gpu-probes-"))
    try:
        segmentation(work, args.n_seg, args.side, args.channels, args.epochs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
