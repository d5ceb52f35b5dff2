"""Attentive probe against the store: one training epoch vs a plain streamed read.

One epoch of :class:`probes.attentive.AttentiveProbe` (no validation pass, no standardisation
pass: the training steps over every row once, minibatches streamed from the store) against a
plain read (``group.read_rows``) of the same grid16 rows in the same minibatch order, warm page
cache, best of ``--repeats`` interleaved runs. Target: at most 2x on CPU. Also shown: the epoch
without the read-ahead thread, the training steps alone on minibatches already in memory, and
each ``--queries`` count.

Synthetic store: ``--n`` images of a ``--side`` x ``--side`` x ``--channels`` fp16 grid16 (the
size of a 512 px ViT-B/16 grid by default), two planted tokens in the positives.

    python benchmarks/probe_attentive.py [--n 1000] [--side 32] [--channels 768] [--queries 1 4]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from embedcache.store import GroupLayout, open_store

KEY = "bench"


def build(work: Path, n: int, side: int, channels: int, rows_per_shard: int = 64) -> np.ndarray:
    """Write the store (``work/s.zarr``); returns the labels."""
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
    noise = rng.standard_normal((rows_per_shard, side * side, channels)).astype(np.float16)
    labels = (rng.random(n) < 0.5).astype(np.int64)
    with open_store(work / "s.zarr", "a") as store:
        group = store.create_group(KEY, layout, np.arange(n).astype(str), {})
        for start in range(0, n, rows_per_shard):
            m = min(rows_per_shard, n - start)
            grid = np.roll(noise, start, axis=0)[:m].copy()
            for i in np.flatnonzero(labels[start : start + m]):
                grid[i, rng.choice(side * side, 2, replace=False)] += (6 * direction).astype(
                    np.float16
                )
            grid = grid.reshape(m, side, side, channels)
            grid32 = grid.reshape(m, half, 2, half, 2, channels).mean((2, 4), dtype=np.float32)
            group.write_rows(
                start,
                {"global": grid.mean((1, 2), dtype=np.float32), "grid16": grid, "grid32": grid32},
            )
        group.mark_done(np.arange(n))
    return labels


def time_epoch(work: Path, labels: np.ndarray, queries: list[int], repeats: int) -> None:
    import torch

    from probes.attentive.pool import AttentionPool
    from probes.attentive.probe import AttentiveProbe
    from probes.attentive.step import batch_step
    from probes.core.grids import StoreGrids

    n = len(labels)
    store = open_store(work / "s.zarr")
    group = store.group(KEY)
    grids = StoreGrids(group, np.arange(n), ["grid16"])
    base = dict(batch_size=64, device="cpu", seed=0, max_epochs=1, early_stopping=False)
    probe = AttentiveProbe(standardize=False, **base)
    batches = probe._batches(n, np.random.default_rng(probe.seed))  # the first epoch's order

    def plain() -> None:
        for index in batches:
            group.read_rows("grid16", grids.rows[index])

    def epoch(q: int, prefetch: int):
        return lambda: probe.set_params(n_queries=q, prefetch=prefetch).fit(grids, labels)

    def steps(q: int):
        held = list(itertools.islice(probe._stream(grids, batches[:4], labels), 4))
        pool = AttentionPool(grids.shapes[0][2], q, torch.Generator().manual_seed(0))
        optimizer = torch.optim.AdamW(pool.parameters(), lr=1e-2)

        def run() -> None:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            for i in range(len(batches)):
                rows, y = held[i % len(held)]
                optimizer.zero_grad(set_to_none=True)
                batch_step(pool, rows, y)
                optimizer.step()
            torch.set_num_threads(before)

        return run

    runs = {"read": plain}
    for q in queries:
        runs[f"epoch, {q} quer{'y' if q == 1 else 'ies'}"] = epoch(q, 1)
        runs[f"  no read-ahead, {q}"] = epoch(q, 0)
        runs[f"  training steps only, {q}"] = steps(q)
    for fn in runs.values():
        fn()  # warm page cache and code paths
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so a busy moment does not favour one
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    side, _, channels = grids.shapes[0]
    gb = n * side * side * channels * 2 / 1e9
    print(
        f"one epoch over {n} images ({gb:.2f} GB of fp16 grid16 {side}x{side}x{channels}), "
        f"batch 64, warm cache, best of {repeats} interleaved runs (median ratio in brackets)"
    )
    print(f"  plain streamed read               {best['read']:7.2f} s")
    for name in list(runs)[1:]:
        ratio = best[name] / best["read"]
        median = float(np.median(np.array(times[name]) / np.array(times["read"])))
        print(f"  {name:<33} {best[name]:7.2f} s   {ratio:.2f}x read  ({median:.2f}x)")
    for q in queries:
        ratio = best[f"epoch, {q} quer{'y' if q == 1 else 'ies'}"] / best["read"]
        print(
            f"  target <= 2x read, {q} queries: {'met' if ratio <= 2 else 'MISSED'} ({ratio:.2f}x)"
        )
    print(f"  {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", help="where to write the store (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="probe-attentive-", dir=args.dir))
    try:
        labels = build(work, args.n, args.side, args.channels)
        time_epoch(work, labels, args.queries, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
