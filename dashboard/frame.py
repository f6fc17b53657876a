"""What every page does first: `page(title)`.

Streamlit runs each page file on its own (a deep link or a new tab starts a fresh session on
that page), so each page file begins with `frame.page(...)`, before any other Streamlit call
(tests/test_pages.py checks this): page config, the run's short budget for waiting on new
background jobs (`background.start_run`), the login of a hosted instance, the demo for a fresh
session, then the sidebar. A session that is not logged in sees only the login: the sidebar's
page links are drawn after the gate. They replace Streamlit's own list of the
`pages/` folder (hidden in .streamlit/config.toml), which would call the home page "app".
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import streamlit as st

from dashboard import auth, background
from dashboard.feedback import hosted, is_demo, replay_sticky, shown_uri
from dashboard.session import entries, seed_demo
from dashboard.text import demo_note

# The sidebar's page links: (file relative to app.py, label). Every page file is listed once
# (tests/test_pages.py); the label is also the page's title in the browser tab.
PAGES: tuple[tuple[str, str], ...] = (
    ("app.py", "Dictionaries"),
    ("pages/1_Similarity.py", "Similarity"),
    ("pages/2_Neighbours.py", "Neighbours"),
    ("pages/3_UMAP.py", "UMAP"),
    ("pages/5_Families.py", "Families"),
    ("pages/6_Geometry.py", "Geometry"),
    ("pages/4_Status.py", "Status"),
)


WARM_UP_WAIT_S = 10.0  # at most this long for the first page's run before warming up


def page(title: str) -> None:
    """Page config, the login of a hosted instance, demo on first visit, and the sidebar:
    page links and the list of loaded dictionaries."""
    st.set_page_config(page_title=f"SAE geometry · {title}", layout="wide")
    by_a_bar = background.start_run()  # this run's short wait for new jobs starts now
    _warm_up()
    server = hosted()
    if server is not None:
        auth.gate(server)  # a stranger's page stops here: no sidebar at all
    replay_sticky(by_a_bar)
    auth.wandb_key_from_secrets()
    seed_demo()
    with st.sidebar:
        for path, label in PAGES:
            st.page_link(path, label=label)
        st.divider()
        if server is not None:
            auth.log_out_button(server)
        st.caption("Loaded dictionaries")
        for name, entry in entries().items():
            st.markdown(f"- **{name}** · `{_short(shown_uri(entry.uri))}`")
        if any(is_demo(e.uri) for e in entries().values()):
            st.caption(demo_note())


@st.cache_resource(show_spinner=False)
def _warm_up() -> threading.Thread:
    """Once per server, in a thread of its own at low priority, once the page that asked has
    been drawn: import what later pages and jobs need (torch for the geometry, umap-learn,
    plotly's figure classes, which it loads at the first figure), so that the first visit of
    another page or the first job does not wait for them (seconds on a busy machine).

    Why after the page: imports hold the GIL, which no thread priority yields, so importing
    beside the first page's script run made a fresh server's home page take 3.3 s to show its
    title instead of 1.6 s (Chromium, this project's 2-core machine)."""
    page_run = threading.current_thread()  # the script run drawing the first page
    thread = threading.Thread(target=_prepare, args=(page_run,), name="sae-warm-up", daemon=True)
    thread.start()
    return thread


def _prepare(page_run: threading.Thread) -> None:
    page_run.join(timeout=WARM_UP_WAIT_S)
    background.yield_to_pages()
    import sae_backend.geometry.compare  # noqa: F401 - torch
    import sae_backend.projection  # noqa: F401
    from dashboard import charts  # plotly: not on the first page's way

    x = np.linspace(0, 1, 8)
    charts.similarity_histogram([charts.HistogramSeries("", x, x, x)], "faceted", True)
    charts.mmcs_heatmap(np.eye(2), ["a", "b"])
    with contextlib.suppress(ImportError):
        import umap  # noqa: F401 - numba compiles its functions on import


def _short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]
