"""The DuckDB store: one writer per file, batched Arrow inserts, the request cache, resume."""

from charter.store.store import (
    CachedCall,
    ReadConnection,
    Store,
    StoreError,
    StoreInUseError,
    StoreWriteError,
    open_read_only,
)

__all__ = [
    "CachedCall",
    "ReadConnection",
    "Store",
    "StoreError",
    "StoreInUseError",
    "StoreWriteError",
    "open_read_only",
]
