"""Pages that never block: results come from background jobs, with a progress bar until then.

Why: a page that computes inline shows nothing until its last result is ready (minutes for
three 46,080-feature dictionaries on a CPU), and a visitor who leaves it stops the script,
throwing a computation half done away. Here each result a page needs is a `Work` (a key, a
`compute(progress)` and a label) run by the one process-wide `Jobs` (`sae_backend.jobs`): once
per key across every session, in a worker thread that outlives the page. A job computes
through the shared in-memory store (`Work.memory`, normally `dashboard.store.shared_memory()`)
and the backend's disk cache, so a finished result is one lookup away for every later visit.

How a page uses it (controls first, then each result):

    res = background.soon(store.comparison_work(a, b, "decoder", label="A → B"))
    if res is not None:
        ...draw it...      # known: held in memory, or its job finished within the short wait
    # else soon() drew a progress bar here; when the job ends, the page reruns by itself

    got = background.outcome(work)   # the value, or its unfinished Job; draws nothing
    background.progress_bars(jobs)   # one polling fragment: a bar per unfinished job
    background.now(work)             # the value, waiting for it (code that cannot go on)
    background.start(work)           # (re)start it: an explicit action retries a failure

A bar lives in an `st.fragment(run_every=POLL_S)`: each tick redraws only the bars (widgets
stay responsive), and when one of its jobs has ended the fragment reruns the whole app, which
then finds the result in the store. `frame.page()` calls `start_run()`: within one script
run, waiting for newly submitted jobs (a cache read, a small computation) takes at most
WAIT_S in all, so a page with twelve cold results paints as soon as one without any.

A job's error (an `SAEError`) is raised to every caller of `outcome`/`soon`/`now` while the
failed job is remembered (`Jobs.keep_s`), so a failure shows once per page run and is not
recomputed on every rerun; `start` retries it.

Tests: AppTest never ticks fragments; `tests/background_support.py: settle(at)` waits for the
jobs and reruns until a run draws no progress bar.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import streamlit as st

from sae_backend.jobs import Job, Jobs
from sae_backend.memory import MemoryLRU
from sae_backend.types import Progress

T = TypeVar("T")

WAIT_S = 0.3  # per script run: the most time spent waiting for new jobs before drawing bars
POLL_S = 1.0  # seconds between two looks of a progress bar at its jobs
WORKERS = 16  # job threads; heavy top-k passes still run one at a time per device
# (activity.exclusive), so the others wait there while loads and cache reads go ahead.

JOB_NICE = 10  # job threads run at this much lower CPU priority than the pages' threads
_run = threading.local()  # .deadline: time.monotonic() until which this script run may wait
_worker = threading.local()  # .niced: this job thread's priority is lowered already
BY_A_BAR = "bg_rerun_by_a_bar"  # session_state: set by a bar just before it reruns the app


@dataclass(frozen=True)
class Work(Generic[T]):
    """One result a page needs.

    key:     names the result in the job register and in `memory` (sources, options and
             content fingerprints; never a hash of big arrays).
    compute: compute(progress) -> the result; progress(done, total) as the backend reports
             it. Runs in a worker thread: it must not call streamlit.
    label:   what a progress bar and the Status page say (the first submitter's wins).
    memory:  the in-memory store the job fills and `outcome` reads first; None: the result
             lives only as long as its finished job (`Jobs.keep_s`).
    """

    key: Hashable
    compute: Callable[[Progress], T]
    label: str
    memory: MemoryLRU | None = None


@st.cache_resource(show_spinner=False)
def jobs() -> Jobs:
    """The one register of background computations for every session of this server; its
    worker threads start at once, in a thread of their own, so no page waits for them."""
    register = Jobs(workers=WORKERS)
    threading.Thread(target=register.start_workers, name="sae-job-start", daemon=True).start()
    return register


def start_run(wait_s: float = WAIT_S) -> bool:
    """Begin a script run's waiting budget (called by `frame.page`); returns whether a progress
    bar started this run (rather than the visitor, by an action or by opening the page)."""
    _run.deadline = time.monotonic() + wait_s
    return bool(st.session_state.pop(BY_A_BAR, False))


def start(work: Work[T]) -> Job:
    """Submit `work` (no new job if one is queued, running or recently done); a failed job is
    tried again, so call this for an explicit action (adding a dictionary), not on every run."""
    memory = work.memory

    def compute(progress: Progress) -> T:
        yield_to_pages()
        if memory is None:
            return work.compute(progress)
        return memory.get_or_compute(work.key, lambda: work.compute(progress))

    return jobs().submit(work.key, compute, work.label)


def yield_to_pages() -> None:
    """Run this worker thread at a lower CPU priority (nice +JOB_NICE; Linux sets it per
    thread, and threads it starts, e.g. torch's, inherit it): on a busy machine the script
    threads that draw pages then get the cores first, so a page paints while jobs compute."""
    if getattr(_worker, "niced", False):
        return
    _worker.niced = True
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + JOB_NICE)
        )


def outcome(work: Work[T]) -> T | Job:
    """The result of `work` if known, else its unfinished `Job` (submitted now if there was
    none); draws nothing. Raises the job's error if it failed."""
    if work.memory is not None:
        held = work.memory.peek(work.key)
        if held is not None:
            return held
    job = jobs().get(work.key)
    if job is None:
        job = start(work)
        remaining = getattr(_run, "deadline", 0.0) - time.monotonic()
        if remaining > 0:  # a cache hit or a small computation: no bar for a moment's work
            job.wait(remaining)
    if job.state in ("done", "failed"):
        return job.value()  # the result, or the job's error raised
    return job


def soon(work: Work[T]) -> T | None:
    """The result of `work` if known; else None after drawing its progress bar here."""
    got = outcome(work)
    if isinstance(got, Job):
        progress_bars([got])
        return None
    return got


def now(work: Work[T]) -> T:
    """The result of `work`, waiting for it (in the same job as every other caller's)."""
    got = outcome(work)
    if isinstance(got, Job):
        got.wait()
        return got.value()
    return got


def pending(*results: Any) -> list[Job]:
    """The unfinished jobs among `outcome` results (to hand to `progress_bars`)."""
    return [r for r in results if isinstance(r, Job)]


def progress_bars(unfinished: Sequence[Job]) -> None:
    """A bar per job, redrawn every POLL_S seconds by one fragment; when any of them has
    ended, the whole app reruns (and finds the result). Nothing for an empty list."""
    if unfinished:
        _bars(list(unfinished), {"ticks": 0})


@st.fragment(run_every=POLL_S)
def _bars(unfinished: list[Job], seen: dict[str, int]) -> None:
    # The first call draws within the page's own run, which must finish (a rerun from there
    # would cut it short); each later call is a tick of this fragment alone.
    if seen["ticks"] and any(job.state in ("done", "failed") for job in unfinished):
        st.session_state[BY_A_BAR] = True
        st.rerun(scope="app")
    seen["ticks"] += 1
    for job in unfinished:
        st.progress(job.fraction or 0.0, text=describe(job))


def describe(job: Job) -> str:
    """'within A: 42% · 12 s', 'Loading B: queued · 3 s': what a bar says about its job."""
    seconds = time.monotonic() - job.submitted
    if job.state == "queued":
        where = "queued"
    elif job.fraction is None:
        where = "running"
    else:
        where = f"{100 * job.fraction:.0f}%"
    return f"{job.label}: {where} · {seconds:,.0f} s"
