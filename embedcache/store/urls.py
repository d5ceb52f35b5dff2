"""Where a store lives: a local path, or an fsspec URL (``s3://``, ``gs://``, ``memory://``...).

Local paths and ``file://`` URLs are plain folders and files: they keep the fast shard
reader/writer (:mod:`embedcache.store.shards`), atomic temp-file-and-rename writes and the
lock file. Any other URL goes through zarr's ``FsspecStore`` with the fsspec filesystem of its
scheme (s3fs for ``s3://``, gcsfs for ``gs://``, ...), configured by ``storage_options``: given
by the caller, or else read from the environment variable :data:`STORAGE_OPTIONS_ENV` (JSON),
so every rank of a distributed job gets them without extra arguments.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Environment variable holding fsspec storage options as JSON, e.g.
#: ``{"endpoint_url": "http://127.0.0.1:9000", "key": "...", "secret": "..."}``.
STORAGE_OPTIONS_ENV = "EMBEDCACHE_STORAGE_OPTIONS"


class StoreURLError(ValueError):
    """A store URL or its storage options cannot be used as given."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``file://`` included), False for a plain path."""
    return _SCHEME.match(os.fspath(path)) is not None


@dataclass(frozen=True)
class StoreLocation:
    """A store's place: exactly one of ``local`` (a path) or ``url`` (a remote fsspec URL).

    Attributes:
        local: the folder/file of a local store (``file://`` URLs become paths), else ``None``.
        url: the URL of a remote store, without a trailing slash, else ``None``.
        storage_options: fsspec options of a remote store (credentials, ``endpoint_url``...).
    """

    local: Path | None
    url: str | None
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_remote(self) -> bool:
        return self.url is not None

    @property
    def name(self) -> str:
        """Last component (``cohort.zarr``), for suffix checks and messages."""
        return self.local.name if self.local is not None else self.url.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else str(self.url)

    def filesystem(self) -> tuple[Any, str]:
        """``(fsspec filesystem, path inside it)`` of a remote store."""
        from fsspec.core import url_to_fs

        if self.url is None:
            raise ValueError(f"{self} is a local path, not a URL")
        return url_to_fs(self.url, **self.storage_options)

    def zarr_store(self, read_only: bool) -> Any:
        """zarr's ``FsspecStore`` for a remote store."""
        from zarr.storage import FsspecStore

        if self.url is None:
            raise ValueError(f"{self} is a local path, not a URL")
        return FsspecStore.from_url(
            self.url, storage_options=dict(self.storage_options), read_only=read_only
        )


def storage_options_from_env() -> dict[str, Any]:
    """Storage options from :data:`STORAGE_OPTIONS_ENV` (a JSON object), or ``{}``."""
    raw = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except ValueError as err:
        raise StoreURLError(f"{STORAGE_OPTIONS_ENV} is not valid JSON: {err}") from None
    if not isinstance(options, dict):
        raise StoreURLError(f"{STORAGE_OPTIONS_ENV} must hold a JSON object, got {raw[:60]!r}")
    return options


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["endpoint_url=http://h:9000", "client_kwargs.region_name=eu-west-1", "anon=true"]``
    -> a storage options mapping. Dotted keys nest; values are JSON when they parse as JSON
    (``true``, ``3``, ``{...}``), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise StoreURLError(f"storage option {pair!r} is not of the form key=value")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = name.strip().split(".")
        node = options
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StoreURLError(f"storage option {pair!r} conflicts with an earlier one")
        node[leaf] = value
    return options


def locate(
    path: str | os.PathLike | StoreLocation, storage_options: dict[str, Any] | None = None
) -> StoreLocation:
    """Resolve a store argument: a local path, a ``file://`` URL (local), or a remote URL.

    Args:
        path: where the store is.
        storage_options: fsspec options for a remote URL; ``None`` reads
            :data:`STORAGE_OPTIONS_ENV`. Ignored for local stores.
    """
    if isinstance(path, StoreLocation):
        return path
    text = os.fspath(path)
    match = _SCHEME.match(text)
    if match is None:
        return StoreLocation(Path(text), None)
    if match.group(1).lower() in ("file", "local"):
        from fsspec.implementations.local import LocalFileSystem

        return StoreLocation(Path(LocalFileSystem._strip_protocol(text)), None)
    options = storage_options_from_env() if storage_options is None else dict(storage_options)
    return StoreLocation(None, text.rstrip("/"), options)
