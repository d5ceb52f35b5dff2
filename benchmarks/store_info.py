"""``embedcache info`` at 4,000 and 400,000 rows: whole-process time, peak memory, and the
requests it makes to an S3 server.

Builds one store per size with a RAD-DINO layout group (global 768, grid16 37x37x768, grid32
18x18x768, float16, 64 rows per shard), the way a finished extraction leaves its metadata: every
id written, every row flagged ``done`` (one ``done`` chunk per 64 rows: 6,250 chunk files at
400k rows), the recorded counts. The feature arrays are left unwritten (zarr allows missing
chunks; ``info`` never reads them), so the 400k store takes ~30 MB instead of 1 TB. Then runs
``python -m embedcache info STORE`` (and ``--json``) as separate processes, ``--repeats``
times each, and reports the median and best wall time and the peak resident memory.

With ``--s3`` the same stores are built on a local ``moto_server`` (the S3 protocol over a
socket, as in tests/test_store_urls.py) and the requests of one ``info`` process are counted
with moto's request recorder.

    python benchmarks/store_info.py [--out /tmp/store-info] [--sizes 4000 400000]
        [--repeats 7] [--s3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from embedcache.store import GroupLayout, encoder_key, open_store

LAYOUT = {"global_dim": 768, "grid_shapes": {16: (37, 37, 768), 32: (18, 18, 768)}}
MATERIAL = {"preset": "rad-dino", "benchmark": "store_info"}


def build(path: str, n: int, storage_options: dict | None = None) -> float:
    """A RAD-DINO layout group of ``n`` rows, every row done, built by a child process (so that
    this one stays small: a forked child's peak memory counts its parent's pages until exec);
    returns seconds taken."""
    start = time.perf_counter()
    options = json.dumps(storage_options or {})
    subprocess.run([sys.executable, __file__, "--build", path, str(n), options], check=True)
    return time.perf_counter() - start


def _build_here(path: str, n: int, storage_options: dict) -> None:
    layout = GroupLayout(n_rows=n, **LAYOUT)
    ids = np.array([f"img{i:07d}" for i in range(n)])
    attrs = {"key_material": MATERIAL, "encoder": {"preset": "rad-dino"}}
    with open_store(path, "a", storage_options=storage_options or None) as store:
        group = store.create_group(encoder_key("rad-dino", MATERIAL), layout, ids, attrs)
        group.mark_done(np.arange(n))


def run_info(args: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of one ``python -m embedcache info ...`` process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedcache", "info", *args],
        stdout=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"embedcache info {' '.join(args)} failed ({proc.returncode})")
    return seconds, usage.ru_maxrss // 1024


def time_info(stores: dict[int, str], repeats: int, env: dict | None = None) -> None:
    """Time ``info`` and ``info --json`` on every store, the sizes interleaved run by run (a
    shared machine's load then weighs on every size alike); prints the medians' ratio."""
    runs: dict[tuple[int, str], list[tuple[float, int]]] = {}
    for _ in range(repeats):
        for n, store in stores.items():
            for flags in ([], ["--json"]):
                runs.setdefault((n, " ".join(["info", *flags])), []).append(
                    run_info([store, *flags], env)
                )
    for (n, what), results in runs.items():
        times = [t for t, _ in results]
        print(
            f"  {n:,} rows, {what}: median {statistics.median(times):.3f} s, best "
            f"{min(times):.3f} s, peak {max(m for _, m in results)} MB"
        )
    sizes = sorted(stores)
    for what in ("info", "info --json"):
        small, large = (
            statistics.median(t for t, _ in runs[(n, what)]) for n in sizes[:: len(sizes) - 1]
        )
        print(f"  {what}: {sizes[-1]:,} rows / {sizes[0]:,} rows = {large / small:.2f}x")


class MotoServer:
    """``moto_server`` on a free loopback port, with its request recorder."""

    def __init__(self, folder: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("moto_server")),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(folder / "recording.jsonl")},
        )
        for _ in range(300):
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        self.options = {"endpoint_url": self.endpoint, "key": "bench", "secret": "bench"}
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        ).create_bucket(Bucket="bench")

    def recorder(self, what: str) -> str:
        method = "GET" if what == "download-recording" else "POST"
        request = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{what}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()

    def count(self, action) -> int:
        self.recorder("reset-recording")
        self.recorder("start-recording")
        try:
            action()
        finally:
            self.recorder("stop-recording")
        return sum(1 for line in self.recorder("download-recording").splitlines() if line.strip())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main() -> None:
    if sys.argv[1:2] == ["--build"]:  # the child process of build()
        path, n, options = sys.argv[2:5]
        _build_here(path, int(n), json.loads(options))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the stores (default: a temp dir)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 400_000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--s3", action="store_true", help="also count requests on moto_server")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="store-info-"))
    out.mkdir(parents=True, exist_ok=True)
    stores = {}
    for n in args.sizes:
        store = out / f"n{n}.zarr"
        if not store.exists():
            print(f"building {store}: {build(str(store), n):.1f} s")
        files = sum(1 for _ in store.rglob("*") if _.is_file())
        print(f"local store of {n:,} rows: {files:,} files")
        stores[n] = str(store)
    print(f"local, {args.repeats} runs each:")
    time_info(stores, args.repeats)
    if not args.s3:
        return
    server = MotoServer(out)
    try:
        env = {"EMBEDCACHE_STORAGE_OPTIONS": json.dumps(server.options)}
        urls = {}
        for n in args.sizes:
            urls[n] = url = f"s3://bench/stores/n{n}.zarr"
            print(f"building {url}: {build(url, n, server.options):.1f} s")
            requests = server.count(lambda url=url: run_info([url, "--json"], env))
            print(f"s3, {n:,} rows: one info process makes {requests} requests")
        print(f"s3, {args.repeats} runs each:")
        time_info(urls, args.repeats, env)
    finally:
        server.close()


if __name__ == "__main__":
    main()
