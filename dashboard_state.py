"""Shared UI plumbing of the dashboard pages (app.py, pages/*.py); no geometry lives here.

Session state holds only names -> (URI, load options); `Dictionary` objects and results come
from process-wide caches keyed by URIs, options and fingerprints (`st.cache_resource`), never
by hashing big arrays. Every page starts with `page(title)`, which loads the bundled demo into
a fresh session, so a deep link opened in a new tab works too.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from sae_backend import Dictionary, SAEError, compare, load, match
from sae_backend.demo import ENV_DEMO, demo_contexts, demo_manifest, demo_sources
from sae_backend.errors import InputError
from sae_backend.geometry.compare import Comparison, included
from sae_backend.geometry.matching import Matching
from sae_backend.geometry.stats import BootstrapCI, bootstrap_mean_difference, random_null

STATE_KEY = "sae_dicts"  # session_state: {name: {"uri": str, "options": {key: value}}}
TOY_NOTE = (
    "The bundled demo is a **toy** (SAE_DEMO=toy): random directions with planted overlaps "
    "(toy-b shares half of toy-a's directions, toy-a-seed2 is a perturbed copy), not SAEs "
    "trained on a model."
)
WANDB_KEY = "WANDB_API_KEY"  # a Streamlit secret of a hosted instance; the wandb client's variable
UMAP_AUTO_LIMIT = 10_000  # the UMAP page computes up to this many points unasked; more: a button
_MARK = re.compile(r"\[\[(.*?)\]\]", re.S)  # the firing token in a demo context window
UPLOAD_LIMIT_MB = 512  # also server.maxUploadSize in .streamlit/config.toml
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


def page(title: str) -> None:
    """Page config, demo on first visit, and the sidebar list of loaded dictionaries."""
    st.set_page_config(page_title=f"SAE geometry · {title}", layout="wide")
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
    if os.environ.get(ENV_DEMO, "").strip().lower() == "toy":
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
    """One st.error line for an expected problem (never a traceback)."""
    st.error(f"{what}: {err}" if what else str(err))


@st.cache_resource(show_spinner=False, max_entries=64)
def _load(uri: str, options: tuple[tuple[str, str], ...]) -> Dictionary:
    return load(uri, **dict(options))


def load_entry(uri: str, options: dict[str, str] | None = None) -> Dictionary:
    """The Dictionary for (uri, options), from the process-wide cache; raises SAEError."""
    return _load(uri, _options_key(options))


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


def add(name: str, uri: str, options: dict[str, str] | None = None) -> Dictionary:
    """Load (uri, options) and register it under `name`; raises SAEError (nothing registered)."""
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


def save_upload(files: list[Any]) -> str:
    """Write uploaded files (one checkpoint, or the files of one SAE folder) under a content-
    named temp folder, keeping their names (formats are detected by name); returns the URI."""
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(f.name.encode() + b"\0" + f.getvalue())
    folder = Path(tempfile.gettempdir()) / "sae_uploads" / h.hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = folder / Path(f.name).name  # never a path from the client
        if not target.exists():
            partial = target.with_name(f".partial-{target.name}")
            partial.write_bytes(f.getvalue())
            partial.replace(target)
    return str(folder if len(files) > 1 else folder / Path(files[0].name).name)


@st.cache_resource(show_spinner=False, max_entries=256)
def comparison(
    a_fp: str, b_fp: str | None, directions: str, k: int, _a: Dictionary, _b: Dictionary | None
) -> Comparison:
    """compare(a, b) held in memory (the backend also caches it on disk), keyed by fingerprints."""
    return compare(_a, _b, directions=directions, k=k)


def compare_named(a: Dictionary, b: Dictionary | None, directions: str = "decoder", k: int = 1):
    return comparison(a.fingerprint, b and b.fingerprint, directions, k, a, b)


@st.cache_resource(show_spinner=False, max_entries=64)
def _matching(a_fp: str, b_fp: str, directions: str, _a: Dictionary, _b: Dictionary) -> Matching:
    return match(_a, _b, directions=directions)


def matching(a: Dictionary, b: Dictionary, directions: str = "decoder") -> Matching:
    """One-to-one matching (indices are feature indices), held in memory per fingerprints."""
    return _matching(a.fingerprint, b.fingerprint, directions, a, b)


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
    return int(len(included(d)))


def progress_callback(text: str) -> tuple[Any, Callable[[int, int], None]]:
    """(st.progress bar, callback(done, total)) for backend progress hooks."""
    bar = st.progress(0.0, text=text)

    def update(done: int, total: int, *_: Any) -> None:
        bar.progress(min(1.0, done / total) if total else 1.0, text=text)

    return bar, update


def _short(uri: str, n: int = 38) -> str:
    if is_demo(uri):
        return "bundled demo"
    return uri if len(uri) <= n else "…" + uri[-(n - 1) :]
