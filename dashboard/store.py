"""The one in-memory store every session of this server shares, and what pages read from it.

`st.cache_resource` makes `shared_memory()` one `MemoryLRU` per process, bounded by bytes (a
dictionary of 46k x 768 floats is 140 MB; a count of entries could not bound that). Keys are
sources, options and content fingerprints, never hashes of big arrays; the backend also caches
results on disk, so an evicted result costs one read. Wrappers keep the backend's defaults
(tests/test_precompute.py checks that pages ask for what `precompute` fills).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from dashboard.feedback import hosted, show_error
from dashboard.session import Entry, entries
from dashboard.text import Contexts
from sae_backend import Dictionary, SAEError, compare, match, settings
from sae_backend.demo import demo_contexts
from sae_backend.geometry import absorption as _absorption
from sae_backend.geometry import families as _families
from sae_backend.geometry import frame as _frame
from sae_backend.geometry import rotation as _rotation
from sae_backend.geometry.absorption import Absorption
from sae_backend.geometry.compare import Comparison
from sae_backend.geometry.families import Families, FamilyMode
from sae_backend.geometry.frame import Frame
from sae_backend.geometry.matching import Matching
from sae_backend.geometry.stats import BootstrapCI, bootstrap_mean_difference, random_null
from sae_backend.memory import MemoryLRU
from sae_backend.types import Directions

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


# --- Families, absorption, frame geometry, rotation null (issue 11) ----------------------------
# Each is one backend call, cached on disk there and held here; the pages call only these, so
# they can move onto background jobs (`sae_backend.jobs`) without touching the pages' logic.
def families(ladder: Sequence[Dictionary], tau: float, mode: FamilyMode) -> Families:
    """Families across `ladder` (narrowest first). Tree mode reads the cached top-1 passes of
    `compare(wider, narrower)`, so a new tau costs no pass; dag mode one pass per tau."""
    key = ("families", tuple(d.fingerprint for d in ladder), float(tau), mode)
    return shared_memory().get_or_compute(
        key, lambda: _families.families(ladder, tau=tau, mode=mode)
    )


def absorption(d: Dictionary, k: int = 1) -> Absorption:
    """Each alive feature's k most negative cos(encoder, other decoder) partners (one top-k
    pass of encoders against decoders)."""
    key = ("absorption", d.fingerprint, int(k))
    return shared_memory().get_or_compute(key, lambda: _absorption.absorption(d, k=k))


def frame_geometry(d: Dictionary) -> Frame:
    """Frame quantities of d's alive unit decoder rows (a d x d Gram, two top-k passes)."""
    return shared_memory().get_or_compute(("frame", d.fingerprint), lambda: _frame.frame(d))


def rotation_null(a: Dictionary, b: Dictionary, directions: Directions = "decoder") -> np.ndarray:
    """[alive of a] max cosine of a against b rotated by a Haar-random orthogonal matrix
    (seed 0): one top-k pass, as costly as `comparison(a, b)`."""
    key = ("rotation_null", a.fingerprint, b.fingerprint, directions)
    return shared_memory().get_or_compute(
        key, lambda: _rotation.rotation_null(a, b, directions=directions)
    )
