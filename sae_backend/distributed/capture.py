"""Two stand-in caches that let the driver and the workers run the pages' own cached functions
unchanged, while only the driver ever writes its cache.

The cached functions (`compare`, `match`, `random_null`, `umap_embedding`) build their key
and call `cache.through(cache, key, compute)`, which calls `get_or_compute` on the cache
they are given. So, with the same call and a different cache:

* `Probe(store)` on the driver answers from `store` or raises `Missing(key)` without
  computing: the driver learns, from the function itself, whether an item is cached and
  under which key (no key logic is repeated here).
* `Capture()` on a worker computes and keeps (key, blob) instead of storing: the blob
  (`cache.encode_blob`, self-checking) goes back to the driver, which verifies it and stores
  it under that key. A worker never writes any cache, so a half-finished task leaves nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from ..cache import ArrayCache, Arrays, Entry, decode_blob, encode_blob

__all__ = ["Capture", "Missing", "Probe"]


class Missing(Exception):
    """Raised by `Probe` for a key its store does not hold (not an SAEError: never a failure)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class Probe(ArrayCache):
    """Looks keys up in `store` and never computes (only `get` and `get_or_compute`)."""

    def __init__(self, store: ArrayCache):  # no folder of its own: nothing is written
        self.store = store

    def __repr__(self) -> str:
        return f"Probe({self.store!r})"

    def get(self, key: str) -> Entry | None:
        return self.store.get(key)

    def get_or_compute(self, key: str, compute: Callable[[], tuple[Arrays, dict]]) -> Entry:
        hit = self.store.get(key)
        if hit is None:
            raise Missing(key)
        return hit


class Capture(ArrayCache):
    """Computes every key asked for and keeps `entries` [(key, blob)] in the order computed."""

    def __init__(self) -> None:  # no folder of its own: nothing is written
        self.entries: list[tuple[str, bytes]] = []

    def __repr__(self) -> str:
        return f"Capture({len(self.entries)} entries)"

    def get(self, key: str) -> Entry | None:
        return None

    def get_or_compute(self, key: str, compute: Callable[[], tuple[Arrays, dict]]) -> Entry:
        blob = encode_blob(*compute())
        self.entries.append((key, blob))
        return decode_blob(blob)
