"""What this process is computing, and one heavy computation per device at a time.

Why: a hosted dashboard serves many sessions from one process, often beside a `precompute`
run on the same GPU. Two paper-scale top-k passes at once would only slow each other down and
double the device memory they hold, so heavy work waits its turn (`exclusive`). The status
page shows what runs and what waits (`ACTIVITY.snapshot()`), and how often each computation
ran, which is also how tests prove that a computation requested by many sessions ran once.

`exclusive` is a per-device lock in two layers: a threading lock for the sessions of this
process and an `fcntl.flock` on a file in the cache folder for other processes (the kernel
frees it when its holder dies). Small work (below `heavy_pairs()` scored pairs) never waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from . import settings


@dataclass(frozen=True)
class Task:
    """One computation in progress: what it is, whether it runs or waits, since when."""

    kind: str  # "compare", "match", "dictionary", "top-k", ...
    label: str  # a cache key or a short description
    state: str  # "running" or "waiting"
    since: float  # time.time() when it entered this state

    @property
    def seconds(self) -> float:
        return time.time() - self.since


@dataclass(frozen=True)
class Snapshot:
    """tasks: in progress now; runs: how many times each (kind, label) was computed."""

    tasks: tuple[Task, ...]
    runs: dict[tuple[str, str], int]

    def runs_by_kind(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (kind, _), n in self.runs.items():
            out[kind] += n
        return dict(out)


class Activity:
    """A thread-safe register of computations: in progress, and run counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._tasks: dict[int, Task] = {}
        self._runs: Counter[tuple[str, str]] = Counter()

    @contextlib.contextmanager
    def track(self, kind: str, label: str, *, count: bool = True) -> Iterator[None]:
        """Register a running computation for the duration of the block; count it once."""
        with self._task(kind, label, "running"):
            if count:
                with self._lock:
                    self._runs[(kind, label)] += 1
            yield

    @contextlib.contextmanager
    def _task(self, kind: str, label: str, state: str) -> Iterator[None]:
        with self._lock:
            tid = next(self._ids)
            self._tasks[tid] = Task(kind, label, state, time.time())
        try:
            yield
        finally:
            with self._lock:
                self._tasks.pop(tid, None)

    def snapshot(self) -> Snapshot:
        with self._lock:
            tasks = tuple(sorted(self._tasks.values(), key=lambda t: t.since))
            return Snapshot(tasks, dict(self._runs))


ACTIVITY = Activity()  # the process-wide register; the status page reads it
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def heavy_pairs() -> int:
    """From how many scored pairs a computation counts as heavy (`$SAE_HEAVY_PAIRS`, default
    10**8 = 10,000 x 10,000; the paper's pairs are 2.1e9)."""
    return settings.HEAVY_PAIRS.get()


@contextlib.contextmanager
def exclusive(device: str, label: str, pairs: int) -> Iterator[None]:
    """Run the block alone on `device` (e.g. "cuda:0", "cpu") if it scores >= heavy_pairs()
    pairs: other heavy work of this process and of other processes sharing the cache folder
    waits, and shows as "waiting" in `ACTIVITY` meanwhile. Light work runs at once."""
    if pairs < heavy_pairs():
        yield
        return
    with _DEVICE_LOCKS_GUARD:
        lock = _DEVICE_LOCKS.setdefault(device, threading.Lock())
    with contextlib.ExitStack() as held:
        with ACTIVITY._task("heavy", label, "waiting"):
            lock.acquire()  # this process's other sessions
            held.callback(lock.release)
            fd = _open_lock_file(device)
            held.callback(os.close, fd)  # closing releases the flock
            fcntl.flock(fd, fcntl.LOCK_EX)  # other processes (a precompute run)
        with ACTIVITY.track("heavy", label, count=False):
            yield


def devices_busy() -> dict[str, bool]:
    """{device: whether its heavy-work lock is held now, by any process} for every device
    that has a lock file: how the Status page sees a `precompute` running beside the server."""
    out = {}
    for path in sorted(settings.lock_dir().glob("heavy-*.lock")):
        device = path.name[len("heavy-") : -len(".lock")]
        fd = _open_lock_file(device)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            out[device] = False
        except BlockingIOError:
            out[device] = True
        finally:
            os.close(fd)
    return out


def _open_lock_file(device: str) -> int:
    folder = settings.lock_dir()
    settings.make_private_dir(folder)
    return settings.open_lock_file(
        folder / ("heavy-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock")
    )
