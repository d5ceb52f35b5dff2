"""``embedcache info`` and ``embedcache verify``: what a store holds and whether it is sound.

A summary reads metadata only (the group attributes, with their row counts, and at most the
writer lock): it costs the same at 4,000 and 400,000 rows, locally or on an object store.
``verify`` reads everything, recounts the flags and compares them with the recorded counts.
Neither imports torch or the encoders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from embedcache.store.api import EmbeddingStore, StoreGroup
from embedcache.store.layout import GRID_ARRAYS, encoder_key
from embedcache.store.lock import GroupLock
from embedcache.store.progress import GroupCounts, recorded_counts

#: ``state`` of a group in a summary
STATES = {
    "complete": "every row done",
    "incomplete": "rows not done; run the same extract command to continue",
    "writing": "an extraction is writing it; counts as of its last finished shard",
    "interrupted": "its extraction stopped without finishing (killed?); counts as of its last "
    "finished shard, recounted by the next extract run, which resumes it",
}


def group_state(counts: GroupCounts, lock_holder: dict[str, Any] | None) -> str:
    """One of :data:`STATES`, from the counts and the group's writer lock (``None``: free)."""
    if counts.writing is not None:
        alive = lock_holder is not None and lock_holder.get("alive") is not False
        return "writing" if alive else "interrupted"
    return "complete" if counts.done == counts.rows else "incomplete"


def group_summary(group: StoreGroup, store: EmbeddingStore | None = None) -> dict[str, Any]:
    """JSON-able summary of one group: encoder, shapes, progress, bytes, provenance.

    Reads the group's metadata (and the writer lock of ``store`` while the group is marked as
    being written); only a group written before counts were recorded (store format 1) has its
    ``done``/``skipped`` flags read instead (``"counts": "scanned"``).
    """
    attrs = group.attrs
    counts = group.counts()
    holder = None
    if counts.writing is not None and store is not None:
        holder = GroupLock(store.location, group.key).holder()
    enc = attrs.get("encoder", {})
    layout = group.layout
    return {
        "key": group.key,
        "preset": enc.get("preset"),
        "source": enc.get("source"),
        "weights": enc.get("weights"),
        "rows": layout.n_rows,
        "done": counts.done,
        "skipped": counts.skipped,
        "state": group_state(counts, holder),
        "counts": "scanned" if counts.scanned else "recorded",
        "writing": counts.writing,
        "format_version": group.format_version,
        "dtype": layout.dtype,
        "global": [layout.n_rows, layout.global_dim],
        "grids": {
            name: {
                "shape": list(shape),
                "stride": enc.get("grids", {}).get(name[4:], {}).get("stride"),
            }
            for name, shape in layout.feature_shapes().items()
            if name in GRID_ARRAYS.values()
        },
        "taps": {"blocks": list(layout.taps), "dim": layout.tap_dim} if layout.taps else None,
        "bytes_per_image": layout.bytes_per_row(),
        "precision": attrs.get("key_material", {}).get("precision"),
        "manifest": attrs.get("manifest"),
        "versions": attrs.get("versions"),
        "created": attrs.get("created"),
    }


def store_summary(store: EmbeddingStore) -> dict[str, Any]:
    return {
        "path": str(store.path),
        "format": store.format,
        "groups": [group_summary(store.group(key), store) for key in store],
    }


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_group`. ``ok`` is False when any problem was found."""

    key: str
    rows: int
    done: int
    skipped: int
    nonfinite_rows: dict[str, list[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify_group(group: StoreGroup, block: int = 256) -> VerifyReport:
    """Check one group: its key matches its recorded inputs, ids are unique, the recorded row
    counts match the flags (always recounted here), and no written row holds NaN or inf.
    Reads the arrays in blocks of ``block`` rows (memory stays bounded)."""
    done, skipped = group.done, group.skipped
    report = VerifyReport(group.key, len(done), int(done.sum()), int(skipped.sum()))
    attrs = group.attrs
    recorded = recorded_counts(attrs)  # None for a format-1 group: nothing to compare
    flags = (report.done, report.skipped)
    if recorded is not None and (recorded.done, recorded.skipped) != flags:
        why = (
            "an extraction is writing the group, or was killed: the next extract run recounts"
            if recorded.writing is not None
            else "run the same extract command again to recount"
        )
        report.problems.append(
            f"recorded counts ({recorded.done} done, {recorded.skipped} skipped) differ from the "
            f"flags ({report.done} done, {report.skipped} skipped); {why}"
        )
    if recorded is not None and recorded.rows != report.rows:
        report.problems.append(f"recorded rows {recorded.rows} but the arrays hold {report.rows}")
    preset = attrs.get("encoder", {}).get("preset", "")
    if encoder_key(preset, attrs.get("key_material", {})) != group.key:
        report.problems.append("the group key is not the digest of its recorded inputs")
    ids = group.ids
    if len(np.unique(ids)) != len(ids):
        report.problems.append("duplicate image ids")
    if np.any(skipped & ~done):
        report.problems.append("rows marked skipped but not done")
    written = done & ~skipped
    for name in group.layout.feature_names():
        array, bad = group.array(name), []
        for lo in range(0, len(done), block):
            hi = min(lo + block, len(done))
            if not written[lo:hi].any():
                continue
            values = np.asarray(array[lo:hi])
            finite = np.isfinite(values.reshape(hi - lo, -1)).all(axis=1)
            bad += (np.flatnonzero(~finite & written[lo:hi]) + lo).tolist()
        if bad:
            report.nonfinite_rows[name] = bad
            report.problems.append(f"{name}: {len(bad)} rows hold NaN or inf (first {bad[:5]})")
    if report.done < report.rows:
        report.problems.append(
            f"{report.rows - report.done} of {report.rows} rows not done yet (resume extraction)"
        )
    return report
