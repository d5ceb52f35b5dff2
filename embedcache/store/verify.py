"""``embedcache info`` and ``embedcache verify``: what a store holds and whether it is sound."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from embedcache.store.api import EmbeddingStore, StoreGroup
from embedcache.store.layout import GRID_ARRAYS, encoder_key


def group_summary(group: StoreGroup) -> dict[str, Any]:
    """JSON-able summary of one group: encoder, shapes, progress, bytes, provenance."""
    attrs = group.attrs
    done, skipped = group.done, group.skipped
    enc = attrs.get("encoder", {})
    layout = group.layout
    return {
        "key": group.key,
        "preset": enc.get("preset"),
        "source": enc.get("source"),
        "weights": enc.get("weights"),
        "rows": layout.n_rows,
        "done": int(done.sum()),
        "skipped": int(skipped.sum()),
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
        "groups": [group_summary(store.group(key)) for key in store],
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
    """Check one group: its key matches its recorded inputs, ids are unique, and no written row
    holds NaN or inf. Reads the arrays in blocks of ``block`` rows (memory stays bounded)."""
    done, skipped = group.done, group.skipped
    report = VerifyReport(group.key, len(done), int(done.sum()), int(skipped.sum()))
    attrs = group.attrs
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
