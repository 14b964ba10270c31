"""The DuckDB store: one writer per file, batched Arrow inserts, the request cache, resume."""

from charter.store.store import CachedCall, Store, StoreError, StoreInUseError, open_read_only

__all__ = ["CachedCall", "Store", "StoreError", "StoreInUseError", "open_read_only"]
