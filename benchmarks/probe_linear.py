"""C sweep of the logistic probe: LinearProbe against the plain scikit-learn loop.

The workload of the reference protocol with a C sweep: 10,000 x 1,024 features, 5 rounds of the
reference rotation (60/20/20), 10 C values (1e-4..1e2), C chosen on the validation fold by
AUROC, test AUROC reported. The features are synthetic but shaped like encoder embeddings: a
power-law spectrum (eigenvalue k ~ 1/k, so the top component carries ~13% of the variance),
random per-feature offsets and scales, and a weak label: logistic of a sparse direction
(100 of 1,024 features) plus Bernoulli noise, test AUROC ~0.85.

The baseline is what one would write by hand: per round a StandardScaler, then per C a fresh
``LogisticRegression(C=C, max_iter=1000)`` (lbfgs, tol 1e-4), at its best BLAS thread count
(1 and 2 measured, the faster kept). LinearProbe runs with its ``auto`` backend (and the others
for reference), also at its best thread count. Each timing is the best of ``--repeats``.

    python benchmarks/probe_linear.py                 # ~1-2 minutes on 2 cores
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/probe_linear.py

(This machine may pin OpenBLAS to an older kernel through OPENBLAS_CORETYPE; the second line
measures the native kernel. The BLAS kernel in use is printed.)
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_info, threadpool_limits

from probes.core.splits import reference_rotation
from probes.linear.probe import LinearProbe

CS = np.logspace(-4, 2, 10)


def make_features(
    n: int, d: int, seed: int = 0, signal: float = 2.2
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, d)`` float32 embedding-like features and ``(n,)`` 0/1 labels."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spectrum = np.arange(1, d + 1) ** -0.5  # singular values: eigenvalue k ~ 1/k
    X = (rng.standard_normal((n, d)) * spectrum) @ rotation + 0.01 * rng.standard_normal((n, d))
    X = X * rng.uniform(0.2, 3.0, d) + rng.normal(0.0, 1.0, d)
    direction = np.zeros(d)
    direction[rng.choice(d, 100, replace=False)] = rng.standard_normal(100)
    logit = (X - X.mean(0)) / X.std(0) @ direction
    logit *= signal / logit.std()
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return X.astype(np.float32), y


def sklearn_loop(X, y, split) -> tuple[list[float], list[float]]:
    """The plain loop; returns test AUROC and chosen C per round."""
    aurocs, chosen = [], []
    for r in split:
        scaler = StandardScaler().fit(X[r.train])
        Xtr, Xva, Xte = (scaler.transform(X[rows]) for rows in (r.train, r.val, r.test))
        best = (-np.inf, None, None)
        for C in CS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = LogisticRegression(C=C, max_iter=1000).fit(Xtr, y[r.train])
            score = roc_auc_score(y[r.val], model.decision_function(Xva))
            if score > best[0]:
                best = (score, model, C)
        aurocs.append(roc_auc_score(y[r.test], best[1].decision_function(Xte)))
        chosen.append(best[2])
    return aurocs, chosen


def probe_loop(X, y, split, **params) -> tuple[list[float], list[float]]:
    aurocs, chosen = [], []
    for r in split:
        probe = LinearProbe(Cs=CS, blas_threads=None, **params).fit(
            X[r.train], y[r.train], X_val=X[r.val], y_val=y[r.val]
        )
        aurocs.append(roc_auc_score(y[r.test], probe.decision_function(X[r.test])))
        chosen.append(float(probe.C_[0]))
    return aurocs, chosen


def timed(fn, repeats: int, threads: int):
    best, out = np.inf, None
    for _ in range(repeats):
        with threadpool_limits(threads):
            _set_torch_threads(threads)
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
    return best, out


def _set_torch_threads(threads: int) -> None:
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["auto", "torch"])
    args = parser.parse_args()

    blas = [(i["internal_api"], i.get("architecture")) for i in threadpool_info()]
    print(f"BLAS libraries (api, kernel): {sorted(set(blas), key=str)}")
    X, y = make_features(args.n, args.d)
    split = reference_rotation(len(y))
    print(f"features {X.shape}, prevalence {y.mean():.3f}, {len(split)} rounds x {len(CS)} C")

    base = {}
    for threads in args.threads:
        seconds, (aurocs, chosen) = timed(lambda: sklearn_loop(X, y, split), args.repeats, threads)
        base[threads] = (seconds, aurocs, chosen)
        print(f"sklearn loop   threads={threads}: {seconds:7.2f} s  AUROC {np.mean(aurocs):.4f}")
    base_t = min(base, key=lambda t: base[t][0])
    base_s, base_auc, base_c = base[base_t]

    best = None
    for backend in args.backends:
        for threads in args.threads:
            seconds, (aurocs, chosen) = timed(
                lambda backend=backend: probe_loop(X, y, split, backend=backend),
                args.repeats,
                threads,
            )
            diff = np.max(np.abs(np.subtract(aurocs, base_auc)))
            print(
                f"LinearProbe {backend:>6} threads={threads}: {seconds:7.2f} s  "
                f"AUROC {np.mean(aurocs):.4f}  max |dAUROC| per round {diff:.1e}"
            )
            if best is None or seconds < best[0]:
                best = (seconds, backend, threads, aurocs, chosen)
    seconds, backend, threads, aurocs, chosen = best
    print()
    print(f"baseline: sklearn loop, {base_t} BLAS thread(s): {base_s:.2f} s")
    print(f"ours:     LinearProbe backend={backend}, {threads} thread(s): {seconds:.2f} s")
    print(f"speed-up: {base_s / seconds:.1f}x")
    print(
        f"test AUROC per round  sklearn {np.round(base_auc, 4).tolist()}\n"
        f"                      ours    {np.round(aurocs, 4).tolist()}"
    )
    print(
        f"mean AUROC sklearn {np.mean(base_auc):.4f}, ours {np.mean(aurocs):.4f}; "
        f"max per-round difference {np.max(np.abs(np.subtract(aurocs, base_auc))):.1e}"
    )
    print(
        f"chosen C  sklearn {[f'{c:.3g}' for c in base_c]}\n"
        f"          ours    {[f'{c:.3g}' for c in chosen]}"
    )


if __name__ == "__main__":
    main()
