"""Computations that outlive the page that asked for them.

Why: a Streamlit page that computes inline blocks its session until the work is done, and a
visitor who leaves the page stops the script, throwing away a computation half done. Here a
computation runs in a worker thread of the process, once per key across every session: a page
submits it and shows its progress beside whatever is already known; the next visit (from any
session) finds it still running, or done.

Results are not kept here beyond a short grace period (`keep_s`): the computations submitted
are the cached functions (`compare`, `match`, ...) behind the shared stores, so a finished
job's result is one lookup away even after its job is forgotten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from .types import Progress

JobState = Literal["queued", "running", "done", "failed"]


@dataclass(eq=False)
class Job:
    """One submitted computation: its state, progress (`done` of `total` steps) and outcome.

    Fields change as the worker runs; read them, never write them.
    """

    key: Hashable
    label: str
    state: JobState = "queued"
    done: int = 0
    total: int = 0
    result: Any = None
    error: BaseException | None = None
    submitted: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def fraction(self) -> float | None:
        """Progress in [0, 1], or None while the computation has reported none."""
        if self.state == "done":
            return 1.0
        return min(1.0, self.done / self.total) if self.total else None

    @property
    def finished_ok(self) -> bool:
        return self.state == "done"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (done or failed); False on timeout."""
        return self._event.wait(timeout)

    def value(self) -> Any:
        """The result of a finished job; re-raises its error if it failed."""
        if self.state == "failed" and self.error is not None:
            raise self.error
        if self.state != "done":
            raise RuntimeError(f"job {self.label!r} has not finished ({self.state})")
        return self.result

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = int(done), int(total)


class Jobs:
    """A process-wide register of background computations, one per key at a time.

    workers: threads running jobs; heavy top-k passes also take their device's lock
             (`activity.exclusive`), so more threads do not oversubscribe a device.
    keep_s:  seconds a finished job (and its result) stays findable by `get`/`submit`.
    """

    def __init__(self, workers: int = 4, keep_s: float = 120.0):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sae-job")
        self._workers = workers
        self._lock = threading.Lock()
        self._jobs: dict[Hashable, Job] = {}
        self.keep_s = keep_s

    def start_workers(self, timeout: float = 60.0) -> bool:
        """Start every worker thread now (the pool starts them one per submit, as needed).

        Why: a submit that must start a thread waits until the new thread has run, which on
        a busy machine takes tenths of a second each; a page submitting a dozen jobs would
        wait for seconds. Call it once, e.g. from a thread of its own when the register is
        made. Returns False if not all had started within `timeout` seconds."""
        started = threading.Barrier(self._workers + 1)
        for _ in range(self._workers):  # each waits for the others: no idle thread to reuse
            self._pool.submit(_wait_at, started, timeout)
        return _wait_at(started, timeout)

    def submit(self, key: Hashable, compute: Callable[[Progress], Any], label: str = "") -> Job:
        """The job for `key`: the one queued, running or recently done, else a new one running
        `compute(progress)`. A failed job is retried by the next submit."""
        with self._lock:
            self._prune()
            job = self._jobs.get(key)
            if job is not None and job.state != "failed":
                return job
            job = self._jobs[key] = Job(key, label or str(key))
        self._pool.submit(self._run, job, compute)
        return job

    def get(self, key: Hashable) -> Job | None:
        """The job for `key` if one is queued, running or recently finished."""
        with self._lock:
            self._prune()
            return self._jobs.get(key)

    def unfinished(self) -> list[Job]:
        """Jobs queued or running, oldest first (for a status page)."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.state in ("queued", "running")]
        return sorted(jobs, key=lambda j: j.submitted)

    def _run(self, job: Job, compute: Callable[[Progress], Any]) -> None:
        job.state = "running"
        try:
            job.result = compute(job._progress)
            job.state = "done"
        except BaseException as e:  # stored for the page to show; the worker lives on
            job.error, job.state = e, "failed"
        finally:
            job.finished = time.monotonic()
            job._event.set()

    def _prune(self) -> None:
        """Forget finished jobs older than keep_s (caller holds the lock)."""
        now = time.monotonic()
        stale = [
            k
            for k, j in self._jobs.items()
            if j.finished is not None and now - j.finished > self.keep_s
        ]
        for k in stale:
            del self._jobs[k]


def _wait_at(barrier: threading.Barrier, timeout: float) -> bool:
    try:
        barrier.wait(timeout)
        return True
    except threading.BrokenBarrierError:
        return False
