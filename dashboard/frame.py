"""What every page does first: `page(title)`.

Streamlit runs each page file on its own (a deep link or a new tab starts a fresh session on
that page), so each page file begins with `frame.page(...)`, before any other Streamlit call:
page config, the login of a hosted instance, the demo for a fresh session, then the sidebar.
"""

from __future__ import annotations

import streamlit as st

from dashboard import auth
from dashboard.feedback import hosted, is_demo, shown_uri
from dashboard.session import entries, seed_demo
from dashboard.text import demo_note


def page(title: str) -> None:
    """Page config, the login of a hosted instance, demo on first visit, and the sidebar list
    of loaded dictionaries."""
    st.set_page_config(page_title=f"SAE geometry · {title}", layout="wide")
    server = hosted()
    if server is not None:
        auth.gate(server)
    auth.wandb_key_from_secrets()
    seed_demo()
    with st.sidebar:
        st.caption("Loaded dictionaries")
        for name, entry in entries().items():
            st.markdown(f"- **{name}** · `{_short(shown_uri(entry.uri))}`")
        if any(is_demo(e.uri) for e in entries().values()):
            st.caption(demo_note())


def _short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]
