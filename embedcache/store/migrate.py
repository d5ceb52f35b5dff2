"""Bring a group written in store format 1 to format 2, in place.

Format 1 named the image-id array ``ids``, gave no dimension names and recorded no row counts:
our API reads it as it is, but ``xarray.open_zarr`` refuses it ("missing the
`dimension_names` metadata") and summaries must read every ``done`` chunk. The next extraction
into such a group (a resume, or a rerun of a complete one) upgrades it, under the writer lock:

1. write the ids again as the ``image`` array (with its dimension name / HDF5 scale);
2. name the dimensions of every other array;
3. record the row counts and ``format_version: 2`` (from here on readers use ``image``);
4. delete the old ``ids`` array.

Each step is atomic per file and repeatable, so a kill at any point is finished by the next run:
before step 3 the group still reads as format 1, after it a leftover ``ids`` is deleted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedcache.store.layout import (
    DONE,
    FEATURE_ARRAYS,
    FORMAT_VERSION,
    LEGACY_IDS,
    SKIPPED,
    GroupLayout,
)
from embedcache.store.progress import COUNTS, scanned_counts


def upgrade_group(backend: Any, key: str) -> bool:
    """Upgrade group ``key`` of an open backend to the current format; True if it changed.

    Reads the ids and the ``done``/``skipped`` flags once (a full read of each). Call as the
    group's one writer (under its lock).
    """
    node = backend.group(key)
    attrs = backend.get_attrs(node)
    if int(attrs.get("format_version", 1)) >= FORMAT_VERSION:
        if LEGACY_IDS in node:  # a kill between steps 3 and 4
            backend.delete_array(node, LEGACY_IDS)
            backend.flush()
        return False
    layout = GroupLayout.from_attrs(attrs["layout"])
    backend.write_ids(node, backend.read_ids(node[LEGACY_IDS]), layout.rows_per_shard)
    backend.name_dimensions(key, [DONE, SKIPPED, *FEATURE_ARRAYS])
    counts = scanned_counts(
        np.asarray(node[DONE][:], dtype=bool), np.asarray(node[SKIPPED][:], dtype=bool)
    )
    backend.set_attrs(node, {"format_version": FORMAT_VERSION, COUNTS: counts.to_attrs()})
    backend.delete_array(node, LEGACY_IDS)
    backend.set_format_version(FORMAT_VERSION)
    backend.flush()
    return True
