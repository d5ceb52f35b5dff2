"""Extraction wall time against a bare forward pass of the same encoder over the same images.

The bare forward is the floor: images already decoded, resized and stacked in memory, the
encoder run batch by batch under ``inference_mode``. Extraction adds decoding (DICOM/PNG),
resizing, the DataLoader, the store writes and their bookkeeping; the ratio shows what they
cost once overlapped with compute.

    python benchmarks/extraction.py [--encoder dinov2-small] [--images 96] [--batch-size 16]
        [--manifest COHORT/manifest.csv]   # a cohort made beforehand (its making is not timed)

On CUDA the clock is read only after ``torch.cuda.synchronize()``: kernels run asynchronously,
and a clock read before the queue drains times the launches, not the work.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from embedcache.encoders import build_encoder
from embedcache.extract import extract
from embedcache.extract.batches import CohortImages, collate
from embedcache.extract.runner import default_workers
from embedcache.intake import load_manifest
from embedcache.phantoms import CohortSpec, make_cohort


def _no_sync() -> None:
    pass


def device_sync(device: torch.device) -> Callable[[], None]:
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` on CUDA."""
    return torch.cuda.synchronize if device.type == "cuda" else _no_sync


def bare_forward(
    encoder,
    pixels: torch.Tensor,
    batch_size: int,
    sync: Callable[[], None] = _no_sync,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds for ``encoder`` over ``pixels`` (already on its device) in batches; ``sync``
    waits for the device before each clock read, so queued kernels are inside the time."""
    sync()
    start = clock()
    with torch.inference_mode():
        for i in range(0, len(pixels), batch_size):
            encoder(pixels[i : i + batch_size])
    sync()
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="dinov2-small")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=256, help="phantom image side, pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="use this cohort instead of making one"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="embedcache-bench-"))
    try:
        manifest_path = args.manifest
        if manifest_path is None:
            # One image per patient so the cohort has exactly --images images.
            spec = CohortSpec(n_patients=args.images, images_per_patient=(1, 1), size=args.size)
            manifest_path = make_cohort(work / "cohort", spec, workers=args.workers or 1)
        encoder = build_encoder(args.encoder, args.weights)
        device = torch.device(
            "cuda"
            if args.device == "auto" and torch.cuda.is_available()
            else ("cpu" if args.device == "auto" else args.device)
        )
        encoder.to(device)
        manifest = load_manifest(manifest_path)
        # Decoded in parallel, like extraction: the bare forward's inputs are not timed.
        decoded = DataLoader(
            CohortImages(manifest.paths, encoder.preprocessing.prepare),
            batch_size=args.batch_size,
            num_workers=args.workers if args.workers is not None else default_workers(),
            collate_fn=collate,
        )
        pixels = torch.cat([batch.pixels for batch in decoded]).to(device)
        precision = "bf16" if device.type == "cuda" else "fp32"
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        sync = device_sync(device)
        with autocast:
            bare_forward(encoder, pixels[: args.batch_size], args.batch_size, sync)  # warm-up
        t_bare, t_extract = [], []
        for rep in range(args.repeats):
            with autocast:
                t_bare.append(bare_forward(encoder, pixels, args.batch_size, sync))
            store = work / f"store-{rep}.zarr"
            start = time.perf_counter()
            extract(
                manifest_path,
                encoder,
                store,
                batch_size=args.batch_size,
                num_workers=args.workers,
                device=str(device),
                precision=precision,
                progress=False,
                log=lambda *_: None,
            )
            t_extract.append(time.perf_counter() - start)
        bare, full = min(t_bare), min(t_extract)
        n = len(manifest)
        workers = args.workers if args.workers is not None else default_workers()
        print(
            f"encoder {args.encoder} ({sum(p.numel() for p in encoder.parameters()) / 1e6:.1f}M "
            f"params, input {encoder.preprocessing.input_size} px), {n} images, batch "
            f"{args.batch_size}, {workers} decode workers, device {device}, {precision}, "
            f"{torch.get_num_threads()} threads"
        )
        print(f"bare forward  {bare:7.2f} s  {n / bare:7.1f} images/s")
        print(f"extraction    {full:7.2f} s  {n / full:7.1f} images/s")
        print(f"ratio extraction / bare forward = {full / bare:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
