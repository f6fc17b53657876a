"""Status: what this server holds and computes, for whoever runs or shares the instance.

Every number comes from the process itself: the disk cache (`sae_backend.cache`), the shared
in-memory store (`dashboard.store.shared_memory`), and the activity register
(`sae_backend.activity`), which counts each computation the cache had to run, and the pages'
background jobs (`dashboard.background.jobs`).
"""

from __future__ import annotations

import resource
import time

import pandas as pd
import streamlit as st

from dashboard import background, frame, store
from dashboard.feedback import hosted
from sae_backend.activity import ACTIVITY, devices_busy
from sae_backend.cache import default_cache

frame.page("Status")
st.title("Server status")
if st.button("Refresh"):
    st.rerun()

server = hosted()
if server is None:
    st.caption("Local mode: no login, any source may be loaded.")
else:
    st.caption(
        f"Hosted mode: login `{server.auth}`; {len(server.data_dirs)} data folder(s); remote "
        f"sources: {', '.join(sorted(server.remote)) or 'none'}; uploads "
        f"{'on' if server.uploads else 'off'}."
    )

MB = 2**20
disk = default_cache()
mem = store.shared_memory().stats()
snap = ACTIVITY.snapshot()
runs = snap.runs
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

c1, c2, c3, c4 = st.columns(4)
c1.metric("Disk cache", f"{disk.volume() / MB:,.1f} MB")
c2.metric("Held in memory", f"{mem.held / MB:,.1f} MB")
c3.metric("Computations run", f"{sum(runs.values())}")
c4.metric("Server peak memory", f"{peak_rss / MB:,.0f} MB")
st.caption(
    f"Disk cache: {len(disk)} entries, limit {disk.size_limit / MB:,.0f} MB. "
    f"Memory store: {mem.entries} objects, budget {mem.budget / MB:,.0f} MB, peak "
    f"{mem.peak / MB:,.1f} MB, {mem.hits} hits, {mem.misses} loads, {mem.evictions} evicted, "
    f"{mem.oversize} too big to hold. Computations: {len(runs)} distinct, most runs of one "
    f"computation: {max(runs.values(), default=0)}."
)


@st.fragment(run_every=2.0)
def in_progress() -> None:
    """Background jobs of the pages and the backend's computations, redrawn every 2 s (only
    this part: the rest of the page stays as it is)."""
    st.subheader("In progress")
    jobs = background.jobs().unfinished()
    if jobs:
        st.caption("Background jobs (pages submit them; they run on when a visitor leaves):")
        st.dataframe(
            pd.DataFrame(
                [{"what": j.label, "state": j.state,
                  "progress": None if j.fraction is None else 100 * j.fraction,
                  "seconds": time.monotonic() - j.submitted}
                 for j in jobs]
            ),
            hide_index=True,
            column_config={
                "progress": st.column_config.ProgressColumn(format="%.0f%%", min_value=0,
                                                            max_value=100),
                "seconds": st.column_config.NumberColumn(format="%.1f"),
            },
        )  # fmt: skip
    busy = devices_busy()
    if busy:
        st.caption(
            "Heavy-work lock per device (shared with other processes, e.g. a `precompute` run): "
            + ", ".join(f"{dev} {'busy' if held else 'free'}" for dev, held in busy.items())
        )
    tasks = ACTIVITY.snapshot().tasks
    if tasks:
        st.dataframe(
            pd.DataFrame(
                [{"kind": t.kind, "what": t.label, "state": t.state, "seconds": t.seconds}
                 for t in tasks]
            ),
            hide_index=True,
            column_config={"seconds": st.column_config.NumberColumn(format="%.1f")},
        )  # fmt: skip
    elif not jobs:
        st.write("Nothing is being computed.")


in_progress()

st.subheader("Computations since the server started")
if runs:
    st.dataframe(
        pd.DataFrame(
            [{"kind": kind, "key": key, "runs": n} for (kind, key), n in sorted(runs.items())]
        ),
        hide_index=True,
    )
else:
    st.write("None yet: everything shown so far came from the cache.")
