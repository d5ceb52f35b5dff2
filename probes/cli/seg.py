"""``probes seg``: a thin shell over :func:`probes.run_seg`."""

from __future__ import annotations

import argparse
from typing import Any

from probes.cli.common import (
    add_input_options,
    add_output_options,
    add_split_options,
    add_training_options,
    input_kwargs,
    output_kwargs,
    split_kwargs,
    training_params,
)

__all__ = ["execute", "probe_params", "register", "run"]


def register(subparsers) -> None:
    """Add ``probes seg`` to a ``probes`` command line."""
    p = subparsers.add_parser(
        "seg",
        help="linear (1x1 conv) segmentation probe on cached patch grids",
        description="Cross-validated segmentation probe of one encoder group: 1x1 convolution "
        "on the patch grid, bilinear upsampling, class-weighted cross-entropy, early stopping "
        "on the validation fold. Minibatches stream from the store.",
    )
    add_input_options(p)
    p.add_argument("--mask", required=True, help="mask column: file paths or RLE strings")
    p.add_argument(
        "--mask-format",
        default="auto",
        choices=("auto", "path", "siim", "chexmask"),
        help="what the mask column holds (auto: SIIM RLE if every cell is RLE text, else paths)",
    )
    p.add_argument(
        "--image-size",
        help="HxW raster of every RLE (default: per row, from "
        "--height-column/--width-column or the image file's header)",
    )
    p.add_argument("--height-column", help="column with each RLE raster's height")
    p.add_argument("--width-column", help="column with each RLE raster's width")
    p.add_argument(
        "--mask-size",
        help="training/scoring resolution: N, HxW or 'input' (the encoder's input size, where "
        "the reference study scored Dice; the default with --reference); default: 4x the grid16 "
        "size (faster), the same for every --grid",
    )
    p.add_argument(
        "--grid",
        default="16",
        choices=("16", "32", "16+32", "grid16", "grid32", "grid16+grid32"),
        help="patch grid(s) (default 16)",
    )
    add_training_options(
        p,
        epochs="50; reference 500",
        batch="images (default 32)",
        lr="1e-3",
        patience="5",
        device=None,
    )
    p.add_argument("--class-weights", help="cross-entropy weights, e.g. 1,5 (pneumothorax)")
    p.add_argument("--dice-weight", type=float, default=0.0, help="soft-Dice loss weight (0)")
    p.add_argument(
        "--align-corners",
        default=None,
        choices=("true", "false"),
        help="bilinear upsampling convention (default and reference: true)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="the reference study's settings: lr 1e-4, batch 16, up to 500 epochs, patience "
        "5, align_corners, and masks at the encoder's input size",
    )
    p.add_argument(
        "--both-empty",
        default="one",
        choices=("one", "exclude"),
        help="Dice/IoU of an image with empty prediction and truth: 1 or left out",
    )
    add_split_options(p, "empty vs non-empty masks")
    p.add_argument("--device", default="auto", help="torch device (auto: CUDA when present)")
    p.add_argument("--save-masks", action="store_true", help="add predicted masks as RLE")
    add_output_options(p)
    p.set_defaults(func=run)


def probe_params(args: argparse.Namespace) -> dict[str, Any]:
    """The SegmentationProbe parameters the options set (``None``: the defaults, or the
    reference's with ``--reference``)."""
    chosen: dict[str, Any] = {"dice_weight": args.dice_weight or None}
    if args.align_corners is not None:
        chosen["align_corners"] = args.align_corners == "true"
    if args.class_weights:
        try:
            chosen["class_weights"] = [float(v) for v in args.class_weights.split(",")]
        except ValueError:
            raise ValueError(
                f"--class-weights must be numbers like 1,5: {args.class_weights!r}"
            ) from None
    chosen["grid"] = args.grid
    return training_params(args, **chosen)


def run(args: argparse.Namespace) -> int:
    """Run :func:`probes.run_seg` with the command's options and print Dice per round."""
    from probes.cli.format import format_segmentation

    print(format_segmentation(execute(args)))
    return 0


def execute(args: argparse.Namespace):
    """:func:`probes.run_seg` with the keywords the options name; returns the Run."""
    from probes.segmentation.run import run_seg

    return run_seg(
        **input_kwargs(args),
        mask=args.mask,
        mask_size=args.mask_size,
        reference=args.reference,
        mask_format=args.mask_format,
        image_size=args.image_size,
        height_column=args.height_column,
        width_column=args.width_column,
        **split_kwargs(args),
        probe_params=probe_params(args),
        both_empty=args.both_empty,
        save_masks=args.save_masks,
        **output_kwargs(args),
    )
