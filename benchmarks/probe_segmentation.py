"""Segmentation probe against the store: epoch time vs a plain read, and memory vs N.

(a) One training epoch of :class:`probes.segmentation.SegmentationProbe` against a plain streamed
    read (``group.read_rows``) of the same grid16 rows in the same minibatch order, warm page
    cache, best of ``--repeats``. Target: at most 2x. Shown with and without the prefetch thread.
(b) Peak memory of a whole probe run (masks, standardisation pass, ``--epochs`` epochs with
    early-stopping validation, streamed prediction and Dice on the held-out part), each N in a
    fresh subprocess, as N grows ``--scale``-fold. Target: at most 1.2x. Memory is the peak of
    the process's anonymous resident memory (``RssAnon``, sampled every 2 ms) above its level
    after imports: memory-mapped shard pages are page cache the kernel can drop, not the probe's
    memory, and are shown separately (``VmHWM`` peak, which includes them).

Synthetic store: ``--n * --scale`` images of a ``--side`` x ``--side`` x ``--channels`` fp16
grid16 (grid32 at half the side), written with ``embedcache.store``, a blob planted in each
grid, masks at 4x the grid resolution.

    python benchmarks/probe_segmentation.py [--n 500] [--scale 4] [--side 32] [--channels 768]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from embedcache.store import GroupLayout, open_store

KEY = "bench"


def _blobs(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """``n`` random discs, bool ``(n, side, side)``."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    centre = rng.uniform(0.3 * side, 0.7 * side, (n, 2, 1, 1))
    radius = rng.uniform(0.12 * side, 0.3 * side, (n, 1, 1))
    return (yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 < radius**2


def build(work: Path, n: int, side: int, channels: int, rows_per_shard: int = 64) -> None:
    """Write the store (``work/s.zarr``) and the masks (``work/masks.npy``, bit-packed)."""
    from probes.masks import PackedMasks

    rng = np.random.default_rng(0)
    half = side // 2
    layout = GroupLayout(
        n,
        channels,
        {16: (side, side, channels), 32: (half, half, channels)},
        "float16",
        rows_per_shard,
    )
    direction = rng.standard_normal(channels).astype(np.float32)
    direction /= np.linalg.norm(direction)
    noise = rng.standard_normal((rows_per_shard, side, side, channels)).astype(np.float16)
    bits = []
    store = open_store(work / "s.zarr", "a")
    group = store.create_group(KEY, layout, np.arange(n).astype(str), {})
    for start in range(0, n, rows_per_shard):
        m = min(rows_per_shard, n - start)
        masks = _blobs(rng, m, 4 * side)
        cover = masks.reshape(m, side, 4, side, 4).mean((2, 4), dtype=np.float32)
        grid = np.roll(noise, start, axis=0)[:m] + (2.0 * cover[..., None] * direction).astype(
            np.float16
        )
        grid32 = grid.reshape(m, half, 2, half, 2, channels).mean((2, 4), dtype=np.float32)
        group.write_rows(
            start,
            {"global": grid.mean((1, 2), dtype=np.float32), "grid16": grid, "grid32": grid32},
        )
        bits.append(PackedMasks.from_array(masks).bits)
    group.mark_done(np.arange(n))
    store.close()
    np.save(work / "masks.npy", np.concatenate(bits))


def _probe(**kw):
    from probes.segmentation import SegmentationProbe

    base = dict(batch_size=32, device="cpu", seed=0, lr=1e-2)
    return SegmentationProbe(**{**base, **kw})


def time_epoch(work: Path, n: int, side: int, repeats: int) -> None:
    """(a): one probe epoch vs a plain streamed read in the same minibatch order."""
    from probes.masks import PackedMasks
    from probes.segmentation import StoreGrids

    store = open_store(work / "s.zarr")
    group = store.group(KEY)
    grids = StoreGrids(group, np.arange(n), ["grid16"])
    masks = PackedMasks(np.load(work / "masks.npy")[:n], (4 * side, 4 * side))
    probe = _probe(max_epochs=1, early_stopping=False, standardize=False)
    batches = probe._batches(n, np.random.default_rng(probe.seed))  # the fit's first epoch order

    def plain() -> None:
        for index in batches:
            group.read_rows("grid16", grids.rows[index])

    def epoch(prefetch: int):
        return lambda: probe.set_params(prefetch=prefetch).fit(grids, masks)

    results = {}
    for name, fn in (("read", plain), ("probe", epoch(2)), ("probe, no prefetch", epoch(0))):
        fn()  # warm page cache and code paths
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        results[name] = best
    gb = n * side * side * group.layout.grid_shapes[16][2] * 2 / 1e9
    print(
        f"(a) one epoch over {n} images ({gb:.2f} GB of fp16 grid16), batch 32, best of {repeats}"
    )
    print(f"    plain streamed read           {results['read']:7.2f} s")
    for name in ("probe", "probe, no prefetch"):
        ratio = results[name] / results["read"]
        print(f"    {name:<29} {results[name]:7.2f} s   {ratio:.2f}x read")
    ok = results["probe"] / results["read"] <= 2.0
    print(f"    target <= 2x read: {'met' if ok else 'MISSED'}")
    store.close()


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child_memory(work: Path, n: int, side: int, epochs: int) -> None:
    """(b), in a fresh process: peak anonymous memory of one whole probe run on N images."""
    import torch

    from probes.masks import PackedMasks
    from probes.seg_metrics import confusion_counts, dice_iou_from_counts
    from probes.segmentation import StoreGrids

    torch.set_num_threads(torch.get_num_threads())  # initialise the thread pool before the base
    store = open_store(work / "s.zarr")
    group = store.group(KEY)
    base_anon, base_hwm = _status("RssAnon"), _status("VmHWM")
    peak = [base_anon]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], _status("RssAnon"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    masks = PackedMasks(np.load(work / "masks.npy", mmap_mode="r")[:n].copy(), (4 * side, 4 * side))
    cut = int(0.8 * n)
    grids = StoreGrids(group, np.arange(n), ["grid16"])
    probe = _probe(max_epochs=epochs, patience=epochs).fit(
        grids.subset(np.arange(cut)), masks.subset(np.arange(cut))
    )
    test = np.arange(cut, n)
    counts = [
        np.stack(confusion_counts(labels > 0, masks.take(test[index])))
        for index, labels in probe.iter_predict(grids.subset(test))
    ]
    dice = float(np.nanmean(dice_iou_from_counts(*np.concatenate(counts, 1))[0]))
    seconds = time.perf_counter() - start
    running.clear()
    sampler.join()
    print(
        json.dumps(
            {
                "n": n,
                "anon_peak_mb": (peak[0] - base_anon) / 1e6,
                "hwm_peak_mb": (_status("VmHWM") - base_hwm) / 1e6,
                "seconds": seconds,
                "dice": dice,
            }
        )
    )


def measure_memory(work: Path, sizes: list[int], side: int, epochs: int) -> None:
    rows = []
    for n in sizes:
        command = [
            sys.executable,
            __file__,
            "--child",
            str(work),
            "--n",
            str(n),
            "--side",
            str(side),
        ]
        out = subprocess.run(command + ["--epochs", str(epochs)], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"(b) peak memory of a whole run ({epochs} epochs + validation + prediction), per N")
    for r in rows:
        print(
            f"    N={r['n']:>6}  anonymous +{r['anon_peak_mb']:7.1f} MB   incl. mapped shards "
            f"+{r['hwm_peak_mb']:7.1f} MB   {r['seconds']:6.1f} s   held-out Dice {r['dice']:.3f}"
        )
    growth = rows[-1]["anon_peak_mb"] / rows[0]["anon_peak_mb"]
    print(
        f"    growth for {sizes[-1] // sizes[0]}x N: {growth:.2f}x  (target <= 1.2x: {'met' if growth <= 1.2 else 'MISSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="smaller N (the larger is n * scale)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="folder for the temporary store")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(Path(args.child), args.n, args.side, args.epochs)
        return
    big = args.n * args.scale
    work = Path(tempfile.mkdtemp(prefix="probe-seg-bench-", dir=args.dir))
    try:
        start = time.perf_counter()
        build(work, big, args.side, args.channels)
        print(
            f"store: {big} images, grid16 {args.side}x{args.side}x{args.channels} fp16, "
            f"written in {time.perf_counter() - start:.1f} s"
        )
        time_epoch(work, big, args.side, args.repeats)
        measure_memory(work, [args.n, big], args.side, args.epochs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
