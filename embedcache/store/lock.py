"""One writer per encoder group: an exclusive lock file (or object) beside the store.

The lock holds the owner's host name and pid. A lock left behind by a process that died
(kill -9, power loss) on this host is detected (the pid no longer runs) and cleared. A lock held
by another host cannot be checked from here; the error says which host and how to clear it.

The lock lives beside the store (``<store>.<key>.lock``), never inside it, so that zarr sees no
foreign files in its hierarchy.

Local stores create the lock file with ``O_CREAT | O_EXCL``. Stores at a URL create a lock
object with create-if-absent semantics: fsspec's ``pipe_file(..., mode="create")``, which is a
conditional PUT (``If-None-Match: *``) on S3 and S3-compatible servers that support it, and
exclusive on ``memory://``. A filesystem that has no exclusive create falls back to
check-then-write, which two writers starting in the same instant can both pass; there the
guarantee is the documented one: one extraction job per group at a time. A distributed job is
one writer: rank 0 holds the lock for all ranks, which write disjoint shards (see
``embedcache.extract.distributed``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from embedcache.store.urls import StoreLocation, StoreURLError, locate


class StoreLockedError(RuntimeError):
    """Another live process is writing this encoder group."""


def lock_path(store_path: str | os.PathLike, key: str) -> Path:
    """The lock file of a local store."""
    store = Path(store_path)
    return store.with_name(f"{store.name}.{key}.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class _LocalLockFile:
    """The lock as a local file."""

    kind = "lock file"

    def __init__(self, path: Path):
        self.path = path
        self.where = str(path)

    def create_exclusive(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class _ObjectLockFile:
    """The lock as an object beside a store at a URL, created only if absent."""

    kind = "lock object"

    def __init__(self, location: StoreLocation, key: str):
        self.fs, store_path = location.filesystem()
        if self.fs._parent(store_path) == "":  # s3://bucket, gs://bucket: no room beside it
            raise StoreURLError(
                f"store {location} is at the root of its bucket; put it under a prefix (for "
                f"example {location.url}/cohort.zarr) so that its lock object can sit beside it"
            )
        self.path = f"{store_path}.{key}.lock"
        self.where = f"{location.url}.{key}.lock"

    def create_exclusive(self, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        except TypeError:  # a filesystem without exclusive create: check, then write
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, data)
        return True

    def read(self) -> bytes | None:
        try:
            return self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)
        self.fs.invalidate_cache(self.path)


class GroupLock:
    """Context manager holding the writer lock of one encoder group.

    Args:
        store_path: the store (zarr folder, HDF5 file, or URL of a zarr store).
        key: the encoder group key.
        break_lock: remove an existing lock even if its owner may be alive (the user's call).
        storage_options: fsspec options of a URL store (``None``: from the environment).
    """

    def __init__(
        self,
        store_path: str | os.PathLike | StoreLocation,
        key: str,
        *,
        break_lock: bool = False,
        storage_options: dict[str, Any] | None = None,
    ):
        location = locate(store_path, storage_options)
        if location.local is not None:
            self._file: _LocalLockFile | _ObjectLockFile = _LocalLockFile(
                lock_path(location.local, key)
            )
            self.path: Path | str = self._file.path
        else:
            self._file = _ObjectLockFile(location, key)
            self.path = self._file.where
        self.key = key
        self.break_lock = break_lock
        self._held = False

    def acquire(self) -> None:
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(3):
            if self._file.create_exclusive(json.dumps(owner).encode()):
                self._held = True
                return
            self._clear_if_stale()
        raise StoreLockedError(f"could not take the writer lock {self.path}")

    def _clear_if_stale(self) -> None:
        raw = self._file.read()
        if raw is None:
            return
        try:
            holder = json.loads(raw or b"{}")
        except ValueError:
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        host, pid = holder.get("host"), holder.get("pid")
        stale = host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)
        if stale or self.break_lock:
            self._file.delete()
            return
        where = f"process {pid} on host {host}" if host else "an unknown process"
        raise StoreLockedError(
            f"encoder group {self.key} is being written by {where} ({self._file.kind} "
            f"{self.path}). Wait for it to finish; if that process is gone (for example on "
            f"another machine), re-run with --break-lock or delete the {self._file.kind}."
        )

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now, without taking it: ``{"host", "pid", "since", "alive"}``
        (``alive`` None for a process on another host, which cannot be checked from here), or
        ``None`` when the group is not locked. One file stat / object read."""
        raw = self._file.read()
        if raw is None:
            return None
        try:
            holder = json.loads(raw or b"{}")
        except ValueError:
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        pid = holder.get("pid")
        alive = None
        if holder.get("host") == socket.gethostname() and isinstance(pid, int):
            alive = _pid_alive(pid)
        return {**holder, "alive": alive}

    def release(self) -> None:
        if self._held:
            self._file.delete()
            self._held = False

    def __enter__(self) -> GroupLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
