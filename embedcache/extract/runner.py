"""One pass of one encoder over a cohort into the store: ``embedcache extract``."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from embedcache.encoders.base import Encoder
from embedcache.encoders.registry import build_encoder
from embedcache.extract.batches import Batch, CohortImages, collate, plan_batches
from embedcache.extract.writer import ShardWriter
from embedcache.intake.images import ImageReadError
from embedcache.intake.manifest import Manifest, load_manifest
from embedcache.provenance import library_versions
from embedcache.store.api import EmbeddingStore, StoreGroup, StoreMismatchError, open_store
from embedcache.store.layout import DEFAULT_ROWS_PER_SHARD, GroupLayout, encoder_key
from embedcache.store.lock import GroupLock


@dataclass(frozen=True)
class ExtractResult:
    """What one ``extract`` call did.

    Attributes:
        store: the store path; key: the encoder group written.
        n_rows: rows in the manifest; already_done: rows done before this run;
        written: rows extracted now; skipped: rows recorded as unreadable now.
        seconds: wall time of the extraction loop; images_per_s: written / seconds.
        random_weights: True when the encoder was randomly initialised (numbers mean nothing).
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


def default_workers() -> int:
    """Decode workers: leave one core to the forward pass, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of differing leaves between two nested dicts."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append(f"{prefix}{name}: {a!r} -> {b!r}")
    return out


def _check_manifest(group: StoreGroup, manifest: Manifest) -> None:
    """Refuse to resume into a group made from another manifest, naming the first difference."""
    recorded = group.attrs.get("manifest", {})
    if recorded.get("digest") == manifest.digest():
        return
    ids = group.ids
    now = np.asarray(manifest.image_ids, dtype=str)
    if len(ids) != len(now):
        what = f"it has {len(ids)} rows, this manifest has {len(now)}"
    else:
        diff = np.flatnonzero(ids != now)
        what = (
            f"row {diff[0] + 1}: image_id {str(ids[diff[0]])!r} there, {str(now[diff[0]])!r} here"
            if len(diff)
            else "the same ids but different image paths"
        )
    raise StoreMismatchError(
        f"encoder group {group.key} was extracted from manifest {recorded.get('source')} "
        f"(digest {str(recorded.get('digest'))[:12]}), not {manifest.source} "
        f"(digest {manifest.digest()[:12]}): {what}. Use another --out store, or restore the "
        "original manifest."
    )


def _note_siblings(store: EmbeddingStore, key: str, material: dict[str, Any]) -> list[str]:
    """Describe how other groups of the same preset differ (printed when a new group starts)."""
    notes = []
    prefix = key.rsplit("-", 1)[0] + "-"
    for other in store:
        if other != key and other.startswith(prefix):
            old = store.group(other).attrs.get("key_material", {})
            diffs = _differences(old, material)
            notes.append(f"{other} differs in " + "; ".join(diffs[:5]))
    return notes


def open_group(
    store: EmbeddingStore,
    encoder: Encoder,
    manifest: Manifest,
    material: dict[str, Any],
    *,
    dtype: str,
    rows_per_shard: int,
    log: Any = print,
) -> StoreGroup:
    """The group for this encoder key: created, or checked against this run and reopened."""
    key = encoder_key(encoder.preset.name, material)
    if key in store and not store.is_complete(key):
        log(f"note: removing group {key}, whose creation was interrupted, and creating it anew")
        store.delete_group(key)
    if key in store:
        if cleared := store.clear_partial_writes(key):
            log(f"note: removed {cleared} half-written file(s) left by an interrupted run")
        group = store.group(key)
        recorded = group.attrs.get("key_material")
        if encoder_key(encoder.preset.name, recorded or {}) != key:
            raise StoreMismatchError(
                f"encoder group {key} records inputs whose digest is not its key; differences "
                f"from this run: {_differences(recorded or {}, material)}"
            )
        _check_manifest(group, manifest)
        return group
    for note in _note_siblings(store, key, material):
        log(f"note: new group {key}; existing {note}")
    layout = GroupLayout(
        n_rows=len(manifest),
        global_dim=encoder.global_dim,
        grid_shapes={level: spec.shape for level, spec in encoder.grid_specs.items()},
        dtype=dtype,
        rows_per_shard=rows_per_shard,
    )
    attrs = {
        "key_material": material,
        "encoder": encoder.describe(),
        "manifest": {
            "source": str(manifest.source),
            "root": str(manifest.root),
            "digest": manifest.digest(),
            "n_rows": len(manifest),
        },
        "versions": library_versions(),
        "host": platform.node(),
        "command": sys.argv,
    }
    return store.create_group(key, layout, np.asarray(manifest.image_ids, dtype=str), attrs)


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
    progress: bool = True,
    log: Any = print,
) -> ExtractResult:
    """Extract global embeddings and stride-16/32 grids of every manifest image into ``out``.

    Resumable: rows already ``done`` are kept; an interrupted run (even kill -9) continues where
    its last whole shard was written and ends with a store identical to an uninterrupted run.

    Args:
        manifest: manifest file (CSV/Parquet) or a loaded :class:`Manifest`.
        encoder: preset name / generic spec (``rad-dino``, ``hf:DIR``) or a built encoder.
        out: store path (zarr folder, or ``.h5`` file).
        weights: hub id, local folder, ``none`` (random init), or ``None`` for the preset's own.
        skip_bad: record unreadable images (id and reason) and go on, instead of stopping at the
            first one with its id and path.
        dtype: storage dtype, ``float16`` (default; refuses values beyond its range) or
            ``float32``.
        precision: compute precision, ``bf16`` (CUDA autocast) or ``fp32``; part of the key.
        rows_per_shard: images per shard file for a new group.

    Raises:
        ImageReadError: an unreadable image without ``skip_bad`` (rows written so far are kept).
        StoreMismatchError: the group exists but was made from a different manifest.
        StoreLockedError: another live process is writing this group.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest, root, check_files=not skip_bad)
    if isinstance(encoder, str):
        encoder = build_encoder(encoder, weights, trust_remote_code=trust_remote_code, seed=seed)
    random_weights = "random_init" in encoder.weights_id
    if random_weights:
        log(
            f"warning: {encoder.preset.name} is randomly initialised (--weights none): "
            "its embeddings carry no pretrained knowledge and probe results mean nothing."
        )
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    material = {**encoder.key_material(), "precision": precision, "dtype": dtype}
    out = Path(out)
    with open_store(out, "a", fmt) as store:
        key = encoder_key(encoder.preset.name, material)
        with GroupLock(out, key, break_lock=break_lock):
            group = open_group(
                store,
                encoder,
                manifest,
                material,
                dtype=dtype,
                rows_per_shard=rows_per_shard,
                log=log,
            )
            return _run(
                group,
                encoder,
                manifest,
                dev,
                precision,
                batch_size,
                default_workers() if num_workers is None else num_workers,
                skip_bad,
                progress,
                random_weights,
                out,
            )


def _run(
    group: StoreGroup,
    encoder: Encoder,
    manifest: Manifest,
    dev: torch.device,
    precision: str,
    batch_size: int,
    num_workers: int,
    skip_bad: bool,
    progress: bool,
    random_weights: bool,
    out: Path,
) -> ExtractResult:
    done = group.done
    pending = np.flatnonzero(~done)
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
    writer = ShardWriter(group, pending)
    autocast = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    start = time.perf_counter()
    bar = tqdm(total=len(pending), unit="img", desc=group.key, disable=not progress)
    try:
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
    seconds = time.perf_counter() - start
    return ExtractResult(
        store=str(out),
        key=group.key,
        n_rows=len(done),
        already_done=int(done.sum()),
        written=writer.rows_written,
        skipped=writer.rows_skipped,
        seconds=seconds,
        images_per_s=writer.rows_written / seconds if seconds > 0 else 0.0,
        random_weights=random_weights,
    )


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
    return {name: t.float().cpu().numpy() for name, t in out.items()}


def result_dict(result: ExtractResult) -> dict[str, Any]:
    return asdict(result)
