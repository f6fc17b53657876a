"""The activity register and the one-heavy-computation-per-device lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np

from sae_backend.activity import ACTIVITY, exclusive
from sae_backend.cache import ArrayCache
from sae_backend.geometry.topk import topk_cosine


def overlaps(intervals: list[tuple[float, float]]) -> bool:
    s = sorted(intervals)
    return any(b0 < a1 for (_, a1), (b0, _) in zip(s, s[1:], strict=False))


def run_threads(n: int, device: str, pairs: int, hold: float) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []

    def work():
        with exclusive(device, "test work", pairs):
            t0 = time.monotonic()
            time.sleep(hold)
            spans.append((t0, time.monotonic()))

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return spans


def test_heavy_work_runs_one_at_a_time_per_device(monkeypatch) -> None:
    monkeypatch.setenv("SAE_HEAVY_PAIRS", "1000")
    spans = run_threads(4, "test-dev", pairs=1000, hold=0.1)
    assert len(spans) == 4 and not overlaps(spans)


def test_light_work_does_not_wait(monkeypatch) -> None:
    monkeypatch.setenv("SAE_HEAVY_PAIRS", "1000")
    spans = run_threads(4, "test-dev", pairs=999, hold=0.3)
    assert len(spans) == 4 and overlaps(spans)  # would be serial if light work took the lock


def test_waiting_work_is_visible(monkeypatch) -> None:
    monkeypatch.setenv("SAE_HEAVY_PAIRS", "1")
    release = threading.Event()

    def holder():
        with exclusive("vis-dev", "first", 10):
            release.wait(10)

    def waiter():
        with exclusive("vis-dev", "second", 10):
            pass

    t1 = threading.Thread(target=holder)
    t1.start()
    time.sleep(0.1)
    t2 = threading.Thread(target=waiter)
    t2.start()
    time.sleep(0.2)
    states = {(t.label, t.state) for t in ACTIVITY.snapshot().tasks if t.kind == "heavy"}
    release.set()
    t1.join(5)
    t2.join(5)
    assert ("first", "running") in states and ("second", "waiting") in states


SCRIPT = """
import sys, time
from sae_backend.activity import exclusive
with exclusive("proc-dev", "p", 10):
    t0 = time.time(); time.sleep(0.4); print(t0, time.time(), flush=True)
"""


def test_heavy_work_of_two_processes_does_not_overlap(monkeypatch) -> None:
    monkeypatch.setenv("SAE_HEAVY_PAIRS", "1")
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    spans = [tuple(map(float, p.communicate(timeout=60)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert not overlaps(spans)


def test_topk_results_are_unchanged_under_the_lock(monkeypatch) -> None:
    monkeypatch.setenv("SAE_HEAVY_PAIRS", "1")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    got = topk_cosine(a, None, 3)
    ref = a.astype(np.float64) @ a.astype(np.float64).T
    np.fill_diagonal(ref, -np.inf)
    np.testing.assert_allclose(got.values, -np.sort(-ref, axis=1)[:, :3], atol=1e-6)


def test_cache_misses_are_counted_per_key(tmp_path) -> None:
    cache = ArrayCache(tmp_path / "c")
    before = ACTIVITY.snapshot().runs
    for _ in range(3):
        cache.get_or_compute("unit/abc", lambda: ({"x": np.arange(3)}, {}))
    runs = ACTIVITY.snapshot().runs
    assert runs[("unit", "unit/abc")] - before.get(("unit", "unit/abc"), 0) == 1


LOCK_HOLDER = """
import sys, time
from sae_backend.activity import exclusive
with exclusive("other-dev", "holder", 10):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_lock_held_by_another_process_shows_as_busy(monkeypatch) -> None:
    from sae_backend.activity import devices_busy

    monkeypatch.setenv("SAE_HEAVY_PAIRS", "1")
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        assert devices_busy()["other-dev"] is True
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(30)
        assert devices_busy()["other-dev"] is False
    finally:
        proc.kill()
