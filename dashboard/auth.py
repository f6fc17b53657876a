"""Who may use a hosted instance (its `auth` setting), and the app's W&B key.

`gate` draws the login (or the refusal) and stops the page for a session that may not see it;
the frame calls it before it draws anything else, sidebar included, and puts `log_out_button`
in the sidebar once the session is in.
Modes: "password" (one shared secret, SAE_PASSWORD), "oidc" (st.login, optionally limited to
some e-mail addresses), "proxy" (a reverse proxy in front authenticates), "none" (open).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

import streamlit as st

from sae_backend.hosting import PASSWORD_SECRET, Hosted

WANDB_KEY = "WANDB_API_KEY"  # a Streamlit secret of a hosted instance; the wandb client's variable
TITLE = "SAE dictionary geometry"
_AUTHENTICATED = "_authenticated"  # session_state flag set by the password form


def _secret(name: str) -> str:
    """A secret from Streamlit secrets, else from the environment ('' if neither has it)."""
    try:
        value = st.secrets.get(name)
    except FileNotFoundError:  # no secrets file
        value = None
    return str(value) if value else os.environ.get(name, "")


def _has_auth_section() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:
        return False


def gate(server: Hosted) -> None:
    """Stop the page, showing the login or the refusal, unless this session may see it."""
    if server.auth == "password":
        _password_gate()
    elif server.auth == "oidc":
        _oidc_gate(server)


def log_out_button(server: Hosted) -> None:
    """A Log out button for a logged-in session (none where the server has no login)."""
    if server.auth == "password":
        if st.button("Log out"):
            st.session_state.clear()
            st.rerun()
    elif server.auth == "oidc":
        st.button("Log out", on_click=st.logout)


def _password_gate() -> None:
    if st.session_state.get(_AUTHENTICATED):
        return
    expected = _secret(PASSWORD_SECRET)
    st.title(TITLE)
    if not expected:  # fail closed: a password server without a password admits nobody
        st.error(f"This server asks for a password but has none set (secret {PASSWORD_SECRET}).")
        st.stop()
    with st.form("login"):
        given = st.text_input("Password", type="password")
        entered = st.form_submit_button("Enter")
    if entered:
        digest = hashlib.sha256  # equal-length digests: compare_digest leaks no length
        if hmac.compare_digest(digest(given.encode()).digest(), digest(expected.encode()).digest()):
            st.session_state[_AUTHENTICATED] = True
            st.rerun()
        time.sleep(1.0)  # slows guessing down
        st.error("Wrong password.")
    st.stop()


def _oidc_gate(server: Hosted) -> None:
    if not _has_auth_section():
        st.error("This server uses OIDC login but has no [auth] section in its secrets.")
        st.stop()
    if not st.user.get("is_logged_in", False):  # absent until a login was configured
        st.title(TITLE)
        st.button("Log in", on_click=st.login, type="primary")
        st.stop()
    email = str(st.user.get("email") or "").lower()
    if server.allowed_emails and email not in server.allowed_emails:
        st.error(f"{email or 'This account'} may not use this server.")
        st.button("Log out", on_click=st.logout)
        st.stop()


def wandb_key_from_secrets() -> None:
    """Copy the WANDB_API_KEY secret (`.streamlit/secrets.toml`, or a host's secrets) into the
    environment, where the wandb client reads its key; before any wandb: load, never shown.

    The secret wins over an inherited variable, as with Streamlit's own promotion of root-level
    secrets to the environment. No secrets file is normal (local use): nothing happens.
    """
    try:
        key = st.secrets.get(WANDB_KEY)
    except FileNotFoundError:  # StreamlitSecretNotFoundError: no secrets file, or unreadable
        return
    if isinstance(key, str) and key.strip():
        os.environ[WANDB_KEY] = key.strip()
