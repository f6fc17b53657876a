"""MemoryLRU: a byte budget with least-recently-used eviction, and one computation per key."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from sae_backend.memory import MemoryLRU, nbytes


@dataclass(frozen=True)
class Holder:
    a: np.ndarray
    b: np.ndarray | None
    name: str


def arr(kb: int) -> np.ndarray:
    return np.zeros(kb * 256, np.float32)  # kb KiB


def test_nbytes_counts_arrays_in_fields_tuples_and_dicts() -> None:
    h = Holder(arr(4), arr(2), "x")
    assert nbytes(h) == 6 * 1024
    assert nbytes((h, {"k": arr(1)}, [arr(1)])) == 8 * 1024
    assert nbytes("text") == 0 and nbytes(None) == 0


def test_budget_evicts_least_recently_used() -> None:
    lru = MemoryLRU(budget_bytes=10 * 1024)
    calls: list[str] = []

    def make(name: str, kb: int):
        def compute():
            calls.append(name)
            return Holder(arr(kb), None, name)

        return compute

    lru.get_or_compute("a", make("a", 4))
    lru.get_or_compute("b", make("b", 4))
    lru.get_or_compute("a", make("a", 4))  # a is now the most recent
    lru.get_or_compute("c", make("c", 4))  # 12 KiB > 10: b goes, not a
    assert calls == ["a", "b", "c"]
    s = lru.stats()
    assert (s.held, s.entries, s.evictions, s.hits, s.misses) == (8 * 1024, 2, 1, 1, 3)
    assert s.peak <= s.budget
    lru.get_or_compute("a", make("a", 4))
    lru.get_or_compute("b", make("b", 4))
    assert calls == ["a", "b", "c", "b"]
    assert lru.stats().held <= 10 * 1024


def test_an_object_bigger_than_the_budget_is_returned_not_held() -> None:
    lru = MemoryLRU(budget_bytes=1024)
    lru.get_or_compute("small", lambda: arr(1))
    big = lru.get_or_compute("big", lambda: arr(8))
    assert big.nbytes == 8 * 1024
    s = lru.stats()
    assert (s.oversize, s.entries, s.held) == (1, 1, 1024)


def test_concurrent_callers_of_one_key_compute_once() -> None:
    lru = MemoryLRU(budget_bytes=1 << 20)
    runs = []
    gate = threading.Event()

    def compute():
        runs.append(threading.get_ident())
        gate.wait(5)
        return arr(1)

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(lru.get_or_compute("k", compute)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let every thread reach the key
    gate.set()
    for t in threads:
        t.join(10)
    assert len(runs) == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_a_failed_computation_is_not_shared_and_nothing_is_held() -> None:
    lru = MemoryLRU(budget_bytes=1 << 20)
    attempts = []
    started = threading.Event()
    release = threading.Event()

    def failing():
        attempts.append("fail")
        started.set()
        release.wait(5)
        raise RuntimeError("interrupted")

    def good():
        attempts.append("good")
        return arr(1)

    errors, values = [], []

    def leader():
        try:
            lru.get_or_compute("k", failing)
        except RuntimeError as e:
            errors.append(e)

    t1 = threading.Thread(target=leader)
    t1.start()
    started.wait(5)
    t2 = threading.Thread(target=lambda: values.append(lru.get_or_compute("k", good)))
    t2.start()
    time.sleep(0.1)
    release.set()
    t1.join(5)
    t2.join(5)
    assert attempts == ["fail", "good"]  # the waiter computed for itself after the failure
    assert len(errors) == 1 and len(values) == 1
    assert lru.stats().entries == 1


def test_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError):
        MemoryLRU(-1)


def test_peek_returns_what_is_held_and_never_computes_or_waits() -> None:
    lru = MemoryLRU(budget_bytes=10 * 1024)
    assert lru.peek("a") is None
    held = lru.get_or_compute("a", lambda: arr(4))
    lru.get_or_compute("b", lambda: arr(4))
    assert lru.peek("a") is held  # a hit, and a is now the most recent
    lru.get_or_compute("c", lambda: arr(4))  # 12 KiB > 10: b goes, not a
    assert lru.peek("b") is None and lru.peek("a") is held
    s = lru.stats()
    assert (s.hits, s.misses, s.evictions) == (2, 3, 1)
    # a computation in flight: peek answers at once, without its value
    gate, started = threading.Event(), threading.Event()

    def slow():
        started.set()
        gate.wait(5)
        return arr(1)

    t = threading.Thread(target=lambda: lru.get_or_compute("slow", slow))
    t.start()
    assert started.wait(5)
    t0 = time.perf_counter()
    assert lru.peek("slow") is None and time.perf_counter() - t0 < 0.5
    gate.set()
    t.join(5)
    assert lru.peek("slow") is not None
