"""A cross-validated fine-tune, end to end: the function behind ``probes finetune``.

::

    from probes.finetune import FinetuneConfig, finetune

    run = finetune("cohort/manifest.csv", "rad-dino", "ft-out", labels=["pneumothorax"])
    run.results            # one row per round x label, as probes linear

Per round of the split (the probes' own folds for the same ``folds``/``seed``/manifest): train on
the training rows, early-stop on the validation fold's loss, load the best checkpoint, predict
the validation and test rows. ``out`` then holds what ``probes linear`` / ``probes seg`` write
(predictions, results.csv, summary.csv, folds.csv, run.json) plus ``checkpoints/``. Running the
same call again on the same ``out`` resumes: finished rounds are read back, an interrupted one
continues from its last epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from probes.core.protocol import folds_table, make_split
from probes.core.protocol import provenance as run_provenance
from probes.core.run import CLASSIFICATION, SEGMENTATION, Inputs, Run, RunSpec, SplitSpec, TaskSpec
from probes.core.splits import Split
from probes.finetune import checkpoint as ckpt
from probes.finetune.config import FinetuneConfig
from probes.finetune.data import (
    ManifestRows,
    Plan,
    cohort_images,
    default_workers,
)
from probes.finetune.distributed import Context, barrier, setup, teardown
from probes.finetune.model import build_model
from probes.finetune.predict import (
    PROBE_NAME,
    Provenance,
)
from probes.finetune.rounds import chosen_rounds, run_round
from probes.finetune.tasks import TASK_SETUPS
from probes.finetune.train import EpochHook, Trainer


@dataclass(eq=False)
class FinetuneRun(Run):
    """What :func:`finetune` produced: a :class:`~probes.core.run.Run` (written to its folder,
    re-opened by ``Run.open``), plus what only this process knows.

    Attributes:
        rounds: per round run, ``{"round", "epochs_run", "best_epoch", "history",
            "resumed_from"}``. config: the settings (``encoder_lr`` resolved).
        folds_split: the :class:`~probes.core.splits.Split`. rows: the manifest rows.
    """

    rounds: list[dict[str, Any]] = field(default_factory=list)
    config: FinetuneConfig | None = None
    folds_split: Split | None = None
    rows: ManifestRows | None = None

    @property
    def out(self) -> Path:
        """The run folder."""
        assert self.path is not None
        return self.path


def encoder_spec(name: str) -> str:
    """``--encoder`` as the registry reads it: a preset name or generic spec as is, else an
    existing folder as ``hf:<folder>`` (a Hugging Face checkpoint saved there)."""
    from embedcache.encoders import resolve_preset

    try:
        resolve_preset(name)
        return name
    except KeyError:
        folder = Path(name).expanduser()
        return f"hf:{folder.resolve()}" if folder.is_dir() else name


def store_key(encoder: Any, precision: str, device: torch.device | str = "cpu") -> str:
    """The key ``embedcache extract`` gives this encoder's group on ``device`` (default float16
    storage), so fine-tune rows line up with the probe rows of the same weights."""
    from embedcache.extract.runner import key_material
    from embedcache.store.layout import encoder_key

    material = key_material(encoder, precision, "float16", torch.device(device))
    return encoder_key(encoder.preset.name, material)


def finetune(
    manifest: str | os.PathLike,
    encoder: str,
    out: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    mask: str | None = None,
    config: FinetuneConfig | None = None,
    weights: str | None = None,
    init_seed: int = 0,
    root: str | os.PathLike | None = None,
    folds: str = "patient",
    n_folds: int = 5,
    rounds: Sequence[int] | None = None,
    device: str | None = "auto",
    num_workers: int | None = None,
    mask_format: str = "auto",
    image_size: tuple[int, int] | None = None,
    height_column: str | None = None,
    width_column: str | None = None,
    both_empty: str = "one",
    save_masks: bool = False,
    n_boot: int = 1000,
    fmt: str = "parquet",
    allow_leakage: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
    on_epoch: EpochHook | None = None,
    ctx: Context | None = None,
) -> FinetuneRun:
    """Fine-tune ``encoder`` with the probes' head on every round of the split of ``manifest``.

    Args:
        manifest: manifest file (every image must be readable).
        encoder: preset name, generic spec (``hf:DIR``) or a checkpoint folder.
        out: run folder (created; an existing one with checkpoints of the same run resumes).
        labels: binary label columns (classification; several train one multi-label head).
        mask: mask column (segmentation): paths, SIIM RLE or CheXmask RLE (``mask_format``,
            ``image_size``, ``height_column``, ``width_column`` as ``probes seg``).
        config: settings (:class:`FinetuneConfig`); its ``task`` is set from labels / mask.
        weights: weights for a preset (hub id, folder, ``none``); ``None`` = the preset's own.
        init_seed: seed of ``weights="none"`` (random init); 0, as ``embedcache extract --seed``,
            so that a fine-tune starts from the very encoder a probe was extracted with.
        folds, n_folds: as the probes (``patient``, ``reference`` or a manifest column); the
            run's ``config.seed`` seeds them.
        rounds: indices of the rounds to run (default all).
        device: ``auto``, ``cpu``, ``cuda``... (under torchrun: this process's GPU).
        num_workers: image decoding workers; ``None`` = one per spare core (at most 8).
        save_masks: segmentation predictions also carry ``pred_rle``, each predicted mask as
            SIIM RLE at the mask size (the report's overlays), as ``probes seg --save-masks``.
        n_boot: bootstrap resamples per round for the CIs of results.csv.
        num_threads: torch CPU threads during the run (restored after); ``None`` leaves them.
            On a small shared machine one thread can be several times faster than two.
        on_epoch: called after each epoch's checkpoint (progress, or tests that stop a run).
        ctx: a DDP context from :func:`probes.finetune.distributed.setup`; ``None`` sets one
            up for this call (joining torchrun's group when launched by torchrun).

    Raises:
        ValueError: neither or both of labels / mask, a label that is not binary, a checkpoint
            folder of a different run; LeakageError: patients shared across sets of a round.
    """
    if (labels is None) == (mask is None) or (labels is not None and not labels):
        raise ValueError("give label column(s) for classification or a mask column, not both")
    task = "classification" if labels is not None else "segmentation"
    own_ctx = ctx is None
    ctx = setup(device) if ctx is None else ctx
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _finetune(
            manifest,
            encoder,
            Path(out),
            task=task,
            labels=list(labels or []),
            mask=mask,
            config=dataclasses.replace(config or FinetuneConfig(), task=task),
            weights=weights,
            init_seed=init_seed,
            root=root,
            folds=folds,
            n_folds=n_folds,
            rounds=rounds,
            num_workers=default_workers() if num_workers is None else num_workers,
            mask_options={
                "kind": mask_format,
                "image_size": image_size,
                "height_column": height_column,
                "width_column": width_column,
            },
            both_empty=both_empty,
            save_masks=save_masks,
            n_boot=n_boot,
            fmt=fmt,
            allow_leakage=allow_leakage,
            trust_remote_code=trust_remote_code,
            progress=progress,
            on_epoch=on_epoch,
            ctx=ctx,
        )
    finally:
        torch.set_num_threads(threads)
        if own_ctx:
            teardown(ctx)


def _finetune(
    manifest_path,
    encoder_name: str,
    out: Path,
    *,
    task: str,
    labels: list[str],
    mask: str | None,
    config: FinetuneConfig,
    weights,
    init_seed: int,
    root,
    folds: str,
    n_folds: int,
    rounds,
    num_workers: int,
    mask_options: dict[str, Any],
    both_empty: str,
    save_masks: bool,
    n_boot: int,
    fmt: str,
    allow_leakage: bool,
    trust_remote_code: bool,
    progress: bool,
    on_epoch: EpochHook | None,
    ctx: Context,
) -> FinetuneRun:
    from embedcache.encoders import build_encoder
    from embedcache.intake.manifest import load_manifest

    manifest = load_manifest(manifest_path, root, check_files=True)
    if mask is not None and mask not in manifest.table.columns:
        columns = ", ".join(map(repr, manifest.table.columns))
        raise ValueError(
            f"no mask column {mask!r} in manifest {manifest.source}; columns: {columns}"
        )
    spec = encoder_spec(encoder_name)
    try:
        pristine = build_encoder(spec, weights, trust_remote_code=trust_remote_code, seed=init_seed)
    except KeyError as exc:  # an unknown preset: the registry's message lists the known ones
        raise ValueError(exc.args[0]) from None
    config = config.resolved(pristine.preset.family)
    masks = None
    if task == "segmentation":
        from probes.segmentation.masks import MaskSource

        grid16 = pristine.grid_specs[16].shape
        mask_shape = tuple(config.mask_size or (4 * grid16[0], 4 * grid16[1]))
        config = dataclasses.replace(config, mask_size=mask_shape)
        source = MaskSource(manifest, mask, table=manifest.table, **mask_options)
        masks = source.load(
            mask_shape,
            preprocessing=pristine.preprocessing.to_dict(),
            progress=progress and ctx.main,
        )
    precision = "bf16" if config.amp and ctx.device.type == "cuda" else "fp32"
    key = store_key(pristine, precision, ctx.device)
    params = {**config.get_params(), "encoder_spec": spec, "weights": pristine.weights_id}
    feature = _feature(config)
    provenance = Provenance(key, params, config.seed, feature)
    rows = ManifestRows(manifest, key, feature)
    setup_ = TASK_SETUPS[task](
        rows,
        config,
        n_boot=n_boot,
        labels=labels,
        mask=mask,
        provenance=provenance,
        masks=masks,
        both_empty=both_empty,
        kind=mask_options["kind"],
    )
    split_spec = SplitSpec(folds, n_folds, config.seed, None, allow_leakage)
    split = make_split(rows, split_spec, setup_.strata)
    identity = {
        "encoder": key,
        "params": params,
        "manifest_digest": manifest.digest(),
        "folds": np.asarray(split.folds, dtype=np.int64).tolist(),
        "labels": labels,
        "mask": mask,
    }
    ckpt.check_fingerprint(out, identity, ctx)

    def make_model():
        return build_model(
            copy.deepcopy(pristine),
            task,
            n_outputs=setup_.n_outputs,
            seed=config.seed,
            grid=config.grid,
            mask_shape=setup_.mask_shape,
            align_corners=config.align_corners,
            seg_head=config.seg_head,
        )

    plan = Plan(ctx.world_size, ctx.rank, config.batch_size, num_workers, config.seed)
    images = cohort_images(rows, pristine.preprocessing.prepare)
    trainer = Trainer(
        config,
        setup_.objective,
        images,
        setup_.targets,
        ctx,
        plan,
        pristine.preprocessing.input_size,
    )
    tables, infos = [], []
    for index in chosen_rounds(rounds, len(split)):
        table, info = run_round(
            trainer, make_model, setup_, split, index, out, ctx, progress, on_epoch, save_masks
        )
        tables.append(table)
        infos.append(info)

    predictions = pd.concat(tables, ignore_index=True)
    results, summary = setup_.tables(predictions)
    run_spec = RunSpec(
        protocol="finetune",
        inputs=Inputs(
            store="",
            manifest=str(manifest.source),
            encoder=spec,
            feature=feature,
            root=None if root is None else str(root),
        ),
        split=dataclasses.replace(
            split_spec, rounds=None if rounds is None else tuple(int(r) for r in rounds)
        ),
        task=TaskSpec(
            CLASSIFICATION if task == "classification" else SEGMENTATION,
            labels=tuple(labels),
            mask=mask,
        ),
        probe=PROBE_NAME,
        params=params,
        options={
            "weights": weights,
            "init_seed": init_seed,
            **mask_options,
            "both_empty": both_empty,
            "save_masks": save_masks,
        },
        n_boot=n_boot,
    )
    info = run_provenance(
        run_spec,
        rows,
        split,
        store=None,  # a fine-tune reads the images, not a store
        probe=PROBE_NAME,
        params=params,
        rounds_run=[i["round"] for i in infos],
        epochs_run={str(i["round"]): i["epochs_run"] for i in infos},
        best_epoch={str(i["round"]): i["best_epoch"] for i in infos},
        resumed_from={str(i["round"]): i["resumed_from"] for i in infos},
        history={str(i["round"]): i["history"] for i in infos},
        feature=feature,
        encoder_spec=spec,
        encoder_preset=pristine.preset.name,
        encoder_family=pristine.preset.family,
        preprocessing=pristine.preprocessing.to_dict(),
        weights=pristine.weights_id,
        encoder_lr=config.encoder_lr,
        head_lr=config.head_lr,
        layer_decay=config.layer_decay,
        precision=precision,
        device=str(ctx.device),
        world_size=ctx.world_size,
        **setup_.fields,
    )
    run = FinetuneRun(
        spec=run_spec,
        predictions=predictions,
        results=results,
        summary=summary,
        folds=folds_table(rows, split),
        info=info,
        rounds=infos,
        config=config,
        folds_split=split,
        rows=rows,
    )
    if ctx.main:
        run.write(out, fmt)
    else:
        run.path = out
    barrier(ctx)
    return run


def _feature(config: FinetuneConfig) -> str:
    """What the head reads: ``global``, the grid choice, or ``<name>-head``."""
    if config.task == "classification":
        return "global"
    if config.seg_head != "linear":
        return f"{config.seg_head}-head"
    from probes.core.grids import grid_names

    return "+".join(grid_names(config.grid))
