"""``probes finetune``: cross-validated full fine-tuning of one encoder.

::

    probes finetune cohort/manifest.csv --encoder rad-dino --label pneumothorax --out ft/
    probes finetune m.csv --encoder segformer-b4 --mask heart_mask --out ft-seg/
    torchrun --nproc-per-node 4 -m probes finetune m.csv --encoder rad-dino --label ptx --out ft/

A thin shell over :func:`probes.finetune.finetune`. The run folder matches ``probes linear`` /
``probes seg`` (predictions, results.csv, summary.csv, folds.csv, run.json) plus
``checkpoints/``; the same command on the same ``--out`` resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import os
import sys

from probes.core.splits import REFERENCE_SEED

__all__ = ["execute", "register", "run_finetune"]


def register(subparsers) -> None:
    """Add ``probes finetune`` to a ``probes`` command line."""
    p = subparsers.add_parser(
        "finetune",
        help="full fine-tuning of an encoder with the probes' heads, on the probes' folds",
        description="Train the encoder and the probe's head together (AdamW, encoder and head "
        "learning rates apart), round by round of the probes' split; early stopping on the "
        "validation fold, best epoch used for test. Resumes from --out's checkpoints.",
    )
    p.add_argument("manifest", help="manifest CSV/TSV/Parquet (every image must be readable)")
    p.add_argument("--root", help="folder for the manifest's relative paths")
    p.add_argument(
        "--encoder",
        required=True,
        help="preset name (rad-dino, segformer-b4, ...), generic spec (hf:ID) or checkpoint folder",
    )
    p.add_argument("--weights", help="weights for a preset: hub id, folder, or 'none' (random)")
    p.add_argument(
        "--init-seed",
        type=int,
        default=0,
        help="seed of --weights none (default 0, as embedcache extract --seed)",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow hub code (off)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--label", action="append", help="binary label column (repeatable)")
    target.add_argument("--mask", help="mask column (segmentation): paths or RLE strings")

    seg = p.add_argument_group("segmentation")
    seg.add_argument(
        "--head",
        choices=("linear", "segformer"),
        help="segmentation head: the probe's 1x1 convolution + upsampling on --grid (linear), "
        "or SegFormer's decode head (segformer; SegFormer encoders only). Default: segformer "
        "for SegFormer encoders (the reference baseline), linear otherwise",
    )
    seg.add_argument(
        "--grid",
        default="16",
        choices=("16", "32", "16+32", "grid16", "grid32", "grid16+grid32"),
        help="patch grid(s) the linear head reads (default 16)",
    )
    seg.add_argument("--mask-format", default="auto", choices=("auto", "path", "siim", "chexmask"))
    seg.add_argument("--image-size", help="HxW raster of every RLE")
    seg.add_argument("--height-column", help="column with each RLE raster's height")
    seg.add_argument("--width-column", help="column with each RLE raster's width")
    seg.add_argument("--mask-size", help="training/scoring resolution N or HxW (4x grid16)")
    seg.add_argument("--class-weights", help="cross-entropy weights, e.g. 1,5 (pneumothorax)")
    seg.add_argument("--dice-weight", type=float, default=0.0, help="soft-Dice loss weight (0)")
    seg.add_argument(
        "--align-corners", default="true", choices=("true", "false"), help="(reference: true)"
    )
    seg.add_argument("--both-empty", default="one", choices=("one", "exclude"))
    seg.add_argument("--save-masks", action="store_true", help="add predicted masks as RLE")

    opt = p.add_argument_group("optimisation")
    opt.add_argument(
        "--encoder-lr",
        type=float,
        help="encoder learning rate (default: 1e-7, the reference; SegFormer 1e-6 "
        "classification, 1e-5 segmentation); 0 freezes the encoder",
    )
    opt.add_argument("--head-lr", type=float, default=1e-4, help="head learning rate (1e-4)")
    opt.add_argument("--layer-decay", type=float, help="layer-wise lr decay, e.g. 0.75 (off)")
    opt.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW (1e-2)")
    opt.add_argument("--epochs", type=int, default=50, help="most epochs (50; reference 500)")
    opt.add_argument("--patience", type=int, default=5, help="early-stopping patience (5)")
    opt.add_argument("--min-delta", type=float, default=1e-4, help="early stopping (1e-4)")
    opt.add_argument("--batch-size", type=int, default=16, help="images per step and process")
    opt.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (1; 0 off)")
    opt.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    opt.add_argument("--warmup-epochs", type=int, default=0)
    opt.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory")
    opt.add_argument("--augment", action="store_true", help="mild affine + intensity jitter (off)")
    opt.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")

    p.add_argument(
        "--folds",
        default="patient",
        help="'patient', 'reference' or a manifest column, as the probes (same folds for the "
        "same manifest, --folds, --n-folds and --seed)",
    )
    p.add_argument("--n-folds", type=int, default=5, help="folds for patient/reference (5)")
    p.add_argument("--seed", type=int, default=REFERENCE_SEED, help="seed (default 5656)")
    p.add_argument("--rounds", type=int, nargs="+", help="run only these rounds (0-based)")
    p.add_argument("--device", default="auto", help="torch device (auto: CUDA when present)")
    p.add_argument("--workers", type=int, help="image decoding workers (default: spare cores)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per round")
    p.add_argument("--format", default="parquet", choices=("parquet", "csv"))
    p.add_argument("--out", default="finetune-results", help="run folder")
    p.add_argument(
        "--allow-leakage", action="store_true", help="warn instead of failing on patient leakage"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_finetune)


def config_from_args(args: argparse.Namespace):
    """The :class:`~probes.finetune.config.FinetuneConfig` the options describe."""
    from probes.core.grids import grid_names
    from probes.core.sizes import parse_size
    from probes.finetune.config import FinetuneConfig

    class_weights = None
    if args.class_weights:
        try:
            class_weights = tuple(float(v) for v in args.class_weights.split(","))
        except ValueError:
            raise ValueError(
                f"--class-weights must be numbers like 1,5: {args.class_weights!r}"
            ) from None
    return FinetuneConfig(
        task="segmentation" if args.mask else "classification",
        encoder_lr=args.encoder_lr,
        head_lr=args.head_lr,
        weight_decay=args.weight_decay,
        layer_decay=args.layer_decay,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        patience=args.patience,
        min_delta=args.min_delta,
        grad_clip=args.grad_clip,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        amp=not args.no_amp,
        grad_checkpointing=args.grad_checkpointing,
        augment=args.augment,
        seg_head=args.head,
        grid="+".join(grid_names(args.grid)),
        mask_size=parse_size(args.mask_size, "--mask-size"),
        class_weights=class_weights,
        dice_weight=args.dice_weight,
        align_corners=args.align_corners == "true",
        seed=args.seed,
    )


def run_finetune(args: argparse.Namespace) -> int:
    """``probes finetune``: fine-tune every (chosen) round, write the run folder, print the
    per-round metric with median [min, max] and mean ± sd (on the main process)."""
    run = execute(args)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, the main process prints
        print(format_run(run))
    return 0


def execute(args: argparse.Namespace):
    """:func:`probes.finetune` with the keywords the options name; returns the Run."""
    from probes.core.sizes import parse_size
    from probes.finetune.distributed import setup, teardown
    from probes.finetune.run import finetune

    ctx = setup(args.device)
    try:
        return finetune(
            args.manifest,
            args.encoder,
            args.out,
            labels=args.label,
            mask=args.mask,
            config=config_from_args(args),
            weights=args.weights,
            init_seed=args.init_seed,
            root=args.root,
            folds=args.folds,
            n_folds=args.n_folds,
            rounds=args.rounds,
            num_workers=args.workers,
            mask_format=args.mask_format,
            image_size=parse_size(args.image_size, "--image-size"),
            height_column=args.height_column,
            width_column=args.width_column,
            both_empty=args.both_empty,
            save_masks=args.save_masks,
            n_boot=args.n_boot,
            fmt=args.format,
            allow_leakage=args.allow_leakage,
            trust_remote_code=args.trust_remote_code,
            progress=not args.quiet,
            num_threads=args.threads,
            ctx=ctx,
        )
    finally:
        teardown(ctx)


def format_run(run) -> str:
    """The printed summary: the probes' own tables (AUROC per label, or Dice per round)."""
    from probes.cli.format import format_classification, format_segmentation

    lr = f"encoder lr {run.config.encoder_lr:g}, head lr {run.config.head_lr:g}"
    epochs = ", ".join(f"{i['round']}: {i['best_epoch']}/{i['epochs_run']}" for i in run.rounds)
    head = f"fine-tune ({lr}); best/run epochs per round: {epochs}"
    if run.config.task == "classification":
        return head + "\n" + format_classification(run)
    return head + "\n" + format_segmentation(run)


def main(argv: list[str] | None = None) -> int:
    """``python -m probes.cli.finetune ...``: the ``finetune`` command on its own."""
    parser = argparse.ArgumentParser(prog="probes")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
