"""Comparisons between dictionaries: what the CLI, the pages and the tests all read.

`compare(A, B)` takes the included features of A (alive, non-zero) and finds, for each, its
top-k neighbours among the included features of B (or of A itself, self excluded, when B is
None), by decoder or encoder direction. Indices in the result are the dictionaries' own
feature indices, not positions in the included subset. Results are cached on disk by the
dictionaries' fingerprints and the parameters, so a repeated comparison costs a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..cache import ArrayCache, make_key, through
from ..dictionary import Dictionary
from ..errors import InputError
from ..types import DIRECTIONS, Directions, Float32, Int64, Progress
from .matching import DEFAULT_TOLERANCE, K_CANDIDATES, DoubleCounting, Matching, double_counting
from .stats import Summary, summarize

# torch (topk) and scipy/numba (matching's solvers) are imported inside the computations below,
# so a cached answer is read without them (`python -m sae_backend compare` on a warm cache)

MAX_K = 100

__all__ = [
    "DIRECTIONS",
    "MAX_K",
    "Comparison",
    "check_comparable",
    "compare",
    "compare_entry",
    "match",
]


@dataclass(frozen=True)
class Comparison:
    """Nearest neighbours of A's included features among B's (or A's own, self excluded).

    a_index:    feature indices in A that were compared (its `alive_index`).
    values:     cosines, descending (exact: float32 dot products).
    indices:    feature indices in B (in A when `b_fingerprint` is None).
    n_targets:  how many features of B (or A) were candidates.
    """

    a_fingerprint: str
    b_fingerprint: str | None
    directions: Directions
    a_index: Int64[np.ndarray, " m"]
    values: Float32[np.ndarray, "m k"]
    indices: Int64[np.ndarray, "m k"]
    n_targets: int

    @property
    def max_cos(self) -> Float32[np.ndarray, " m"]:
        return self.values[:, 0]

    @property
    def nearest(self) -> Int64[np.ndarray, " m"]:
        return self.indices[:, 0]

    @property
    def is_self(self) -> bool:
        return self.b_fingerprint is None

    def summary(self, thresholds=(0.5, 0.7, 0.9)) -> Summary:
        """MMCS (mean max cosine), median, fractions above thresholds."""
        return summarize(self.max_cos, thresholds)

    def double_counting(self, n_b: int) -> DoubleCounting:
        """How shared the max-cos targets are; n_b = number of features in B."""
        return double_counting(self.nearest, n_b)


def check_comparable(
    dicts: Sequence[Dictionary], directions: Directions, what: str = "compare"
) -> None:
    """One InputError line unless `dicts` can be compared by `directions`: a known direction
    kind, one d_model for all, and encoders where encoder directions are asked for. `what`
    names the operation in the message ("compare", "embed")."""
    if directions not in DIRECTIONS:
        raise InputError(f"directions must be 'decoder' or 'encoder', not {directions!r}")
    first = dicts[0]
    for d in dicts[1:]:
        if d.d_model != first.d_model:
            raise InputError(
                f"cannot {what} {first.meta.source} (d_model {first.d_model}) with "
                f"{d.meta.source} (d_model {d.d_model}): directions live in different spaces"
            )
    for d in dicts:
        if directions == "encoder" and not d.has_encoder:
            raise InputError(f"{d.meta.source} has no encoder directions; use decoder")


def compare(
    a: Dictionary,
    b: Dictionary | None = None,
    *,
    directions: Directions = "decoder",
    k: int = 1,
    device: str = "auto",
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
) -> Comparison:
    """Top-k neighbours of A's included features among B's (B=None: within A, self excluded).

    cache: True uses the default disk cache, False none, or a given ArrayCache.
    Raises InputError for mismatched d_model, a missing encoder or k out of range.
    """
    check_comparable([a] if b is None else [a, b], directions)
    ia = a.alive_index
    ib = ia if b is None else b.alive_index
    n_targets = len(ib) - (1 if b is None else 0)
    if len(ia) == 0:
        raise InputError(f"{a.meta.source} has no alive features to compare")
    if not 1 <= k <= min(MAX_K, n_targets):
        raise InputError(f"k must be between 1 and {min(MAX_K, n_targets)}, got {k}")

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        return compare_entry(a, b, directions=directions, k=k, device=device, progress=progress)

    fb = None if b is None else b.fingerprint
    key = make_key("compare", a.fingerprint, fb or "self", directions=directions, k=k)
    arrays, _ = through(cache, key, compute)
    return Comparison(
        a.fingerprint, fb, directions, ia, arrays["values"], arrays["indices"], n_targets
    )


def compare_entry(
    a: Dictionary,
    b: Dictionary | None,
    *,
    directions: Directions,
    k: int,
    device: str = "auto",
    rows: slice | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """What `compare` caches: ({"values", "indices"} [m, k], {}), row i for A's i-th included
    feature; with `rows`, only those rows: a shard of the pass, which `geometry.shards` merges
    back (bit-identical when shards start on block edges, see `topk_cosine`). No argument
    checks: `compare` makes them. Memory: a shard across dictionaries holds only its rows of
    A (and all of B); one within A holds all of A, its own targets."""
    from .topk import auto_precision, pick_device, topk_cosine

    ia = a.alive_index
    ib = ia if b is None else b.alive_index
    if b is None:
        res = topk_cosine(_rows(a, directions, ia), None, k, device=device, rows=rows,
                          progress=progress)  # fmt: skip
    else:
        mine = ia if rows is None else ia[rows]
        res = topk_cosine(
            _rows(a, directions, mine), _rows(b, directions, ib), k, device=device,
            precision=auto_precision(len(ia), len(ib), pick_device(device)),  # the whole pass's
            progress=progress,
        )  # fmt: skip
    return {"values": res.values, "indices": ib[res.indices]}, {}


def match(
    a: Dictionary,
    b: Dictionary,
    *,
    directions: Directions = "decoder",
    k_candidates: int = K_CANDIDATES,
    dense_limit: int = 4096,
    device: str = "auto",
    forward: Comparison | None = None,
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
    certify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    info: dict | None = None,
) -> Matching:
    """One-to-one matching of A's included features to B's; indices are feature indices.

    `forward` (a Comparison of A with B, same directions, at least k_candidates wide) saves
    one top-k pass at scale. `certify` proves the sparse result optimal over all pairs (see
    `geometry.matching`). Dual potentials come back indexed by position in A's and B's
    `alive_index`. cache: True uses the default disk cache, False none, or a given
    ArrayCache. The key is the fingerprints, directions, k_candidates, dense_limit, certify,
    tolerance and the solver's version (`MATCHING_VERSION`: entries of an earlier, uncertified
    solver are never served): `forward` stands in for a top-k pass that gives the same
    candidates (the top-k is exact, ties to the lower index), and `device` does not change
    exact results, so neither is part of it (as in `compare`). `info` receives the solver's
    timings when it runs (nothing on a cache hit).
    Raises InputError for a `forward` that is not a comparison of A with B by `directions`.
    """
    ia, ib = a.alive_index, b.alive_index
    if forward is not None and (
        forward.a_fingerprint,
        forward.b_fingerprint,
        forward.directions,
    ) != (a.fingerprint, b.fingerprint, directions):
        raise InputError(
            f"forward is not a {directions} comparison of {a.meta.source} with "
            f"{b.meta.source}; pass compare(a, b, directions={directions!r}, k=...)"
        )

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        from .matching import match_one_to_one
        from .topk import TopK

        fwd = None
        if forward is not None and forward.values.shape[1] >= k_candidates:
            position = np.full(b.n_features, -1, np.int64)
            position[ib] = np.arange(len(ib))
            fwd = TopK(forward.values, position[forward.indices])
        va, vb = _rows(a, directions, ia), _rows(b, directions, ib)
        m = match_one_to_one(
            va, vb, k_candidates=k_candidates, dense_limit=dense_limit, device=device,
            progress=progress, forward=fwd, certify=certify, tolerance=tolerance, info=info,
        )  # fmt: skip
        b_index = np.where(m.b_index >= 0, ib[np.maximum(m.b_index, 0)], -1)
        meta = {name: getattr(m, name) for name in _MATCHING_SCALARS}
        arrays = {name: getattr(m, name) for name in _MATCHING_ARRAYS}
        return {**arrays, "b_index": b_index}, meta

    key = make_key(
        "match", a.fingerprint, b.fingerprint, directions=directions,
        k_candidates=k_candidates, dense_limit=dense_limit, certify=certify,
        tolerance=tolerance, solver=MATCHING_VERSION,
    )  # fmt: skip
    arrays, meta = through(cache, key, compute)
    return Matching(
        b_index=arrays["b_index"], cosine=arrays["cosine"], potentials_a=arrays["potentials_a"],
        potentials_b=arrays["potentials_b"], **meta,
    )  # fmt: skip


def _rows(d: Dictionary, directions: Directions, index: np.ndarray) -> np.ndarray:
    """The unit rows of `index` (the alive features): the dictionary's own array, not a
    140 MB copy, when every feature is alive."""
    rows = d.directions(directions)
    return rows if len(index) == len(rows) else rows[index]


MATCHING_VERSION = 2  # 2: certified sparse solver (lap.py + certificate.py)
# Matching's fields besides its arrays: stored as JSON (floats round-trip exactly, NaN too).
_MATCHING_SCALARS = (
    "total", "mean", "n_matched", "method", "upper_bound", "n_candidates",
    "certified", "bound", "tolerance", "rounds",
)  # fmt: skip
_MATCHING_ARRAYS = ("b_index", "cosine", "potentials_a", "potentials_b")
