"""Bare-forward speed of encoder presets: images/s at full size, random weights.

Each preset is built with ``--weights none`` (the full architecture, offline) and fed random
``[0, 1]`` batches of its input size under ``torch.inference_mode``. Only ``Encoder.forward`` is
timed (normalisation + the model; no decoding, resizing or store writes): the ceiling extraction
can reach on this machine. One warm-up batch, then batches until at least ``--seconds`` and
``--min-batches`` have passed. Without preset names, every registered preset.

    python benchmarks/encoder_speed.py [PRESET ...] [--batch 2] [--threads 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from embedcache.encoders import build_encoder, list_presets


def images_per_second(
    name: str, batch: int, seconds: float, min_batches: int, device: str
) -> tuple[float, int, int]:
    """``(images/s, parameters, input size)`` of one preset's bare forward pass."""
    encoder = build_encoder(name, weights="none").to(device)
    size = encoder.preprocessing.input_size
    pixels = torch.rand(batch, 1, size, size, device=device)
    params = sum(p.numel() for p in encoder.parameters())

    def run() -> None:
        feats = encoder(pixels)
        for level, spec in encoder.grid_specs.items():  # a benchmark of wrong shapes is no use
            assert tuple(feats.grids[level].shape) == (batch, *spec.shape), (level, spec)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        run()
        done, start = 0, time.perf_counter()
        while done < min_batches or time.perf_counter() - start < seconds:
            run()
            done += 1
        elapsed = time.perf_counter() - start
    return done * batch / elapsed, params, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help="preset names (default: all registered)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timed seconds")
    parser.add_argument("--min-batches", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    names = args.presets or [p.name for p in list_presets()]
    print(f"device {args.device}, {args.threads} threads, batch {args.batch}, random weights")
    print(f"{'preset':<28} {'params (M)':>10} {'input':>6} {'images/s':>9}")
    for name in names:
        rate, params, size = images_per_second(
            name, args.batch, args.seconds, args.min_batches, args.device
        )
        print(f"{name:<28} {params / 1e6:>10.1f} {size:>6} {rate:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
