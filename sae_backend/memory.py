"""An in-memory LRU of big objects (dictionaries, comparisons) under a byte budget.

Why: a hosted dashboard keeps what sessions loaded in RAM so a click costs no disk read, but
the RAM of one server is finite; a count limit (`st.cache_resource(max_entries=...)`) says
nothing about bytes when one dictionary is 4 MB and another 280 MB. Objects are measured by
the numpy arrays they hold (`nbytes`), and the least recently used ones are dropped until the
total fits the budget. Dropped objects come back from the disk cache (`sae_backend.cache`).

Concurrent callers of one key wait for a single computation (`get_or_compute`): many sessions
opening the same page at once load each dictionary once. A computation that fails is not
shared: each waiter then tries itself, so one session's interrupted run cannot fail others.
"""

from __future__ import annotations

import ctypes
import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class MemoryStats:
    """held/peak: bytes of arrays held now / at most; hits, misses (computations), evictions;
    oversize: objects bigger than the whole budget, returned but not held."""

    budget: int
    held: int
    peak: int
    entries: int
    hits: int
    misses: int
    evictions: int
    oversize: int


class _Flight:
    """One computation in progress that other callers of the same key wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.ok = False


class MemoryLRU:
    """Thread-safe `key -> object` store bounded by the bytes of the arrays it holds."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget = int(budget_bytes)
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._held = self._peak = 0
        self._counts = dict(hits=0, misses=0, evictions=0, oversize=0)

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The object for `key`, running `compute()` only when it is not held (once at a time)."""
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self._counts["hits"] += 1
                    return self._items[key][0]
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    leader = True
                else:
                    leader = False
            if leader:
                return self._lead(key, flight, compute)
            flight.done.wait()
            if flight.ok:
                with self._lock:
                    self._counts["hits"] += 1
                return flight.value
            # the leader failed: loop, and this caller computes (or waits for a new leader)

    def peek(self, key: Hashable) -> Any | None:
        """The object held for `key` (a hit, made most recent), or None: never computes and
        never waits for a computation in flight. For a page that must not block: a miss sends
        it to a background job (`sae_backend.jobs`) instead."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            self._counts["hits"] += 1
            return self._items[key][0]

    def _lead(self, key: Hashable, flight: _Flight, compute: Callable[[], T]) -> T:
        try:
            value = compute()
            size = nbytes(value)
        except BaseException:
            with self._lock:
                del self._flights[key]
            flight.done.set()
            raise
        with self._lock:
            self._counts["misses"] += 1
            if size > self.budget:
                self._counts["oversize"] += 1
            else:
                self._items[key] = (value, size)
                self._held += size
                while self._held > self.budget:
                    _, (_, dropped) = self._items.popitem(last=False)
                    self._held -= dropped
                    self._counts["evictions"] += 1
                self._peak = max(self._peak, self._held)
            del self._flights[key]
        flight.value, flight.ok = value, True
        flight.done.set()
        return value

    def stats(self) -> MemoryStats:
        with self._lock:
            return MemoryStats(
                self.budget, self._held, self._peak, len(self._items), **self._counts
            )

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._held = 0


def nbytes(obj: Any, depth: int = 3) -> int:
    """Bytes of the numpy arrays `obj` holds: itself, or in its fields, tuples, lists and dicts
    (a Comparison, a Matching), or its own `nbytes` (a Dictionary, whose unit rows are read
    on first use, counts them as held); views of one base count once per view."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    declared = getattr(obj, "nbytes", None)  # an object that reads arrays lazily says its size
    if isinstance(declared, int):
        return declared
    if depth == 0 or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return 0
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif dataclasses.is_dataclass(obj):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return 0
    return sum(nbytes(c, depth - 1) for c in children)


def return_free_memory() -> None:
    """Give the heap's free memory back to the system (glibc's malloc_trim; elsewhere a no-op).

    Why: glibc keeps freed blocks below its (growing) mmap threshold for reuse, so after a
    large temporary computation (a top-k pass's bf16 copies and score blocks) the process's
    resident size stays at its peak, and the next step's allocations stack on top of it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim  # glibc (musl has none: AttributeError)
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
