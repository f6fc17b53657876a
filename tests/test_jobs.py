"""Background jobs: once per key across callers, progress, failures, and outliving the caller."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from sae_backend import load
from sae_backend.errors import InputError
from sae_backend.geometry.compare import compare
from sae_backend.jobs import Jobs
from tests.factories import planted, write_saelens


def test_one_computation_per_key_for_many_callers():
    jobs = Jobs(workers=4)
    release = threading.Event()
    runs = []

    def compute(progress):
        runs.append(1)
        release.wait(5)
        return 42

    handles = []
    callers = [
        threading.Thread(target=lambda: handles.append(jobs.submit("k", compute))) for _ in range(8)
    ]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len({id(h) for h in handles}) == 1  # every caller got the same job
    assert handles[0].state in ("queued", "running") and not handles[0].wait(0.05)
    release.set()
    assert handles[0].wait(5) and handles[0].value() == 42
    assert runs == [1]
    assert jobs.submit("k", compute) is handles[0]  # done and recent: not run again
    assert runs == [1]


def test_progress_is_visible_while_running():
    jobs = Jobs()
    step = threading.Event()
    seen = threading.Event()

    def compute(progress):
        progress(3, 12)
        seen.set()
        step.wait(5)
        progress(12, 12)
        return "ok"

    job = jobs.submit(("compare", "a", "b"), compute, "a -> b")
    assert seen.wait(5)
    assert (job.state, job.done, job.total, job.fraction) == ("running", 3, 12, 0.25)
    assert job in jobs.unfinished() and job.label == "a -> b"
    step.set()
    job.wait(5)
    assert job.fraction == 1.0 and jobs.unfinished() == []


def test_a_failure_is_stored_then_retried_by_the_next_submit():
    jobs = Jobs()
    attempts = []

    def compute(progress):
        attempts.append(1)
        if len(attempts) == 1:
            raise InputError("k must be between 1 and 3, got 9")
        return "second time"

    job = jobs.submit("k", compute)
    job.wait(5)
    assert job.state == "failed" and isinstance(job.error, InputError)
    with pytest.raises(InputError, match="k must be"):
        job.value()
    again = jobs.submit("k", compute)
    assert again is not job and again.wait(5) and again.value() == "second time"


def test_a_job_outlives_the_thread_that_submitted_it():
    """A Streamlit script that stops (the visitor left the page) is a thread that ends: the
    job goes on, and the next visit finds it by key."""
    jobs = Jobs()
    started = threading.Event()

    def compute(progress):
        started.set()
        time.sleep(0.3)
        return np.arange(3)

    page = threading.Thread(target=lambda: jobs.submit("emb", compute))
    page.start()
    page.join()
    assert started.wait(5)
    later = jobs.get("emb")
    assert later is not None and later.wait(5)
    np.testing.assert_array_equal(later.value(), [0, 1, 2])


def test_finished_jobs_are_forgotten_after_keep_s():
    jobs = Jobs(keep_s=0.05)
    job = jobs.submit("k", lambda progress: 1)
    job.wait(5)
    time.sleep(0.1)
    assert jobs.get("k") is None
    assert jobs.submit("k", lambda progress: 2).wait(5)


def test_a_real_comparison_in_the_background_equals_the_direct_call(tmp_path):
    """What pages submit: a cached backend call with its progress hook."""
    p = planted(d=16)
    a = load(str(write_saelens(tmp_path / "a", p.decoder, p.encoder)))
    jobs = Jobs()
    job = jobs.submit("within", lambda progress: compare(a, None, progress=progress, cache=False))
    assert job.wait(30)
    direct = compare(a, None, cache=False)
    np.testing.assert_array_equal(job.value().indices, direct.indices)
    np.testing.assert_array_equal(job.value().values, direct.values)
    assert job.done == job.total == len(a.alive_index)


def test_start_workers_starts_every_thread_and_jobs_run_as_before():
    jobs = Jobs(workers=5)
    before = set(threading.enumerate())
    assert jobs.start_workers(timeout=10)
    started = set(threading.enumerate()) - before
    assert len(started) == 5 and all(t.name.startswith("sae-job") for t in started)
    job = jobs.submit("k", lambda progress: 7)
    assert job.wait(5) and job.value() == 7
    assert set(threading.enumerate()) - before == started  # no new thread for the job
