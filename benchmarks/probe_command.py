"""``probes linear`` as a whole process against a process that only imports what it needs.

The natural floor of a command-line logistic probe is the import of its libraries: a process
that only imports scikit-learn (``linear_model``, ``metrics``), pandas, zarr and
``scipy.stats`` and exits. The command does that, reads the demo store (50 phantom images,
DINOv2-small global features), runs 5 patient-level rounds with a 10-value C sweep, bootstraps
its CIs over patients (1,000 resamples), and writes the run folder.

Both run as fresh processes, interleaved, ``--repeats`` times; the medians and the ratio are
printed, and the peak resident memory of each process (``os.wait4``'s rusage of that child)::

    python benchmarks/probe_command.py            # makes the demo store once (~30 s), then ~30 s

Goal (issue #11): ratio <= 1.5 and peak RSS <= 400 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "import sklearn.linear_model, sklearn.metrics, pandas, zarr, scipy.stats"


def demo_store(folder: Path) -> tuple[Path, Path]:
    """The demo's cohort and store (phantoms, random-init DINOv2-small), made once."""
    from embedcache.extract import extract
    from embedcache.phantoms import CohortSpec, make_cohort

    manifest = folder / "cohort" / "manifest.csv"
    if not manifest.exists():
        manifest = make_cohort(folder / "cohort", CohortSpec(n_patients=24, seed=0))
    store = folder / "store.zarr"
    extract(manifest, "dinov2-small", store, weights="none", batch_size=16, progress=False)
    return manifest, store


def timed(argv: list[str]) -> tuple[float, float]:
    """``(seconds, peak RSS in MB)`` of one child process running ``argv``.

    The parent stays small (the store is made in a child of its own): Linux carries a process's
    peak RSS across fork and exec, so a large parent would be counted in every child's peak.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", default="benchmarks/_work/probe-command")
    parser.add_argument("--make-store", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.make_store:  # in a child: torch and the encoder stay out of the parent
        demo_store(work)
        return
    subprocess.run([sys.executable, __file__, "--work", str(work), "--make-store"], check=True)
    manifest, store = work / "cohort" / "manifest.csv", work / "store.zarr"
    probes = str(Path(sys.executable).with_name("probes"))
    out = Path(tempfile.mkdtemp(prefix="probe-command-"))
    command = [probes, "linear", str(store), "--manifest", str(manifest)]
    command += ["--label", "pneumothorax", "--out", str(out), "--quiet"]
    floor = [sys.executable, "-c", BASELINE]
    timed(floor), timed(command)  # warm the page cache and the bytecode caches
    base, probe = [], []
    for _ in range(args.repeats):
        base.append(timed(floor))
        probe.append(timed(command))
    shutil.rmtree(out)
    b = statistics.median(s for s, _ in base)
    p = statistics.median(s for s, _ in probe)
    print(f"baseline (imports only): {b:.2f} s, peak RSS {max(m for _, m in base):.0f} MB")
    print(f"probes linear:           {p:.2f} s, peak RSS {max(m for _, m in probe):.0f} MB")
    print(f"ratio {p / b:.2f}x (median of {args.repeats}, interleaved)")


if __name__ == "__main__":
    main()
