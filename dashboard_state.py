"""Shared UI plumbing of the dashboard pages (app.py, pages/*.py); no geometry lives here.

Session state holds only names -> (URI, load options); `Dictionary` objects and results come
from process-wide caches keyed by URIs, options and fingerprints (`st.cache_resource`), never
by hashing big arrays. Every page starts with `page(title)`, which loads the bundled demo into
a fresh session, so a deep link opened in a new tab works too.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from sae_backend import Dictionary, SAEError, compare, load, match
from sae_backend import settings as backend_settings
from sae_backend.demo import demo_contexts, demo_manifest, demo_sources
from sae_backend.errors import InputError
from sae_backend.geometry.compare import Comparison
from sae_backend.geometry.matching import Matching
from sae_backend.geometry.stats import BootstrapCI, bootstrap_mean_difference, random_null
from sae_backend.hosting import PASSWORD_SECRET, Hosted, hosted_settings
from sae_backend.memory import MemoryLRU

STATE_KEY = "sae_dicts"  # session_state: {name: {"uri": str, "options": {key: value}}}
TOY_NOTE = (
    "The bundled demo is a **toy** (SAE_DEMO=toy): random directions with planted overlaps "
    "(toy-b shares half of toy-a's directions, toy-a-seed2 is a perturbed copy), not SAEs "
    "trained on a model."
)
WANDB_KEY = "WANDB_API_KEY"  # a Streamlit secret of a hosted instance; the wandb client's variable
UMAP_AUTO_LIMIT = 10_000  # the UMAP page computes up to this many points unasked; more: a button
_MARK = re.compile(r"\[\[(.*?)\]\]", re.S)  # the firing token in a demo context window
UPLOAD_LIMIT_MB = 512  # local mode; also server.maxUploadSize in .streamlit/config.toml
UPLOAD_MAX_AGE_S = 24 * 3600  # upload folders older than this are removed on the next upload
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


def page(title: str) -> None:
    """Page config, the login of a hosted instance, demo on first visit, and the sidebar list
    of loaded dictionaries."""
    st.set_page_config(page_title=f"SAE geometry · {title}", layout="wide")
    hosted = settings()
    if hosted is not None:
        _gate(hosted)
    wandb_key_from_secrets()
    if STATE_KEY not in st.session_state:
        st.session_state[STATE_KEY] = {
            name: {"uri": uri, "options": {}} for name, uri in demo_sources().items()
        }
    with st.sidebar:
        st.caption("Loaded dictionaries")
        for name, entry in entries().items():
            st.markdown(f"- **{name}** · `{_short(entry['uri'])}`")
        if any(is_demo(e["uri"]) for e in entries().values()):
            st.caption(demo_note())


def settings() -> Hosted | None:
    """The hosted settings ($SAE_HOSTED), or None on a laptop; a broken file stops the page."""
    try:
        return hosted_settings()
    except SAEError as e:
        st.error(f"This server is misconfigured: {e}")
        st.stop()


def _secret(name: str) -> str:
    """A secret from Streamlit secrets, else from the environment ('' if neither has it)."""
    try:
        value = st.secrets.get(name)
    except FileNotFoundError:  # no secrets file
        value = None
    return str(value) if value else os.environ.get(name, "")


def _gate(hosted: Hosted) -> None:
    """Stop the page unless this session may see it (hosted mode's `auth` setting)."""
    if hosted.auth == "password":
        _password_gate()
    elif hosted.auth == "oidc":
        _oidc_gate(hosted)
    # "proxy": a reverse proxy in front authenticates; "none": an open instance


def _password_gate() -> None:
    if st.session_state.get("_authenticated"):
        with st.sidebar:
            if st.button("Log out"):
                st.session_state.clear()
                st.rerun()
        return
    expected = _secret(PASSWORD_SECRET)
    st.title("SAE dictionary geometry")
    if not expected:  # fail closed: a password server without a password admits nobody
        st.error(f"This server asks for a password but has none set (secret {PASSWORD_SECRET}).")
        st.stop()
    with st.form("login"):
        given = st.text_input("Password", type="password")
        entered = st.form_submit_button("Enter")
    if entered:
        digest = hashlib.sha256  # equal-length digests: compare_digest leaks no length
        if hmac.compare_digest(digest(given.encode()).digest(), digest(expected.encode()).digest()):
            st.session_state["_authenticated"] = True
            st.rerun()
        time.sleep(1.0)  # slows guessing down
        st.error("Wrong password.")
    st.stop()


def _oidc_gate(hosted: Hosted) -> None:
    try:
        configured = "auth" in st.secrets
    except FileNotFoundError:
        configured = False
    if not configured:
        st.error("This server uses OIDC login but has no [auth] section in its secrets.")
        st.stop()
    if not st.user.get("is_logged_in", False):  # absent until a login was configured
        st.title("SAE dictionary geometry")
        st.button("Log in", on_click=st.login, type="primary")
        st.stop()
    email = str(st.user.get("email") or "").lower()
    if hosted.allowed_emails and email not in hosted.allowed_emails:
        st.error(f"{email or 'This account'} may not use this server.")
        st.button("Log out", on_click=st.logout)
        st.stop()
    with st.sidebar:
        st.button("Log out", on_click=st.logout)


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


def entries() -> dict[str, dict[str, Any]]:
    return st.session_state[STATE_KEY]


def is_demo(uri: str) -> bool:
    return uri in demo_sources().values()


def demo_note() -> str:
    """One caption saying what the bundled demo is (the real one or the toy)."""
    if backend_settings.DEMO.get() == "toy":
        return TOY_NOTE
    m = demo_manifest()
    cs = m["cross_seed"]
    what = "; ".join(
        f"{n}: {e['spec']['ratio']}x wide, L1 {e['spec']['l1']}, seed {e['spec']['seed']}"
        for n, e in m["saes"].items()
    )
    return (
        f"The bundled demo: small SAEs trained here (`scripts/build_demo.py`) on "
        f"{m['model'].split(' (')[0]}'s residual stream at `{m['hook']}` ({what}). "
        f"Two seeds' decoder MMCS {cs['mmcs']:.2f} (random directions: {cs['random_mmcs']:.2f})."
    )


def contexts(name: str) -> dict[int, list[tuple[float, str]]]:
    """Top activating contexts per feature of a loaded demo SAE; {} for any other source."""
    return demo_contexts(entries()[name]["uri"])


def context_markdown(text: str) -> str:
    """A context window as Markdown: text escaped, the firing token in bold.

    Tokens often start with a space (" which"); Markdown bold must not, so the token's outer
    whitespace goes outside the ** markers."""

    def bold(m: re.Match) -> str:
        token = m.group(1)
        core = token.strip()
        if not core:  # a whitespace token: show a visible stand-in
            return "\x00" + ("⏎" if "\n" in token else "␣") + "\x01"
        lead, trail = token[: len(token) - len(token.lstrip())], token[len(token.rstrip()) :]
        return f"{lead}\x00{core}\x01{trail}"

    esc = re.sub(r"([\\`*_{}\[\]()#+\-.!|<>$~])", r"\\\1", _MARK.sub(bold, text))
    return esc.replace("\x00", "**").replace("\x01", "**")


def context_plain(text: str) -> str:
    """A context window as plain text, the firing token between « »."""
    return _MARK.sub("«\\1»", text)


def context_hover(contexts_of: dict[int, list], feature: int) -> str:
    """The strongest context of a feature as HTML-escaped hover text ('' if none)."""
    ctx = contexts_of.get(int(feature))
    return html.escape(context_plain(ctx[0][1])) if ctx else ""


def show_error(err: SAEError, what: str = "") -> None:
    """One st.error line for an expected problem (never a traceback); on a hosted instance
    without the server's private folders and secrets."""
    text = f"{what}: {err}" if what else str(err)
    hosted = settings()
    st.error(hosted.redact(text) if hosted is not None else text)


@st.cache_resource(show_spinner=False)
def shared_memory() -> MemoryLRU:
    """The one in-RAM store of dictionaries and results for every session of this server."""
    hosted = settings()
    mb = hosted.memory_budget_mb if hosted is not None else backend_settings.MEMORY_BUDGET_MB.get()
    return MemoryLRU(mb * 2**20)


def load_entry(uri: str, options: dict[str, str] | None = None) -> Dictionary:
    """The Dictionary for (uri, options), from the shared in-memory store; raises SAEError."""
    opts = _options_key(options)
    return shared_memory().get_or_compute(
        ("dictionary", uri, opts), lambda: load(uri, **dict(opts))
    )


def _options_key(options: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in (options or {}).items() if v))


def get(name: str) -> Dictionary:
    entry = entries()[name]
    return load_entry(entry["uri"], entry["options"])


def dictionaries() -> dict[str, Dictionary]:
    """Every loaded dictionary by name; one that fails to load shows an st.error and is left out."""
    out = {}
    for name in list(entries()):
        try:
            with st.spinner(f"Loading {name} ..."):
                out[name] = get(name)
        except SAEError as e:
            show_error(e, name)
    return out


def dictionaries_or_stop() -> dict[str, Dictionary]:
    """`dictionaries()` for a page that needs at least one: otherwise a hint, and the page stops."""
    dicts = dictionaries()
    if not dicts:
        st.info("Load a dictionary on the home page first.")
        st.stop()
    return dicts


def add(
    name: str, uri: str, options: dict[str, str] | None = None, *, upload: bool = False
) -> Dictionary:
    """Load (uri, options) and register it under `name`; raises SAEError (nothing registered).

    On a hosted instance a visitor's URI must pass the server's rules first (`Hosted.
    check_source`); `upload=True` marks a path that `save_upload` wrote, which needs none."""
    hosted = settings()
    if hosted is not None and not upload:
        uri = hosted.check_source(uri)
    name = name.strip()
    if not _NAME_OK.match(name):
        raise InputError(
            f"name {name!r}: use 1-40 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    if name in entries():
        raise InputError(f"the name {name!r} is taken; remove it first or choose another")
    # A first load with a progress bar (downloads, the backend's disk cache), outside the
    # st.cache_resource function: cached functions must not update elements made outside.
    bar, update = progress_callback(f"Loading {uri} ...")
    try:
        load(uri, **dict(_options_key(options)), progress=update)
    finally:
        bar.empty()
    d = load_entry(uri, options)
    entries()[name] = {"uri": uri, "options": {k: v for k, v in (options or {}).items() if v}}
    return d


def share_query(name: str) -> dict[str, str]:
    """Query parameters that let another session (a collaborator's) open `name` as well: its
    source, as `shown_uri` writes it, unless it is the bundled demo every session has."""
    entry = entries()[name]
    if is_demo(entry["uri"]):
        return {}
    src = shown_uri(entry["uri"])
    if entry["options"].get("position") and "#" not in src:
        src += "#" + entry["options"]["position"]
    extra = {k: v for k, v in entry["options"].items() if k in ("orientation", "key")}
    return {"src": src, **extra}


def adopt_from_url() -> None:
    """Load the dictionary a shared link names (`?dict=NAME&src=URI`) if this session lacks
    it; on a hosted instance the source passes the server's rules like any typed one."""
    name, src = st.query_params.get("dict"), st.query_params.get("src")
    if not name or not src or name in entries():
        return
    options = {k: st.query_params[k] for k in ("orientation", "key") if st.query_params.get(k)}
    try:
        add(name, src, options)
    except SAEError as e:
        show_error(e, f"The link's {name}")


def rename(old: str, new: str) -> None:
    new = new.strip()
    if new == old:
        return
    if not _NAME_OK.match(new):
        raise InputError(f"name {new!r}: use 1-40 letters, digits, '.', '_' or '-'")
    if new in entries():
        raise InputError(f"the name {new!r} is taken")
    st.session_state[STATE_KEY] = {(new if k == old else k): v for k, v in entries().items()}


def remove(name: str) -> None:
    entries().pop(name, None)


def suggest_name(uri: str) -> str:
    """A short free name from a URI's last part: 'hf:o/r:e2e_l6.pt' -> 'e2e_l6'."""
    tail = re.split(r"[/:#@]", uri.rstrip("/"))[-1] or "sae"
    base = re.sub(r"[^A-Za-z0-9._-]", "-", Path(tail).stem)[:32].strip("-._") or "sae"
    name, i = base, 2
    while name in entries():
        name, i = f"{base}-{i}", i + 1
    return name


def upload_limit_mb() -> int:
    hosted = settings()
    return hosted.upload_limit_mb if hosted is not None else UPLOAD_LIMIT_MB


def save_upload(files: list[Any]) -> str:
    """Write uploaded files (one checkpoint, or the files of one SAE folder) under a content-
    named folder, keeping their names (formats are detected by name); returns the URI.

    Folders older than a day are removed first, so uploads do not pile up on a server."""
    total = sum(len(f.getvalue()) for f in files)
    if total > upload_limit_mb() * 2**20:
        raise InputError(f"the upload is {total / 2**20:.0f} MB; at most {upload_limit_mb()} MB")
    hosted = settings()
    root = hosted.upload_folder if hosted else Path(tempfile.gettempdir()) / "sae_uploads"
    _remove_old_uploads(root)
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(f.name.encode() + b"\0" + f.getvalue())
    folder = root / h.hexdigest()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for f in files:
        target = folder / Path(f.name).name  # never a path from the client
        if not target.exists():
            partial = target.with_name(f".partial-{target.name}")
            partial.write_bytes(f.getvalue())
            partial.replace(target)
    os.utime(folder)  # used now: the age that `_remove_old_uploads` goes by starts again
    return str(folder if len(files) > 1 else folder / Path(files[0].name).name)


def _remove_old_uploads(root: Path) -> None:
    if not root.is_dir():
        return
    now = time.time()
    for folder in root.iterdir():
        try:
            if folder.is_dir() and now - folder.stat().st_mtime > UPLOAD_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # removed by another session meanwhile


def compare_named(
    a: Dictionary, b: Dictionary | None, directions: str = "decoder", k: int = 1
) -> Comparison:
    """compare(a, b) from the shared in-memory store (the backend also caches it on disk)."""
    key = ("compare", a.fingerprint, b and b.fingerprint, directions, k)
    return shared_memory().get_or_compute(key, lambda: compare(a, b, directions=directions, k=k))


def matching(a: Dictionary, b: Dictionary, directions: str = "decoder") -> Matching:
    """One-to-one matching (indices are feature indices), from the shared in-memory store."""
    key = ("match", a.fingerprint, b.fingerprint, directions)
    return shared_memory().get_or_compute(key, lambda: match(a, b, directions=directions))


@st.cache_data(show_spinner=False, max_entries=64)
def null_max_cos(n_a: int, n_b: int | None, d: int) -> np.ndarray:  # [n_a] float32
    """Max cosine of random unit directions with the same counts and dimension."""
    return random_null(n_a, n_b, d)


@st.cache_resource(show_spinner=False, max_entries=64)
def _bootstrap(key: tuple, _x: np.ndarray, _y: np.ndarray) -> BootstrapCI:
    return bootstrap_mean_difference(_x, _y)


def bootstrap_ci(x_key: tuple, x: np.ndarray, y_key: tuple, y: np.ndarray) -> BootstrapCI:
    """bootstrap_mean_difference(x, y) (2,000 resamples, seeded: seconds at 46,080 features),
    held in memory; x_key / y_key name the arrays, e.g. (a_fp, b_fp, directions)."""
    return _bootstrap((x_key, y_key), x, y)


def n_included(d: Dictionary) -> int:
    return int(len(d.alive_index))


def progress_callback(text: str) -> tuple[Any, Callable[[int, int], None]]:
    """(st.progress bar, callback(done, total)) for backend progress hooks."""
    bar = st.progress(0.0, text=text)

    def update(done: int, total: int, *_: Any) -> None:
        bar.progress(min(1.0, done / total) if total else 1.0, text=text)

    return bar, update


def shown_uri(uri: str) -> str:
    """A source as visitors see it: the demo by name, on a hosted instance no server paths."""
    if is_demo(uri):
        return "bundled demo"
    hosted = settings()
    return hosted.display(uri) if hosted is not None else uri


def _short(uri: str, n: int = 38) -> str:
    uri = shown_uri(uri)
    return uri if len(uri) <= n else "…" + uri[-(n - 1) :]
