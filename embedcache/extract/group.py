"""The encoder group an extraction writes: created, or checked against this run and reopened;
and, at the end of a run, its skip reasons and run record."""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

import numpy as np

from embedcache.encoders.base import Encoder
from embedcache.intake.images import ImageReadError, read_image
from embedcache.intake.manifest import Manifest
from embedcache.provenance import library_versions
from embedcache.store.api import EmbeddingStore, StoreGroup, StoreMismatchError
from embedcache.store.layout import FORMAT_VERSION, GroupLayout, encoder_key, parse_key


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
    preset = parse_key(key)[0]
    for other in store:
        if other != key and parse_key(other)[0] == preset:
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
        if store.upgrade_group(key):
            log(
                f"note: upgraded group {key} to store format {FORMAT_VERSION} (image ids as the "
                "`image` coordinate, dimension names, recorded row counts)"
            )
            group = store.group(key)
        return group
    for note in _note_siblings(store, key, material):
        log(f"note: new group {key}; existing {note}")
    layout = GroupLayout(
        n_rows=len(manifest),
        global_dim=encoder.global_dim,
        grid_shapes={level: spec.shape for level, spec in encoder.grid_specs.items()},
        dtype=dtype,
        rows_per_shard=rows_per_shard,
        taps=tuple(encoder.taps),
        tap_dim=encoder.tap_dim if encoder.taps else 0,
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


def finish_run(
    group: StoreGroup,
    reports: list[dict[str, Any]],
    manifest: Manifest,
    world_size: int,
    n_pending: int,
) -> None:
    """After every rank reported (rank 0, or the only process): record the ranks' skip
    reasons, this run's provenance (``extraction``: world size, hosts, end time, and
    whether every pending row was processed) and the group's final row counts (recounted from
    the flags when other ranks wrote or a rank failed), clearing its ``writing`` mark.

    Args:
        reports: one per rank, as ``runner._run`` returns them (or ``{"error": ...}``).
        n_pending: rows that were pending when the run started.
    """
    reasons: dict[str, str] = {}
    for report in reports:
        reasons.update(report.get("skip_reasons", {}))
    # Rows a killed rank flagged as skipped before it could report why, possibly in an earlier
    # run with another world size (one read of the `skipped` flags per run).
    reasons.update(_lost_skip_reasons(group, reasons, manifest))
    group.record_skip_reasons(reasons)
    processed = sum(r["written"] + r["skipped"] for r in reports if "error" not in r)
    group.update_attrs(
        {
            "extraction": {
                "world_size": world_size,
                "hosts": sorted({r["host"] for r in reports if "host" in r}),
                "finished": time.time(),
                "complete": processed == n_pending,
            }
        }
    )
    failed = any("error" in r for r in reports)
    group.end_writing(recount=world_size > 1 or failed)


def _lost_skip_reasons(
    group: StoreGroup, known: dict[str, str], manifest: Manifest
) -> dict[str, str]:
    """Reasons for rows flagged ``skipped`` whose reason never reached the attributes (a rank
    killed between flagging and reporting): read the image again to learn why it fails."""
    recorded = {**group.skip_reasons(), **known}
    ids = group.ids
    out = {}
    for row in np.flatnonzero(group.skipped):
        image_id = str(ids[row])
        if image_id in recorded:
            continue
        try:
            read_image(manifest.paths[row])
        except ImageReadError as err:
            out[image_id] = err.reason
        else:
            out[image_id] = "unreadable during extraction; it reads now (re-extract to include it)"
    return out
