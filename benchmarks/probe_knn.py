"""k-NN probe with 100,000 x 1,024 training vectors: time and peak memory against scikit-learn.

``--n`` clustered float32 vectors of ``--dim`` dimensions (a binary label per cluster plus
noise); the last ``--queries`` rows are scored against the others with ``k = --k`` cosine
neighbours: :class:`probes.KNNProbe` (exact blocked search, DINO's weighted votes) against
scikit-learn's ``KNeighborsClassifier(algorithm="brute", metric="cosine")`` (its chunked
brute-force search, ``working_memory`` 1 GB by default), the natural baseline. Each method runs
in a fresh process; peak memory is the highest resident set (``VmRSS``, sampled every 2 ms)
during fit and predict, above its level before (the data already made). Also printed: both
methods' AUROC and how often their neighbour lists agree.

    python benchmarks/probe_knn.py [--n 120000] [--dim 1024] [--queries 20000] [--k 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np


def data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` float32 vectors around 200 cluster centres, label = the centre's label."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim), dtype=np.float32)
    cluster = rng.integers(0, 200, n)
    X = centres[cluster]
    X += 4.0 * rng.standard_normal((n, dim), dtype=np.float32)
    return X, (cluster % 2).astype(np.int64)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """The highest resident set above its level at entry, sampled every 2 ms (``.mb``)."""

    def __enter__(self) -> PeakRSS:
        self.start, self.peak, self._stop = _rss_mb(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = max(self.peak, _rss_mb()) - self.start


def child(method: str, n: int, dim: int, queries: int, k: int) -> dict:
    from sklearn.metrics import roc_auc_score

    X, y = data(n, dim)
    train, test = slice(0, n - queries), slice(n - queries, n)
    Xtr, ytr, Xq = X[train], y[train], np.ascontiguousarray(X[test])
    del X
    if method == "probes":
        import torch  # noqa: F401  (imported before timing, as scikit-learn is)

        from probes.knn.probe import KNNProbe
        from probes.knn.search import cosine_topk, normalize_rows

        with PeakRSS() as memory:
            start = time.perf_counter()
            model = KNNProbe(k=k).fit(Xtr, ytr)
            score = model.predict_proba(Xq)[:, 1]
            seconds = time.perf_counter() - start
        _, index = cosine_topk(normalize_rows(Xq[:2000]), model.X_, k)
    else:
        from sklearn.neighbors import KNeighborsClassifier

        with PeakRSS() as memory:
            start = time.perf_counter()
            model = KNeighborsClassifier(k, algorithm="brute", metric="cosine").fit(Xtr, ytr)
            score = model.predict_proba(Xq)[:, 1]
            seconds = time.perf_counter() - start
        index = model.kneighbors(Xq[:2000], return_distance=False)
    peak = memory.mb
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "auroc": float(roc_auc_score(y[test], score)),
        "neighbours": np.sort(index, axis=1).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.n, args.dim, args.queries, args.k)
        print(json.dumps(result))
        return
    results = {}
    for method in ("probes", "sklearn"):
        command = [sys.executable, __file__, "--child", method]
        command += ["--n", str(args.n), "--dim", str(args.dim)]
        command += ["--queries", str(args.queries), "--k", str(args.k)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[method] = json.loads(done.stdout.strip().splitlines()[-1])
    mine, theirs = results["probes"], results["sklearn"]
    pairs = zip(mine["neighbours"], theirs["neighbours"], strict=True)
    agree = np.mean([len(set(a) & set(b)) / len(a) for a, b in pairs])
    rows = args.n - args.queries
    base = f"{rows:,} x {args.dim:,} float32 ({rows * args.dim * 4 / 1e9:.2f} GB)"
    print(f"k-NN, k={args.k}: {args.queries:,} queries against {base}")
    print(f"  {'':<34} {'time':>8} {'peak memory':>12} {'AUROC':>7}")
    for name, r in (
        ("probes.KNNProbe (blocked, numpy)", mine),
        ("scikit-learn brute/cosine", theirs),
    ):
        print(f"  {name:<34} {r['seconds']:7.1f}s {r['peak_mb']:9.0f} MB {r['auroc']:7.4f}")
    print(
        f"  ratio probes / scikit-learn: time {mine['seconds'] / theirs['seconds']:.2f}x, "
        f"peak memory {mine['peak_mb'] / max(theirs['peak_mb'], 1):.2f}x; neighbour lists "
        f"agree {100 * agree:.2f}% (first 2,000 queries)"
    )
    full = args.queries * (args.n - args.queries) * 4 / 1e9
    print(
        f"  (a full similarity matrix of the queries would be {full:.1f} GB; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
