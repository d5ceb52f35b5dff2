"""Extraction wall time against a bare forward pass of the same encoder over the same images.

The bare forward is the floor: images already decoded, resized and stacked in memory, the
encoder run batch by batch under ``inference_mode``. Extraction adds decoding (DICOM/PNG),
resizing, the DataLoader, the store writes and their bookkeeping; the ratio shows what they
cost once overlapped with compute.

    python benchmarks/extraction.py [--encoder dinov2-small] [--images 96] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from embedcache.encoders import build_encoder
from embedcache.extract import extract
from embedcache.intake import load_manifest, read_image
from embedcache.phantoms import CohortSpec, make_cohort


def bare_forward(encoder, pixels: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(pixels), batch_size):
            encoder(pixels[i : i + batch_size])
    return time.perf_counter() - start


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
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="embedcache-bench-"))
    try:
        # One image per patient so the cohort has exactly --images images.
        spec = CohortSpec(n_patients=args.images, images_per_patient=(1, 1), size=args.size)
        manifest_path = make_cohort(work / "cohort", spec)
        encoder = build_encoder(args.encoder, args.weights)
        device = torch.device(
            "cuda"
            if args.device == "auto" and torch.cuda.is_available()
            else ("cpu" if args.device == "auto" else args.device)
        )
        encoder.to(device)
        manifest = load_manifest(manifest_path)
        pixels = torch.stack(
            [encoder.preprocessing.prepare(read_image(p)) for p in manifest.paths]
        ).to(device)
        precision = "bf16" if device.type == "cuda" else "fp32"
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with autocast:
            bare_forward(encoder, pixels[: args.batch_size], args.batch_size)  # warm-up
        t_bare, t_extract = [], []
        for rep in range(args.repeats):
            with autocast:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_bare.append(bare_forward(encoder, pixels, args.batch_size))
                if device.type == "cuda":
                    torch.cuda.synchronize()
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
        print(
            f"encoder {args.encoder} ({sum(p.numel() for p in encoder.parameters()) / 1e6:.1f}M "
            f"params, input {encoder.preprocessing.input_size} px), {n} images of "
            f"{args.size} px, batch {args.batch_size}, device {device}, {precision}, "
            f"{torch.get_num_threads()} threads"
        )
        print(f"bare forward  {bare:7.2f} s  {n / bare:7.1f} images/s")
        print(f"extraction    {full:7.2f} s  {n / full:7.1f} images/s")
        print(f"ratio extraction / bare forward = {full / bare:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
