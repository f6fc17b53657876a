"""AppTest and background jobs: `settle(at)` reruns a page until its results have arrived.

In a browser a progress bar's fragment polls its jobs and reruns the page when they end;
AppTest never ticks fragments, so a test that wants a page's numbers waits for the jobs here
and reruns the script as a bar would (marked as started by a bar, so the errors of the last
action stay shown) until a run draws no progress bar (with a timeout).
"""

from __future__ import annotations

import time

from streamlit.testing.v1 import AppTest

from dashboard import background


def bars(at: AppTest) -> list[str]:
    """The texts of the progress bars the last run drew."""
    return [el.proto.text for el in at.get("progress")]


def settle(at: AppTest, timeout: float = 60) -> AppTest:
    """`at` rerun until a run draws no progress bar; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while bars(at):
        for job in background.jobs().unfinished():
            job.wait(max(0.0, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise AssertionError(f"still computing after {timeout} s: {bars(at)}")
        at.session_state[background.BY_A_BAR] = True
        at.run()
    return at
