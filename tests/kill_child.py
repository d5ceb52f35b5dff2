"""Child process for test_kill_resume.py: runs an extraction and SIGKILLs itself at a chosen point.

    python tests/kill_child.py MANIFEST SPEC STORE POINT
    POINT = create | write:N | put:N | shardput:N | done:N | stop:N | never

``write:N`` dies in the N-th shard write after the global array was written but before the grids;
``put:N`` dies half-way through writing the N-th zarr file (metadata included);
``shardput:N`` half-way through writing the N-th whole shard file (the store's own writer); ``done:N`` dies right
after the N-th shard was marked done; ``create`` right after the group was created. ``stop:N``
stops (SIGSTOP, not kill) right after the N-th shard was marked done: the parent can look at a
store mid-extraction, then let the run go on with SIGCONT.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import zarr.storage._local as zarr_local

import embedcache.store.api as store_api
from embedcache.extract import extract
from embedcache.store.api import EmbeddingStore, StoreGroup
from embedcache.store.shards import shard_path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    manifest, spec, store, point = sys.argv[1:5]
    what, _, count = point.partition(":")
    calls = {"n": 0}

    def counted(original, before=None, after=None):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            hit = calls["n"] == int(count or 1)
            if hit and before:
                before(*args, **kwargs)
            result = original(*args, **kwargs)
            if hit and after:
                after()
            return result

        return wrapper

    if what == "create":
        EmbeddingStore.create_group = counted(EmbeddingStore.create_group, after=die)
    elif what == "done":
        StoreGroup.mark_done = counted(StoreGroup.mark_done, after=die)
    elif what == "stop":
        StoreGroup.mark_done = counted(
            StoreGroup.mark_done, after=lambda: os.kill(os.getpid(), signal.SIGSTOP)
        )
    elif what == "write":
        original = StoreGroup.write_rows

        def partial(self, start, features):
            self.array("global")[start : start + len(features["global"])] = features["global"]
            die()

        StoreGroup.write_rows = counted(original, before=partial)
    elif what == "shardput":

        def half_shard(folder, rows_per_shard, shard, values):
            path = shard_path(folder, shard, values.ndim)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.with_suffix(".deadbeef.partial").open("wb") as f:
                f.write(np.ascontiguousarray(values).tobytes()[: values.nbytes // 2])
                f.flush()
            die()

        store_api.write_shard = counted(store_api.write_shard, before=half_shard)
    elif what == "put":
        original_put = zarr_local._put

        def half_put(path, value, exclusive=False):
            data = value.as_buffer_like()
            tmp = path.with_suffix(".deadbeef.partial")
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                f.write(bytes(data)[: len(data) // 2])
                f.flush()
            die()

        zarr_local._put = counted(original_put, before=half_put)
    extract(manifest, spec, store, rows_per_shard=4, batch_size=3, num_workers=1, progress=False)


if __name__ == "__main__":
    main()
