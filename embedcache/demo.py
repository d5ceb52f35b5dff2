"""``embedcache demo``: an offline end-to-end run on a synthetic cohort.

Generates a phantom cohort (DICOM and PNG, planted labels and masks), extracts it with a
randomly initialised DINOv2-small (the real architecture, no download), verifies the store, then
runs the two probes on it with patient-level folds: a logistic-regression probe for the
pneumothorax and cardiomegaly labels and a segmentation probe for the heart mask. The
embeddings of a random encoder mean little; the demo shows the machinery, not a result.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from embedcache.extract import extract
from embedcache.phantoms import CohortSpec, make_cohort
from embedcache.store import open_store
from embedcache.store.verify import group_summary, verify_group

DEMO_ENCODER = "dinov2-small"


def run_demo(
    out_dir: str | os.PathLike = "demo-output", n_patients: int = 24, progress: bool = True
) -> Path:
    """Run the demo into ``out_dir``; returns the store path. Re-running resumes (a no-op)."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.exists():
        manifest = make_cohort(out / "cohort", CohortSpec(n_patients=n_patients, seed=0))
    t_cohort = time.perf_counter() - t0
    store_path = out / "store.zarr"
    result = extract(
        manifest, DEMO_ENCODER, store_path, weights="none", batch_size=16, progress=progress
    )
    with open_store(store_path) as store:
        group = store.group(result.key)
        summary = group_summary(group)
        report = verify_group(group)
    grids = ", ".join(
        f"{name} {'x'.join(map(str, g['shape'][1:]))} (stride {g['stride']})"
        for name, g in summary["grids"].items()
    )
    print()
    print(f"cohort    {manifest} ({summary['rows']} images, made in {t_cohort:.1f} s)")
    print(f"encoder   {DEMO_ENCODER}, randomly initialised (numbers mean nothing)")
    print(f"store     {store_path}  group {result.key}")
    print(f"arrays    global {summary['global'][1]}; {grids}; {summary['dtype']}")
    print(
        f"extracted {result.written} now, {result.already_done} already done, "
        f"{result.images_per_s:.1f} images/s, {summary['bytes_per_image'] / 1e3:.0f} kB/image"
    )
    print(f"verify    {'ok' if report.ok else 'FAILED: ' + '; '.join(report.problems)}")
    print()
    run_probes(store_path, manifest, out)
    print(f"\nnext      embedcache info {store_path}; results in {out / 'probes'}")
    return store_path


def run_probes(store: Path, manifest: Path, out: Path) -> None:
    """The command lines a user would type next, run in-process."""
    from probes.cli import main as probes_main

    common = [str(store), "--manifest", str(manifest), "--n-boot", "200"]
    probes_main(
        [
            "linear",
            *common,
            "--label",
            "pneumothorax",
            "--label",
            "cardiomegaly",
            "--out",
            str(out / "probes" / "linear"),
        ]
    )
    print()
    probes_main(
        [
            "seg",
            *common,
            "--mask",
            "heart_mask",
            "--epochs",
            "20",
            "--out",
            str(out / "probes" / "seg-heart"),
        ]
    )
