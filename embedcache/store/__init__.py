"""The embedding store: zarr v3 (default) or HDF5, one group per encoder key."""

from embedcache.store.api import EmbeddingStore, StoreGroup, StoreMismatchError, open_store
from embedcache.store.faults import StoreWriteError
from embedcache.store.layout import GroupLayout, StoreOverflowError, encoder_key, parse_key
from embedcache.store.lock import GroupLock, StoreLockedError
from embedcache.store.progress import GroupCounts
from embedcache.store.shards import RowReader
from embedcache.store.urls import StoreURLError

__all__ = [
    "EmbeddingStore",
    "GroupCounts",
    "GroupLayout",
    "GroupLock",
    "RowReader",
    "StoreGroup",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreOverflowError",
    "StoreURLError",
    "StoreWriteError",
    "encoder_key",
    "parse_key",
    "open_store",
]
