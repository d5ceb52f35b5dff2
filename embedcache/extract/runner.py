"""One pass of one encoder over a cohort into the store: ``embedcache extract``.

The same function runs alone or as one rank of ``torchrun`` (see
:mod:`embedcache.extract.distributed`): rank 0 opens the group and records provenance, every
rank extracts its own shards.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from embedcache.encoders.base import Encoder
from embedcache.encoders.registry import build_encoder
from embedcache.extract.batches import Batch, CohortImages, collate, plan_batches
from embedcache.extract.distributed import (
    DistributedSetupError,
    RankFailedError,
    Ranks,
    rank_device,
    rank_from_env,
    rank_rows,
)
from embedcache.extract.group import finish_run, open_group
from embedcache.extract.writer import ShardWriter
from embedcache.intake.images import ImageReadError
from embedcache.intake.manifest import Manifest, load_manifest
from embedcache.store.api import StoreGroup, open_store
from embedcache.store.backends import resolve_format
from embedcache.store.faults import store_writes
from embedcache.store.layout import DEFAULT_ROWS_PER_SHARD, encoder_key, tap_name
from embedcache.store.lock import GroupLock
from embedcache.store.urls import locate

# Re-exported: callers and tests used these from here before group.py existed.
__all__ = ["ExtractResult", "extract", "open_group", "result_dict"]


@dataclass(frozen=True)
class ExtractResult:
    """What one ``extract`` call did (under torchrun: all ranks together, on every rank).

    Attributes:
        store: the store path or URL; key: the encoder group written.
        n_rows: rows in the manifest; already_done: rows done before this run;
        written: rows extracted now; skipped: rows recorded as unreadable now.
        seconds: wall time of the extraction loop (the slowest rank); images_per_s:
            written / seconds.
        random_weights: True when the encoder was randomly initialised (numbers mean nothing).
        world_size: processes that extracted (1 without torchrun).
    """

    store: str
    key: str
    n_rows: int
    already_done: int
    written: int
    skipped: int
    seconds: float
    images_per_s: float
    random_weights: bool
    world_size: int = 1


#: Most decode workers per process. From benchmarks/decode.py (docs/benchmarks.md): one worker
#: reads and resizes a 1024 px radiograph to 518 px at ~110-210 images/s when the file is PNG or
#: uncompressed DICOM, but ~8 (JPEG 2000) to ~11 (JPEG-LS) images/s when it is compressed, as
#: hospital DICOM often is. A ViT-B at 518 px in bf16 is expected to run several hundred images/s
#: on one current GPU: 3-5 workers suffice for uncompressed files, 40-65 would be needed for
#: compressed ones. So the default takes every core (one left per rank for its forward pass);
#: this cap only bounds memory on many-core hosts (each worker holds ``prefetch_factor`` batches).
MAX_DECODE_WORKERS = 32


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``bf16`` autocast on CUDA by default, ``fp32`` on CPU (CPU bf16 is slow and lossy)."""
    if precision in (None, "auto"):
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16, fp32 or auto, got {precision!r}")
    return precision


def key_material(
    encoder: Encoder, precision: str, dtype: str, device: torch.device
) -> dict[str, Any]:
    """What the store key of this extraction digests: the encoder's material, the compute
    precision, the storage dtype and, off the CPU, the device kind (``cuda``): GPU kernels
    (bf16, cuDNN algorithms) give other last bits than the CPU, so a group started on one is
    never resumed on the other. CPU groups carry no device entry (their keys predate it)."""
    material = {**encoder.key_material(), "precision": precision, "dtype": dtype}
    if device.type != "cpu":
        material["device"] = device.type
    return material


@contextlib.contextmanager
def exact_fp32(device: torch.device, precision: str) -> Iterator[None]:
    """Within: no TF32 on CUDA when ``precision`` is ``fp32`` (cuDNN convolutions use TF32 by
    default, and ``set_float32_matmul_precision("high")`` lets matmuls); the settings are
    restored afterwards. A no-op for bf16 or off CUDA."""
    if device.type != "cuda" or precision != "fp32":
        yield
        return
    saved = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[2])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]


def default_workers(ranks_per_node: int = 1, cores: int | None = None) -> int:
    """Decode workers per process: the node's ``cores`` shared among its ranks, one left to
    each rank's forward pass, at most :data:`MAX_DECODE_WORKERS`."""
    cores = cores if cores is not None else (os.cpu_count() or 2)
    return max(1, min(MAX_DECODE_WORKERS, cores // max(1, ranks_per_node) - 1))


def _silent(*_: object) -> None:
    pass


def extract(
    manifest: str | os.PathLike | Manifest,
    encoder: str | Encoder,
    out: str | os.PathLike,
    *,
    weights: str | None = None,
    root: str | os.PathLike | None = None,
    fmt: str | None = None,
    dtype: str = "float16",
    batch_size: int = 16,
    num_workers: int | None = None,
    device: str | None = "auto",
    precision: str | None = "auto",
    skip_bad: bool = False,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    break_lock: bool = False,
    trust_remote_code: bool = False,
    seed: int = 0,
    taps: str | list[int] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
) -> ExtractResult:
    """Extract global embeddings and stride-16/32 grids of every manifest image into ``out``.

    Resumable: rows already ``done`` are kept; an interrupted run (even kill -9) continues where
    its last whole shard was written and ends with a store identical to an uninterrupted run.
    Under ``torchrun`` every rank calls this; the ranks split the pending shards and write them
    into the same store (see :mod:`embedcache.extract.distributed`).

    Args:
        manifest: manifest file (CSV/Parquet) or a loaded :class:`Manifest`.
        encoder: preset name / generic spec (``rad-dino``, ``hf:DIR``) or a built encoder.
        out: store path (zarr folder, or ``.h5`` file) or the URL of a zarr store
            (``s3://bucket/cohort.zarr``, ``gs://...``, ``file://...``).
        weights: hub id, local folder, ``none`` (random init), or ``None`` for the preset's own.
        skip_bad: record unreadable images (id and reason) and go on, instead of stopping at the
            first one with its id and path.
        dtype: storage dtype, ``float16`` (default; refuses values beyond its range) or
            ``float32``.
        precision: compute precision, ``bf16`` (CUDA autocast) or ``fp32``; part of the key.
        rows_per_shard: images per shard file for a new group.
        taps: also store the class (or pooled) token of some blocks as ``tap<b>`` arrays:
            ``last4`` or block indices (``8,9,10,11``); single-scale ViTs only; part of the key
            (see :meth:`~embedcache.encoders.base.Encoder.set_taps`).
        storage_options: fsspec options for a URL ``out``; ``None`` reads
            ``$EMBEDCACHE_STORAGE_OPTIONS`` (JSON).

    Raises:
        ImageReadError: an unreadable image without ``skip_bad`` (rows written so far are kept).
        StoreMismatchError: the group exists but was made from a different manifest.
        StoreLockedError: another live process is writing this group.
        RankFailedError: under torchrun, another rank stopped with an error.
    """
    info = rank_from_env()
    if not info.is_main:  # one voice per job
        log, progress = _silent, False
    location = locate(out, storage_options)
    fmt = resolve_format(location, fmt)  # refuse a bad --out before loading anything
    if info.distributed and fmt == "hdf5":
        raise DistributedSetupError(
            f"{location}: an HDF5 store takes one writing process; under torchrun use a zarr "
            "store (the default; any --out not ending in .h5)"
        )
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest, root, check_files=not skip_bad)
    if isinstance(encoder, str):
        encoder = build_encoder(encoder, weights, trust_remote_code=trust_remote_code, seed=seed)
    if taps:
        encoder.set_taps(taps)
    random_weights = "random_init" in encoder.weights_id
    if random_weights:
        log(
            f"warning: {encoder.preset.name} is randomly initialised (--weights none): "
            "its embeddings carry no pretrained knowledge and probe results mean nothing."
        )
    dev = resolve_device(rank_device(device, info))
    precision = resolve_precision(precision, dev)
    material = key_material(encoder, precision, dtype, dev)
    key = encoder_key(encoder.preset.name, material)
    if num_workers is None:
        num_workers = default_workers(info.local_world_size)
    with Ranks(info, dev) as ranks, contextlib.ExitStack() as stack:
        # Rank 0 alone locks, creates or checks the group and reads what is pending; sharing
        # that is the barrier after which the other ranks open the group.
        group: StoreGroup | None = None
        setup: dict[str, Any] = {}
        failure: Exception | None = None
        if ranks.is_main:
            try:
                with store_writes(location):
                    store = stack.enter_context(open_store(location, "a", fmt))
                    stack.enter_context(GroupLock(location, key, break_lock=break_lock))
                    group = open_group(
                        store,
                        encoder,
                        manifest,
                        material,
                        dtype=dtype,
                        rows_per_shard=rows_per_shard,
                        log=log,
                    )
                    done = group.done
                    group.begin_writing(done, info.world_size)
                setup = {"pending": np.flatnonzero(~done).tolist()}
            except Exception as err:
                if not info.distributed:
                    raise
                failure, setup = err, {"error": _describe(err)}
        setup = ranks.share(setup)
        if failure is not None:
            raise failure
        if "error" in setup:
            raise RankFailedError(f"rank 0 could not open the group: {setup['error']}")
        if group is None:
            with store_writes(location):
                group = stack.enter_context(open_store(location, "a", fmt)).group(key)
            group.records_counts = False  # rank 0 records the counts (progress.py)
        pending = np.asarray(setup["pending"], dtype=np.int64)
        mine = rank_rows(pending, group.layout.rows_per_shard, info)
        try:
            report = _run(
                group,
                mine,
                encoder,
                manifest,
                dev,
                precision,
                batch_size,
                num_workers,
                skip_bad,
                progress,
                defer_reasons=info.distributed,
            )
        except Exception as err:
            if not info.distributed:
                _end_after_failure(group)
                raise
            failure, report = err, {"error": _describe(err)}
        reports = ranks.gather(report)
        if ranks.is_main:
            with store_writes(location):
                finish_run(group, reports, manifest, info.world_size, n_pending=len(pending))
        ranks.barrier()
    if failure is not None:
        raise failure
    failed = [f"rank {r}: {rep['error']}" for r, rep in enumerate(reports) if "error" in rep]
    if failed:
        raise RankFailedError("; ".join(failed))
    written = sum(rep["written"] for rep in reports)
    seconds = max(rep["seconds"] for rep in reports)
    return ExtractResult(
        store=str(location),
        key=key,
        n_rows=len(manifest),
        already_done=len(manifest) - len(pending),
        written=written,
        skipped=sum(rep["skipped"] for rep in reports),
        seconds=seconds,
        images_per_s=written / seconds if seconds > 0 else 0.0,
        random_weights=random_weights,
        world_size=info.world_size,
    )


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _end_after_failure(group: StoreGroup) -> None:
    """After a one-process run stopped with an error: record the counts (recounted: the error
    may have come between a shard's flags and its count) and clear the ``writing`` mark. Best
    effort: where the store cannot take even that (a full disk), the mark stays, readers treat
    the counts as a lower bound and the next run recounts."""
    with contextlib.suppress(Exception):
        group.end_writing(recount=True)


def _run(
    group: StoreGroup,
    pending: np.ndarray,
    encoder: Encoder,
    manifest: Manifest,
    dev: torch.device,
    precision: str,
    batch_size: int,
    num_workers: int,
    skip_bad: bool,
    progress: bool,
    *,
    defer_reasons: bool,
) -> dict[str, Any]:
    """Extract ``pending`` rows (sorted) into ``group``; returns a JSON-able report:
    ``written``, ``skipped``, ``seconds`` and (with ``defer_reasons``) ``skip_reasons``."""
    batches = plan_batches(pending, group.layout.rows_per_shard, batch_size)
    loader = DataLoader(
        CohortImages(manifest.paths, encoder.preprocessing.prepare),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    encoder.to(dev)
    ids = group.ids
    writer = ShardWriter(group, pending, defer_reasons=defer_reasons)
    autocast = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    start = time.perf_counter()
    bar = tqdm(total=len(pending), unit="img", desc=group.key, disable=not progress)
    try:
        with exact_fp32(dev, precision):
            for batch in loader:
                _handle_failures(batch, writer, ids, manifest, skip_bad)
                if batch.pixels is not None:
                    with torch.inference_mode(), autocast:
                        feats = encoder(batch.pixels.to(dev, non_blocking=True))
                    writer.put(batch.rows, _to_numpy(feats))
                bar.update(len(batch.rows) + len(batch.failed))
    finally:
        bar.close()
        writer.close()
    return {
        "written": writer.rows_written,
        "skipped": writer.rows_skipped,
        "seconds": time.perf_counter() - start,
        "skip_reasons": writer.skip_reasons,
        "host": platform.node(),
    }


def _handle_failures(
    batch: Batch, writer: ShardWriter, ids: np.ndarray, manifest: Manifest, skip_bad: bool
) -> None:
    if not batch.failed:
        return
    if skip_bad:
        writer.skip(batch.failed, ids)
        return
    row, reason = batch.failed[0]
    raise ImageReadError(
        manifest.paths[row],
        f"{reason} (manifest row {row + 1}, image_id {str(ids[row])!r}); fix or remove it, or re-run "
        "with --skip-bad to record it and go on. Rows already written are kept.",
    )


def _to_numpy(feats: Any) -> dict[str, np.ndarray]:
    out = {"global": feats.embedding}
    out.update({f"grid{level}": grid for level, grid in feats.grids.items()})
    out.update({tap_name(block): tap for block, tap in feats.taps.items()})
    return {name: t.float().cpu().numpy() for name, t in out.items()}


def result_dict(result: ExtractResult) -> dict[str, Any]:
    return asdict(result)
