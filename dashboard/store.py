"""The one in-memory store every session of this server shares, and what pages read from it.

`st.cache_resource` makes `shared_memory()` one `MemoryLRU` per process, bounded by bytes (a
dictionary of 46k x 768 floats is 140 MB; a count of entries could not bound that). Keys are
sources, options and content fingerprints, never hashes of big arrays; the backend also caches
results on disk, so an evicted result costs one read. Wrappers keep the backend's defaults
(tests/test_precompute.py checks that pages ask for what `precompute` fills).

Pages never block on a result: each `*_work(...)` below names one (a `background.Work`: its
key, how to compute it with progress, a label), and pages ask `background.soon/outcome` for
it: known results at once, the others computed by background jobs (once per key for every
session) behind progress bars. `dictionaries()` works the same way for the session's
dictionaries. The blocking wrappers (`comparison`, `matching`, ...) go through the same jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from dashboard import background, session
from dashboard.background import Work
from dashboard.feedback import hosted, show_error, shown_uri
from dashboard.session import Entry, entries
from dashboard.text import Contexts
from sae_backend import SAEError, settings
from sae_backend.demo import demo_contexts
from sae_backend.jobs import Job
from sae_backend.memory import MemoryLRU
from sae_backend.types import Directions, DownloadProgress, Progress

if TYPE_CHECKING:  # the geometry imports torch (seconds): jobs import it, not a page's paint
    from sae_backend import Dictionary
    from sae_backend.geometry.absorption import Absorption
    from sae_backend.geometry.compare import Comparison
    from sae_backend.geometry.families import Families, FamilyMode
    from sae_backend.geometry.frame import Frame
    from sae_backend.geometry.matching import Matching
    from sae_backend.geometry.shared import Criterion, MatchedPairs, Orphans, Side
    from sae_backend.geometry.stats import BootstrapCI
    from sae_backend.projection import Embedding

UMAP_AUTO_LIMIT = 10_000  # the UMAP page computes up to this many points unasked; more: a button


@st.cache_resource(show_spinner=False)
def shared_memory() -> MemoryLRU:
    """The one in-RAM store of dictionaries and results for every session of this server;
    its budget: the hosted setting memory_budget_mb, else $SAE_MEMORY_BUDGET_MB."""
    server = hosted()
    mb = server.memory_budget_mb if server is not None else settings.MEMORY_BUDGET_MB.get()
    return MemoryLRU(mb * 2**20)


def _downloads(progress: Progress) -> DownloadProgress:
    """The backend's download hook (done, total or None, what) as a job's progress."""

    def update(done: int, total: int | None, _what: str = "") -> None:
        progress(done, total or 0)

    return update


def dictionary_work(entry: Entry, name: str = "") -> Work[Dictionary]:
    """Loading an entry's dictionary (downloads and the backend's disk cache included)."""
    label = (
        f"Loading {name} ({shown_uri(entry.uri)})" if name else f"Loading {shown_uri(entry.uri)}"
    )
    return Work(
        ("dictionary", entry.uri, entry.options),
        lambda progress: entry.load(progress=_downloads(progress)),
        label,
        shared_memory(),
    )


def dictionaries() -> dict[str, Dictionary]:
    """This session's loaded dictionaries by name, at once. Those still loading get a progress
    bar here and are left out until loaded (the page then reruns); one that fails to load shows
    its error once and leaves the session, so nothing stays half-added."""
    out, loading = {}, []
    fresh = session.take_fresh()
    for name, entry in list(entries().items()):
        work = dictionary_work(entry, name)
        try:
            if name in fresh:  # just added: (re)start it, even after an earlier failure
                background.start(work)
            got = background.outcome(work)
        except SAEError as e:
            show_error(e, name, sticky=True)
            session.remove(name)
            continue
        if isinstance(got, Job):
            loading.append(got)
        else:
            out[name] = got
    background.progress_bars(loading)
    return out


def dictionaries_or_stop() -> dict[str, Dictionary]:
    """`dictionaries()` for a page that needs at least one: otherwise a hint (or, while some
    are loading, their progress bars), and the page stops."""
    dicts = dictionaries()
    if not dicts:
        if not entries():
            st.info("Load a dictionary on the home page first.")
        st.stop()
    return dicts


def contexts(name: str) -> Contexts:
    """Top activating contexts per feature of a session's demo SAE; {} for any other source."""
    return demo_contexts(entries()[name].uri)


def comparison_work(
    a: Dictionary,
    b: Dictionary | None,
    directions: Directions = "decoder",
    k: int = 1,
    label: str = "",
) -> Work[Comparison]:
    """compare(a, b) (b None: within a); the backend also caches it on disk. Across two
    dictionaries, B -> A is computed in the same pass where that is nearly free
    (`compare_with_reverse`): the pages that show one direction show the other too."""

    def compute(progress: Progress) -> Comparison:
        from sae_backend.geometry.compare import compare, compare_with_reverse

        if b is None:
            return compare(a, None, directions=directions, k=k, progress=progress)
        return compare_with_reverse(a, b, directions=directions, k=k, progress=progress)

    key = ("compare", a.fingerprint, b and b.fingerprint, directions, k)
    return Work(key, compute, label or f"compare ({directions})", shared_memory())


def matching_work(
    a: Dictionary, b: Dictionary, directions: Directions = "decoder", label: str = ""
) -> Work[Matching]:
    """One-to-one matching (indices are feature indices)."""

    def compute(progress: Progress) -> Matching:
        from sae_backend import match

        return match(a, b, directions=directions, progress=progress)

    key = ("match", a.fingerprint, b.fingerprint, directions)
    return Work(key, compute, label or f"one-to-one matching ({directions})", shared_memory())


def null_work(n_a: int, n_b: int | None, d: int) -> Work[np.ndarray]:
    """[n_a] float32: max cosine of random unit directions with the same counts and dimension
    (a full top-k pass at 46,080 features; cached on disk by the backend)."""

    def compute(progress: Progress) -> np.ndarray:
        from sae_backend.geometry.stats import random_null

        return random_null(n_a, n_b, d, progress=progress)

    label = f"random null {n_a:,} x {'itself' if n_b is None else f'{n_b:,}'} in {d} dims"
    return Work(("null", n_a, n_b, d), compute, label, shared_memory())


def bootstrap_work(
    x_key: tuple[object, ...], x: np.ndarray, y_key: tuple[object, ...], y: np.ndarray
) -> Work[BootstrapCI]:
    """bootstrap_mean_difference(x, y) (2,000 resamples, seeded: seconds at 46,080 features);
    x_key / y_key name the arrays, e.g. (a_fp, b_fp, directions)."""

    def compute(_progress: Progress) -> BootstrapCI:
        from sae_backend.geometry.stats import bootstrap_mean_difference

        return bootstrap_mean_difference(x, y)

    key = ("bootstrap", x_key, y_key)
    return Work(key, compute, "bootstrap interval of a difference of MMCS", shared_memory())


def umap_work(
    dicts: Sequence[Dictionary],
    directions: Directions,
    n_neighbors: int,
    min_dist: float,
    seed: int,
    label: str = "",
) -> Work[Embedding]:
    """One UMAP of the alive directions of `dicts` (kNN rows, then epochs, as progress); the
    backend caches it on disk."""

    def compute(progress: Progress) -> Embedding:
        from sae_backend.projection import umap_embedding

        return umap_embedding(
            dicts, directions=directions, n_neighbors=n_neighbors, min_dist=min_dist,
            seed=seed, progress=progress,
        )  # fmt: skip

    key = ("umap", tuple(d.fingerprint for d in dicts), directions, n_neighbors, min_dist, seed)
    return Work(key, compute, label or "UMAP", shared_memory())


# --- Families, absorption, frame geometry, rotation null (issue 11) ----------------------------
# Each is one backend call (cached on disk there), run as a job like the results above.
def families_work(
    ladder: Sequence[Dictionary], tau: float, mode: FamilyMode, label: str = ""
) -> Work[Families]:
    """Families across `ladder` (narrowest first). Tree mode reads the cached top-1 passes of
    `compare(wider, narrower)`, so a new tau costs no pass; dag mode one pass per tau."""

    def compute(progress: Progress) -> Families:
        from sae_backend.geometry.families import families

        return families(ladder, tau=tau, mode=mode, progress=progress)

    key = ("families", tuple(d.fingerprint for d in ladder), float(tau), mode)
    label = label or f"families across {len(ladder)} dictionaries (τ = {tau:g}, {mode})"
    return Work(key, compute, label, shared_memory())


def absorption_work(d: Dictionary, k: int = 1, label: str = "") -> Work[Absorption]:
    """Each alive feature's k most negative cos(encoder, other decoder) partners (one top-k
    pass of encoders against decoders)."""

    def compute(progress: Progress) -> Absorption:
        from sae_backend.geometry.absorption import absorption

        return absorption(d, k=k, progress=progress)

    key = ("absorption", d.fingerprint, int(k))
    return Work(key, compute, label or f"absorption signatures (k = {k})", shared_memory())


def frame_work(d: Dictionary, label: str = "") -> Work[Frame]:
    """Frame quantities of d's alive unit decoder rows (a d x d Gram, two top-k passes; the
    backend reports no progress)."""

    def compute(_progress: Progress) -> Frame:
        from sae_backend.geometry.frame import frame

        return frame(d)

    return Work(("frame", d.fingerprint), compute, label or "frame geometry", shared_memory())


def rotation_null_work(
    a: Dictionary, b: Dictionary, directions: Directions = "decoder", label: str = ""
) -> Work[np.ndarray]:
    """[alive of a] max cosine of a against b rotated by a Haar-random orthogonal matrix
    (seed 0): one top-k pass, as costly as `comparison_work(a, b)`."""

    def compute(progress: Progress) -> np.ndarray:
        from sae_backend.geometry.rotation import rotation_null

        return rotation_null(a, b, directions=directions, progress=progress)

    key = ("rotation_null", a.fingerprint, b.fingerprint, directions)
    return Work(key, compute, label or f"rotation null ({directions})", shared_memory())


# --- What a matching means: shared at tau, orphans, match status (issue 12) -------------------
# On top of `matching_work` and `comparison_work`: the pairs' float64 cosines are a job of
# their own (a pass over the matched rows); orphans and statuses are a few array operations on
# them, done per run by the pages (`sae_backend.geometry.shared`).
def matched_work(
    a: Dictionary, b: Dictionary, m: Matching, directions: Directions = "decoder", label: str = ""
) -> Work[MatchedPairs]:
    """The pairs of `m` (the matching of a with b by `directions`) with exact float64 decoder
    and encoder cosines."""

    def compute(_progress: Progress) -> MatchedPairs:
        from sae_backend.geometry.shared import matched_pairs

        return matched_pairs(a, b, m, directions)

    key = ("matched_pairs", a.fingerprint, b.fingerprint, directions)
    return Work(key, compute, label or f"matched pairs ({directions})", shared_memory())


def matched_outcome(
    a: Dictionary, b: Dictionary, directions: Directions, label: str
) -> MatchedPairs | Job:
    """The one-to-one matching's pairs with float64 cosines if known, else the unfinished job
    they wait for (the matching, then the cosines); draws nothing. `label`: 'A → B'."""
    m = background.outcome(matching_work(a, b, directions, f"matching {label}"))
    if isinstance(m, Job):
        return m
    return background.outcome(matched_work(a, b, m, directions, f"matched pairs {label}"))


def orphans_outcome(
    pairs: MatchedPairs,
    this: tuple[str, Dictionary],
    other: tuple[str, Dictionary],
    side: Side,
    tau: float,
    criterion: Criterion = "both",
) -> Orphans | Job:
    """Orphans of `this` (named; side "a": A of the matching, "b": B) with their max-cos
    partners in `other`, from the comparison this → other (a job: known, or its Job)."""
    from sae_backend.geometry.shared import orphans

    (this_name, d), (other_name, o) = this, other
    label = f"{this_name} → {other_name}"
    nearest = background.outcome(comparison_work(d, o, pairs.directions, label=label))
    if isinstance(nearest, Job):
        return nearest
    return orphans(pairs, side, nearest, d.alive_index, tau, criterion)
