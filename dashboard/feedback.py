"""Which server this is, and the one way each page shows a visitor an error, progress or a source.

Everything here depends only on the hosted settings (`$SAE_HOSTED`, or none on a laptop), so
the session and store modules can use it without importing the page frame. On a hosted
instance messages and sources never show the server's private folders or secrets.
"""

from __future__ import annotations

from typing import NoReturn

import streamlit as st

from sae_backend import SAEError
from sae_backend.demo import demo_sources
from sae_backend.hosting import Hosted, hosted_settings


def hosted() -> Hosted | None:
    """The hosted settings ($SAE_HOSTED), or None on a laptop; a broken file stops the page."""
    try:
        return hosted_settings()
    except SAEError as e:
        _stop(f"This server is misconfigured: {e}")


def _stop(message: str) -> NoReturn:
    st.error(message)
    st.stop()


def is_demo(uri: str) -> bool:
    """Whether `uri` is one of the bundled demo's sources (every session starts with them)."""
    return uri in demo_sources().values()


def shown_uri(uri: str) -> str:
    """A source as visitors see it: the demo by name, on a hosted instance no server paths."""
    if is_demo(uri):
        return "bundled demo"
    server = hosted()
    return server.display(uri) if server is not None else uri


STICKY_KEY = "sae_sticky_errors"  # session_state: errors of the visitor's last action


def show_error(err: SAEError, what: str = "", *, sticky: bool = False) -> None:
    """One st.error line for an expected problem (never a traceback); on a hosted instance
    without the server's private folders and secrets. sticky: the error of a one-off action
    (adding a dictionary, opening a link), shown again on the reruns a progress bar starts
    (no action of the visitor's) until the visitor's next action (`replay_sticky`)."""
    text = f"{what}: {err}" if what else str(err)
    server = hosted()
    text = server.redact(text) if server is not None else text
    st.error(text)
    if sticky:
        st.session_state.setdefault(STICKY_KEY, []).append(text)


def replay_sticky(by_a_bar: bool) -> None:
    """On a rerun a progress bar started: the sticky errors again (they would vanish with the
    run that showed them); on any other run: forget them, the visitor has acted since."""
    if not by_a_bar:
        st.session_state.pop(STICKY_KEY, None)
        return
    for text in st.session_state.get(STICKY_KEY, []):
        st.error(text)
