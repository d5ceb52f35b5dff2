"""One writer per encoder group: an exclusive lock file beside the store.

The lock file holds the owner's host name and pid. A lock left behind by a process that died
(kill -9, power loss) on this host is detected (the pid no longer runs) and cleared. A lock held
by another host cannot be checked from here; the error says which host and how to clear it.

The lock lives beside the store (``<store>.<key>.lock``), never inside it, so that zarr sees no
foreign files in its hierarchy.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType


class StoreLockedError(RuntimeError):
    """Another live process is writing this encoder group."""


def lock_path(store_path: str | os.PathLike, key: str) -> Path:
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


class GroupLock:
    """Context manager holding the writer lock of one encoder group.

    Args:
        store_path: the store (zarr folder or HDF5 file).
        key: the encoder group key.
        break_lock: remove an existing lock even if its owner may be alive (the user's call).
    """

    def __init__(self, store_path: str | os.PathLike, key: str, *, break_lock: bool = False):
        self.path = lock_path(store_path, key)
        self.key = key
        self.break_lock = break_lock
        self._held = False

    def acquire(self) -> None:
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            self._held = True
            return
        raise StoreLockedError(f"could not take the writer lock {self.path}")

    def _clear_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            holder = {}
        host, pid = holder.get("host"), holder.get("pid")
        stale = host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)
        if stale or self.break_lock:
            self.path.unlink(missing_ok=True)
            return
        where = f"process {pid} on host {host}" if host else "an unknown process"
        raise StoreLockedError(
            f"encoder group {self.key} is being written by {where} (lock file {self.path}). "
            "Wait for it to finish; if that process is gone (for example on another machine), "
            "re-run with --break-lock or delete the lock file."
        )

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
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
