"""Child process for test_kill_resume.py: runs an extraction and SIGKILLs itself at a chosen point.

    python tests/kill_child.py MANIFEST SPEC STORE POINT
    POINT = create | write:N | put:N | shardput:N | done:N | never

``write:N`` dies in the N-th shard write after the global array was written but before the grids;
``put:N`` dies half-way through writing the N-th zarr file (metadata included);
``shardput:N`` half-way through the N-th grid16 shard file; ``done:N`` dies right
after the N-th shard was marked done; ``create`` right after the group was created.
"""

from __future__ import annotations

import os
import signal
import sys

import zarr.storage._local as zarr_local

from embedcache.extract import extract
from embedcache.store.api import EmbeddingStore, StoreGroup


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
    elif what == "write":
        original = StoreGroup.write_rows

        def partial(self, start, features):
            self.array("global")[start : start + len(features["global"])] = features["global"]
            die()

        StoreGroup.write_rows = counted(original, before=partial)
    elif what in ("put", "shardput"):
        original_put = zarr_local._put

        def half_put(path, value, exclusive=False):
            data = value.as_buffer_like()
            tmp = path.with_suffix(".deadbeef.partial")
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                f.write(bytes(data)[: len(data) // 2])
                f.flush()
            die()

        counted_put = counted(original_put, before=half_put)

        def put(path, value, exclusive=False):
            if what == "shardput" and not ("grid16" in path.parts and "c" in path.parts):
                return original_put(path, value, exclusive)
            return counted_put(path, value, exclusive)

        zarr_local._put = put
    extract(manifest, spec, store, rows_per_shard=4, batch_size=3, num_workers=1, progress=False)


if __name__ == "__main__":
    main()
