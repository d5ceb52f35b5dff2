"""``probes demo``: an offline end-to-end run on a synthetic cohort, extraction to report.

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
    print(f"\nnext      embedcache info {store_path}; runs in {out / 'probes'} (probes.Run.open)")
    return store_path


def run_probes(store: Path, manifest: Path, out: Path) -> None:
    """What a user does next, from Python: a linear probe of two labels and a segmentation
    probe of the heart mask, each a :class:`probes.Run` written under ``out/probes``."""
    from probes.cli.format import format_classification, format_segmentation
    from probes.linear.run import run_linear
    from probes.segmentation.run import run_seg

    common = dict(store=store, manifest=manifest, n_boot=200)
    linear = run_linear(
        **common, label=["pneumothorax", "cardiomegaly"], out=out / "probes" / "linear"
    )
    print(format_classification(linear))
    print()
    seg = run_seg(
        **common,
        mask="heart_mask",
        probe_params={"max_epochs": 20},
        out=out / "probes" / "seg-heart",
    )
    print(format_segmentation(seg))
