"""The session's dictionaries: names -> where each comes from (`Entry`), and how they change.

Session state holds only these small entries, never arrays: `Dictionary` objects and results
live in the process-wide store (`dashboard.store`), keyed by source and options. One name rule
serves adding and renaming. A dictionary that is not the bundled demo can be shared: its
source travels in the Neighbours page's URL (`share_query`), and a session that lacks it loads
it from there (`adopt_from_url`) under the same rules as a typed source.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import streamlit as st

from dashboard.feedback import hosted, is_demo, show_error, shown_uri
from sae_backend import Dictionary, SAEError, load
from sae_backend.demo import demo_sources
from sae_backend.errors import InputError
from sae_backend.types import DownloadProgress, Orientation

STATE_KEY = "sae_dicts"  # session_state: {name: Entry}, in the order they were added
FRESH_KEY = "sae_fresh"  # session_state: names added since their load was last started
SHARED_OPTIONS = ("orientation", "key")  # load options a share link carries as parameters
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


@dataclass(frozen=True)
class Entry:
    """One dictionary of this session.

    uri:     the source as loaded (on a hosted instance: after the server's rules).
    options: the load options that are set (position, orientation, key), sorted; hashable,
             so the pair is the shared store's key for the loaded `Dictionary`.
    """

    uri: str
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, uri: str, options: Mapping[str, str] | None = None) -> Entry:
        """An entry keeping only the options that are set ('' means "from the file")."""
        return cls(uri, tuple(sorted((k, v) for k, v in (options or {}).items() if v)))

    def option(self, key: str) -> str:
        return dict(self.options).get(key, "")

    def load(self, progress: DownloadProgress | None = None) -> Dictionary:
        """The backend's `load` of this source with these options (not the shared store:
        `dashboard.store.dictionary_work`); raises SAEError, e.g. for an unknown orientation."""
        return load(
            self.uri,
            position=self.option("position") or None,
            orientation=cast(Orientation | None, self.option("orientation") or None),
            key=self.option("key") or None,
            progress=progress,
        )


def entries() -> dict[str, Entry]:
    """This session's dictionaries by name (filled with the demo by `seed_demo`)."""
    return st.session_state[STATE_KEY]


def seed_demo() -> None:
    """Give a fresh session the bundled demo, so any page (a deep link, a new tab) has data."""
    if STATE_KEY not in st.session_state:
        st.session_state[STATE_KEY] = {name: Entry(uri) for name, uri in demo_sources().items()}


def check_name(name: str, taken: Collection[str]) -> str:
    """`name` stripped, if it can name a dictionary (it is used in URLs) and is free; else
    InputError. The one rule for adding and renaming."""
    name = name.strip()
    if not _NAME_OK.match(name):
        raise InputError(
            f"name {name!r}: use 1-40 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    if name in taken:
        raise InputError(f"the name {name!r} is taken; remove it first or choose another")
    return name


def add(
    name: str, uri: str, options: Mapping[str, str] | None = None, *, upload: bool = False
) -> None:
    """Register (uri, options) under `name` at once; raises SAEError for a refused source or
    name (nothing registered).

    On a hosted instance a visitor's URI must pass the server's rules first (`Hosted.
    check_source`); `upload=True` marks a path that `save_upload` wrote, which needs none.
    Nothing is loaded here: the next `dashboard.store.dictionaries()` starts the load in the
    background (with a progress bar), and a source that turns out unreadable shows its error
    there and leaves the session."""
    server = hosted()
    if server is not None and not upload:
        uri = server.check_source(uri)
    name = check_name(name, entries())
    entries()[name] = Entry.of(uri, options)
    st.session_state.setdefault(FRESH_KEY, set()).add(name)


def take_fresh() -> set[str]:
    """The names added since their load was last started, forgetting them: a load that failed
    before is tried again for a new add, not on every rerun."""
    return st.session_state.pop(FRESH_KEY, set())


def rename(old: str, new: str) -> None:
    """Give `old` the name `new` (same rule as adding), keeping its place in the list."""
    if new.strip() == old:
        return
    new = check_name(new, entries())
    st.session_state[STATE_KEY] = {(new if k == old else k): v for k, v in entries().items()}
    fresh = st.session_state.get(FRESH_KEY, set())
    if old in fresh:
        fresh.discard(old)
        fresh.add(new)


def remove(name: str) -> None:
    entries().pop(name, None)
    st.session_state.get(FRESH_KEY, set()).discard(name)


def suggest_name(uri: str) -> str:
    """A short free name from a URI's last part: 'hf:o/r:e2e_l6.pt' -> 'e2e_l6'."""
    tail = re.split(r"[/:#@]", uri.rstrip("/"))[-1] or "sae"
    base = re.sub(r"[^A-Za-z0-9._-]", "-", Path(tail).stem)[:32].strip("-._") or "sae"
    name, i = base, 2
    while name in entries():
        name, i = f"{base}-{i}", i + 1
    return name


def share_query(name: str) -> dict[str, str]:
    """Query parameters that let another session (a collaborator's) open `name` as well: its
    source, as `shown_uri` writes it, unless it is the bundled demo every session has."""
    entry = entries()[name]
    if is_demo(entry.uri):
        return {}
    src = shown_uri(entry.uri)
    if entry.option("position") and "#" not in src:
        src += "#" + entry.option("position")
    return {"src": src, **{k: v for k, v in entry.options if k in SHARED_OPTIONS}}


def adopt_from_url() -> None:
    """Load the dictionary a shared link names (`?dict=NAME&src=URI`) if this session lacks
    it; on a hosted instance the source passes the server's rules like any typed one."""
    name, src = st.query_params.get("dict"), st.query_params.get("src")
    if not name or not src or name in entries():
        return
    options = {k: st.query_params[k] for k in SHARED_OPTIONS if st.query_params.get(k)}
    try:
        add(name, src, options)
    except SAEError as e:
        show_error(e, f"The link's {name}", sticky=True)
