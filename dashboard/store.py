"""The one in-memory store every session of this server shares, and what pages read from it.

`st.cache_resource` makes `shared_memory()` one `MemoryLRU` per process, bounded by bytes (a
dictionary of 46k x 768 floats is 140 MB; a count of entries could not bound that). Keys are
sources, options and content fingerprints, never hashes of big arrays; the backend also caches
results on disk, so an evicted result costs one read. Wrappers keep the backend's defaults
(tests/test_precompute.py checks that pages ask for what `precompute` fills).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from dashboard.feedback import hosted, show_error
from dashboard.session import Entry, entries
from dashboard.text import Contexts
from sae_backend import Dictionary, SAEError, compare, match, settings
from sae_backend.demo import demo_contexts
from sae_backend.geometry.compare import Comparison
from sae_backend.geometry.matching import Matching
from sae_backend.geometry.stats import BootstrapCI, bootstrap_mean_difference, random_null
from sae_backend.memory import MemoryLRU
from sae_backend.types import Directions

if TYPE_CHECKING:
    from sae_backend.geometry.shared import Criterion, MatchedPairs, Orphans, Side

UMAP_AUTO_LIMIT = 10_000  # the UMAP page computes up to this many points unasked; more: a button


@st.cache_resource(show_spinner=False)
def shared_memory() -> MemoryLRU:
    """The one in-RAM store of dictionaries and results for every session of this server;
    its budget: the hosted setting memory_budget_mb, else $SAE_MEMORY_BUDGET_MB."""
    server = hosted()
    mb = server.memory_budget_mb if server is not None else settings.MEMORY_BUDGET_MB.get()
    return MemoryLRU(mb * 2**20)


def load_entry(entry: Entry) -> Dictionary:
    """The Dictionary an entry names, from the shared store; raises SAEError."""
    return shared_memory().get_or_compute(("dictionary", entry.uri, entry.options), entry.load)


def dictionaries() -> dict[str, Dictionary]:
    """Every dictionary of this session by name; one that fails to load shows an st.error and
    is left out, so the others still work."""
    out = {}
    for name, entry in list(entries().items()):
        try:
            with st.spinner(f"Loading {name} ..."):
                out[name] = load_entry(entry)
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


def contexts(name: str) -> Contexts:
    """Top activating contexts per feature of a session's demo SAE; {} for any other source."""
    return demo_contexts(entries()[name].uri)


def comparison(
    a: Dictionary, b: Dictionary | None, directions: Directions = "decoder", k: int = 1
) -> Comparison:
    """compare(a, b) (b None: within a) from the shared store; the backend caches it on disk."""
    key = ("compare", a.fingerprint, b and b.fingerprint, directions, k)
    return shared_memory().get_or_compute(key, lambda: compare(a, b, directions=directions, k=k))


def matching(a: Dictionary, b: Dictionary, directions: Directions = "decoder") -> Matching:
    """One-to-one matching (indices are feature indices), from the shared store."""
    key = ("match", a.fingerprint, b.fingerprint, directions)
    return shared_memory().get_or_compute(key, lambda: match(a, b, directions=directions))


@st.cache_data(show_spinner=False, max_entries=64)
def null_max_cos(n_a: int, n_b: int | None, d: int) -> np.ndarray:  # [n_a] float32
    """Max cosine of random unit directions with the same counts and dimension."""
    return random_null(n_a, n_b, d)


@st.cache_resource(show_spinner=False, max_entries=64)
def _bootstrap(key: tuple[object, ...], _x: np.ndarray, _y: np.ndarray) -> BootstrapCI:
    return bootstrap_mean_difference(_x, _y)


def bootstrap_ci(
    x_key: tuple[object, ...], x: np.ndarray, y_key: tuple[object, ...], y: np.ndarray
) -> BootstrapCI:
    """bootstrap_mean_difference(x, y) (2,000 resamples, seeded: seconds at 46,080 features),
    held in memory; x_key / y_key name the arrays, e.g. (a_fp, b_fp, directions)."""
    return _bootstrap((x_key, y_key), x, y)


# --- What a matching means: shared at tau, orphans, match status (issue 12) -------------------
# On top of `matching` and `comparison`: the pairs' float64 cosines are held (a pass over the
# matched rows); orphans and statuses are a few array operations on them, done per run.
def matched(a: Dictionary, b: Dictionary, directions: Directions = "decoder") -> MatchedPairs:
    """The one-to-one matching's pairs (`matching(a, b, directions)`) with exact float64
    decoder and encoder cosines."""
    from sae_backend.geometry.shared import matched_pairs

    m = matching(a, b, directions)
    key = ("matched_pairs", a.fingerprint, b.fingerprint, directions)
    return shared_memory().get_or_compute(key, lambda: matched_pairs(a, b, m, directions))


def orphans(
    a: Dictionary,
    b: Dictionary,
    directions: Directions,
    side: Side,
    tau: float,
    criterion: Criterion = "both",
) -> Orphans:
    """Orphans of A (side "a") or of B ("b") in the matching of A with B, each with its max-cos
    partner: from `comparison(a, b)` or `comparison(b, a)` (same directions)."""
    from sae_backend.geometry.shared import orphans as find_orphans

    this, other = (a, b) if side == "a" else (b, a)
    nearest = comparison(this, other, directions)
    return find_orphans(matched(a, b, directions), side, nearest, this.alive_index, tau, criterion)


def match_status(
    a: Dictionary,
    b: Dictionary,
    directions: Directions,
    side: Side,
    tau: float,
    criterion: Criterion = "both",
) -> np.ndarray:  # [n_features of that side] str
    """Every feature of A (side "a") or B ("b"): shared / below / unmatched / dead in the
    matching of A with B."""
    from sae_backend.geometry.shared import feature_status

    this = a if side == "a" else b
    pairs = matched(a, b, directions)
    return feature_status(pairs, side, this.n_features, this.alive_index, tau, criterion)
