"""Decode throughput of one DataLoader worker: images/s of reading a radiograph (PNG or DICOM)
and resizing it to an encoder's input, so that the number of decode workers a GPU needs can be
computed: ``workers = ceil(GPU images/s / images/s per worker)``.

A worker is one process with one torch thread (the DataLoader sets that in its workers); this
script times the same work in one process, image by image, on phantoms of ``--size`` pixels
written in the formats the intake reads: 8-bit PNG, 12-bit DICOM (MONOCHROME2 and MONOCHROME1,
uncompressed), and the MONOCHROME2 files recompressed losslessly as hospitals often store them
(JPEG 2000, JPEG-LS, RLE; a syntax whose encoder is not installed is left out). The phantoms are
made, and recompressed, before the clock starts.

    python benchmarks/decode.py [--images 32] [--size 1024] [--encoder rad-dino]
        [--gpu-rates 200 500 1000]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from embedcache.encoders.registry import resolve_preset
from embedcache.intake import load_manifest, read_image
from embedcache.phantoms import CohortSpec, make_cohort

FORMATS = ("png", "dicom-mono2", "dicom-mono1")
#: Lossless transfer syntaxes the MONOCHROME2 phantoms are recompressed into (pydicom names).
COMPRESSED = {
    "dicom-j2k": "JPEG2000Lossless",
    "dicom-jpegls": "JPEGLSLossless",
    "dicom-rle": "RLELossless",
}


def recompress(paths: list[str], out: Path, syntax: str) -> list[str] | None:
    """Copies of the DICOM ``paths`` in transfer ``syntax`` under ``out``; ``None`` when no
    encoder for it is installed."""
    import pydicom
    import pydicom.uid

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        ds = pydicom.dcmread(path)
        try:
            ds.compress(getattr(pydicom.uid, syntax))
        except (NotImplementedError, RuntimeError, ImportError):
            return None
        target = out / Path(path).name
        ds.save_as(target, enforce_file_format=True)
        written.append(str(target))
    return written


def time_decode(paths: list[str], prepare, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds per image: ``(read, read + resize)``."""
    best_read = best_total = math.inf
    for _ in range(repeats):
        read = total = 0.0
        for path in paths:
            start = time.perf_counter()
            image = read_image(path)
            middle = time.perf_counter()
            prepare(image)
            end = time.perf_counter()
            read, total = read + (middle - start), total + (end - start)
        best_read, best_total = min(best_read, read), min(best_total, total)
    return best_read / len(paths), best_total / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per format")
    parser.add_argument("--size", type=int, default=1024, help="phantom side, pixels")
    parser.add_argument("--encoder", default="rad-dino", help="preset whose resize is timed")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--gpu-rates",
        type=float,
        nargs="+",
        default=[200.0, 500.0, 1000.0],
        help="GPU forward rates (images/s) to size the worker pool for",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    preprocessing = resolve_preset(args.encoder).preprocessing
    work = Path(tempfile.mkdtemp(prefix="embedcache-decode-"))
    try:
        print(
            f"{args.images} phantoms of {args.size} px per format -> {args.encoder} input "
            f"{preprocessing.input_size} px ({preprocessing.resize}, {preprocessing.interpolation}"
            f"), one process, 1 torch thread, best of {args.repeats}, {os.cpu_count()} cores"
        )
        print(f"{'format':<12} {'read ms':>8} {'resize ms':>9} {'images/s':>9}  workers for GPU")
        cohorts = {}
        for fmt in FORMATS:
            spec = CohortSpec(
                n_patients=args.images,
                images_per_patient=(1, 1),
                size=args.size,
                formats=(fmt,),
            )
            manifest = make_cohort(work / fmt, spec, workers=os.cpu_count() or 1)
            cohorts[fmt] = load_manifest(manifest).paths
        for fmt, syntax in COMPRESSED.items():
            paths = recompress(cohorts["dicom-mono2"], work / fmt, syntax)
            if paths is not None:
                cohorts[fmt] = paths
        for fmt, paths in cohorts.items():
            read, total = time_decode(paths, preprocessing.prepare, args.repeats)
            rate = 1 / total
            need = ", ".join(f"{r:g}/s: {math.ceil(r / rate)}" for r in args.gpu_rates)
            print(f"{fmt:<12} {1e3 * read:8.1f} {1e3 * (total - read):9.1f} {rate:9.1f}  {need}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
