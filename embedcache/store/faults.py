"""Faults of the place a store is written to, as one line that says what to do.

A full disk, a read-only location or a mount that vanished surfaces deep in a write (a shard
file, a flag chunk, the group metadata) as an ``OSError``, possibly on the background writer
thread. :func:`store_writes` turns it into a :class:`StoreWriteError` naming the store and the
cause; the command line prints that one line (no traceback). Nothing already finished is lost:
each shard and flag chunk is written to a temporary file and renamed (or PUT whole), so a
failed write leaves the previous state, and the same command resumes once the cause is fixed.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: errno -> (cause, what to do)
_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free space (or choose another --out)"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EFBIG: ("file too large for the filesystem", "choose another --out"),
    errno.EROFS: ("the location is read-only", "make it writable or choose another --out"),
    errno.EACCES: ("permission denied", "make the location writable or choose another --out"),
    errno.EPERM: ("operation not permitted", "make the location writable or choose another --out"),
    errno.ENOENT: (
        "the store's location vanished (unmounted, or its folder deleted?)",
        "check the mount",
    ),
    errno.ESTALE: ("the store's network mount went stale", "check the mount"),
    errno.ENOTCONN: ("the store's mount is disconnected", "check the mount"),
    errno.EIO: ("input/output error (a failing disk or a lost mount?)", "check the device"),
}
#: HDF5 reports OS errors inside its own message, without an errno
_MESSAGE_ERRNO = {
    "no space left": errno.ENOSPC,
    "disk quota": errno.EDQUOT,
    "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES,
}
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


class StoreWriteError(RuntimeError):
    """The store's location refused a write (full disk, read-only, vanished mount, ...).

    Attributes:
        store: the store path or URL. errno: the OS error number, when known. cause: the
        cause in words.
    """

    def __init__(self, store: str, err: OSError, progress: str = ""):
        self.store = store
        self.errno = _errno_of(err)
        cause, todo = _CAUSES.get(self.errno, (_first_line(err), "fix the cause"))
        self.cause = cause
        kept = f" ({progress})" if progress else ""
        super().__init__(
            f"cannot write to store {store}: {cause}. Every finished shard is kept{kept}; "
            f"{todo} and run the same command again to resume"
        )


def _errno_of(err: OSError) -> int | None:
    if err.errno is not None:
        return err.errno
    text = str(err).lower()
    if match := _ERRNO_IN_TEXT.search(text):
        return int(match.group(1))
    return next((code for words, code in _MESSAGE_ERRNO.items() if words in text), None)


def _first_line(err: OSError) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


@contextmanager
def store_writes(store: object, progress: Callable[[], str] | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into a :class:`StoreWriteError` for ``store``.

    Args:
        store: the store (path, URL or location), for the message.
        progress: called after a failure for what is kept, e.g. ``"8 of 21 rows done"``.
    """
    try:
        yield
    except StoreWriteError:
        raise
    except OSError as err:
        raise StoreWriteError(str(store), err, _safely(progress)) from err


def _safely(progress: Callable[[], str] | None) -> str:
    """``progress()``, or nothing if the broken location fails that too."""
    try:
        return progress() if progress else ""
    except Exception:
        return ""
