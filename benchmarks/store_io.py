"""Store I/O against a numpy memmap of the same arrays.

Prints write throughput (store / memmap), random 64-image grid16 read time (store / memmap) and
bytes per image on disk, for the zarr (default) and HDF5 formats. RAD-DINO-sized grids by
default (37x37x768 fp16, 2.1 MB per image). Each write is timed ``--repeats`` times on fresh
files, alternating formats, after ``sync`` (no dirty pages left by the previous one); the best
time counts. Reads are warm-cache (a probe's steady state).

    python benchmarks/store_io.py [--n 512] [--side 37] [--channels 768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from embedcache.store import GroupLayout, open_store


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _best(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def write_memmap(work: Path, block: dict[str, np.ndarray], n: int) -> float:
    os.sync()
    t = time.perf_counter()
    for name, arr in block.items():
        m = np.lib.format.open_memmap(
            work / f"{name}.npy", mode="w+", dtype=arr.dtype, shape=(n, *arr.shape[1:])
        )
        for start in range(0, n, len(arr)):
            m[start : start + len(arr)] = arr[: n - start]
        m.flush()
        del m
    return time.perf_counter() - t


def write_store(path: Path, fmt: str, layout: GroupLayout, block: dict[str, np.ndarray]):
    store = open_store(path, "a", fmt)
    group = store.create_group("bench", layout, np.arange(layout.n_rows).astype(str), {})
    os.sync()
    t = time.perf_counter()
    for start in range(0, layout.n_rows, layout.rows_per_shard):
        group.write_rows(start, {k: v[: layout.n_rows - start] for k, v in block.items()})
    store._backend.flush()
    return time.perf_counter() - t, store, group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--side", type=int, default=37)
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--rows-per-shard", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir",
        help="where to write (default: the system temp folder; "
        "/dev/shm takes the disk out and measures the software alone)",
    )
    args = parser.parse_args()
    n, side, ch, rps = args.n, args.side, args.channels, args.rows_per_shard
    half = side // 2
    rng = np.random.default_rng(0)
    block = {
        "global": rng.standard_normal((rps, ch)).astype(np.float16),
        "grid16": rng.standard_normal((rps, side, side, ch)).astype(np.float16),
        "grid32": rng.standard_normal((rps, half, half, ch)).astype(np.float16),
    }
    layout = GroupLayout(n, ch, {16: (side, side, ch), 32: (half, half, ch)}, "float16", rps)
    total = layout.bytes_per_row() * n
    work = Path(tempfile.mkdtemp(prefix="embedcache-bench-", dir=args.dir))
    print(
        f"{n} images, grid16 {side}x{side}x{ch} fp16, {layout.bytes_per_row() / 1e6:.2f} MB "
        f"per image (all arrays), shards of {rps}"
    )
    times: dict[str, list[float]] = {"memmap": [], "zarr": [], "hdf5": []}
    try:
        for _ in range(args.repeats):
            for fmt in times:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                if fmt == "memmap":
                    times[fmt].append(write_memmap(work, block, n))
                else:
                    t, store, _ = write_store(work / f"s.{fmt}", fmt, layout, block)
                    store.close()
                    times[fmt].append(t)
        # Final files of every format side by side for the read test.
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        write_memmap(work, block, n)
        mm = np.load(work / "grid16.npy", mmap_mode="r")
        rows = np.sort(rng.choice(n, 64, replace=False))
        t_read_mm = _best(lambda: np.stack([mm[r] for r in rows]))
        t_mm = min(times["memmap"])
        print(
            f"memmap  write {total / t_mm / 1e6:6.0f} MB/s                    "
            f"64 random grid16 rows {t_read_mm * 1e3:5.1f} ms"
        )
        for fmt in ("zarr", "hdf5"):
            _, store, group = write_store(work / f"s.{fmt}", fmt, layout, block)
            t_read = _best(lambda g=group: g.read_rows("grid16", rows))
            t_w = min(times[fmt])
            print(
                f"{fmt:<7} write {total / t_w / 1e6:6.0f} MB/s ({t_mm / t_w:.2f}x memmap)   "
                f"64 random grid16 rows {t_read * 1e3:5.1f} ms ({t_read / t_read_mm:.2f}x "
                f"memmap)   {_du(work / f's.{fmt}') / n / 1e6:.3f} MB/image on disk"
            )
            if fmt == "zarr":
                arr = group.array("grid16")
                t_plain = _best(lambda a=arr: np.stack([a[int(r)] for r in rows]), repeats=2)
                print(
                    f"        plain zarr row-by-row read: {t_plain * 1e3:.1f} ms "
                    f"({t_plain / t_read_mm:.2f}x memmap), what RowReader avoids"
                )
            store.close()
        print(
            "write times (s) per repeat: "
            + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in times.items())
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
