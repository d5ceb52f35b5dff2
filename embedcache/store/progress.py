"""How far a group's extraction got, kept in the group's metadata so that reading it costs the
same at 4,000 rows and at 400,000 (one metadata read, locally or on an object store).

Two group attributes::

    counts   {"rows": N, "done": d, "skipped": s}
    writing  {"host", "pid", "since", "world_size"} while an extraction writes the group

The ``done``/``skipped`` flag arrays stay the truth; ``counts`` summarise them. The writer bumps
``counts`` right after each shard's flags are written, so a kill can leave them behind by at
most the shards in flight. ``writing`` says exactly when that can be: it is set when an
extraction starts (after a full recount, which also repairs counts a killed run left behind)
and removed only when the run records its exact final counts. Without ``writing`` the counts
are exact; with it they are a lower bound. ``embedcache verify`` always recounts the flags and
reports a difference. Under torchrun only rank 0 (the attributes' one writer) bumps the counts
as it goes, so they lag by the other ranks' shards until the run ends. An HDF5 group records
them when a run starts and ends only (no reader can open the file in between).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

COUNTS, WRITING = "counts", "writing"


@dataclass(frozen=True)
class GroupCounts:
    """Row counts of one group.

    Attributes:
        rows: N, rows of the group.
        done: rows durably written or recorded as skipped.
        skipped: rows recorded as unreadable.
        writing: the extraction that is writing the group (or was, until it was killed):
            ``{"host", "pid", "since", "world_size"}``; ``None`` when none is.
        scanned: True when counted from the flag arrays (a group written before counts were
            recorded), False when read from the metadata.
    """

    rows: int
    done: int
    skipped: int
    writing: dict[str, Any] | None = None
    scanned: bool = False

    @property
    def exact(self) -> bool:
        """True unless an extraction is (or was, until killed) writing: then a lower bound."""
        return self.writing is None

    @property
    def complete(self) -> bool:
        return self.done == self.rows and self.exact

    def to_attrs(self) -> dict[str, int]:
        return {"rows": self.rows, "done": self.done, "skipped": self.skipped}

    def bumped(self, done: int, skipped: int) -> GroupCounts:
        """These counts plus ``done`` and ``skipped`` newly flagged rows."""
        return GroupCounts(
            self.rows, self.done + done, self.skipped + skipped, self.writing, self.scanned
        )


def recorded_counts(attrs: dict[str, Any]) -> GroupCounts | None:
    """The counts recorded in a group's attributes, or ``None`` (a format-1 group)."""
    counts = attrs.get(COUNTS)
    if not isinstance(counts, dict):
        return None
    writing = attrs.get(WRITING)
    return GroupCounts(
        int(counts["rows"]),
        int(counts["done"]),
        int(counts["skipped"]),
        writing if isinstance(writing, dict) else None,
    )


def scanned_counts(done: np.ndarray, skipped: np.ndarray) -> GroupCounts:
    """Counts of the ``(N,)`` bool flag arrays (a full read of both)."""
    return GroupCounts(
        len(done), int(np.count_nonzero(done)), int(np.count_nonzero(skipped)), scanned=True
    )
