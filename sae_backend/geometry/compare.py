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
from .matching import DoubleCounting, Matching, double_counting
from .stats import Summary, summarize

# torch (topk) and scipy (matching's solvers) are imported inside the computations below, so
# a cached answer is read without them (`python -m sae_backend compare` on a warm cache)

MAX_K = 100

__all__ = ["DIRECTIONS", "MAX_K", "Comparison", "check_comparable", "compare", "match"]


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
        from .topk import topk_cosine

        va = _rows(a, directions, ia)
        vb = None if b is None else _rows(b, directions, ib)
        res = topk_cosine(va, vb, k, device=device, progress=progress)
        return {"values": res.values, "indices": ib[res.indices]}, {}

    fb = None if b is None else b.fingerprint
    key = make_key("compare", a.fingerprint, fb or "self", directions=directions, k=k)
    arrays, _ = through(cache, key, compute)
    return Comparison(
        a.fingerprint, fb, directions, ia, arrays["values"], arrays["indices"], n_targets
    )


def match(
    a: Dictionary,
    b: Dictionary,
    *,
    directions: Directions = "decoder",
    k_candidates: int = 10,
    dense_limit: int = 4096,
    device: str = "auto",
    forward: Comparison | None = None,
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
) -> Matching:
    """One-to-one matching of A's included features to B's; indices are feature indices.

    `forward` (a Comparison of A with B, same directions) saves one top-k pass at scale.
    cache: True uses the default disk cache, False none, or a given ArrayCache. The key is
    the fingerprints, directions, k_candidates and dense_limit: `forward` stands in for a top-k
    pass that gives the same candidates (the top-k is exact, ties to the lower index), and
    `device` does not change exact results, so neither is part of it (as in `compare`).
    Raises InputError for a `forward` that is not a comparison of A with B by `directions`.
    """
    ia, ib = a.alive_index, b.alive_index
    if forward is not None and (
        forward.a_fingerprint, forward.b_fingerprint, forward.directions
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
            progress=progress, forward=fwd,
        )  # fmt: skip
        b_index = np.where(m.b_index >= 0, ib[np.maximum(m.b_index, 0)], -1)
        meta = {name: getattr(m, name) for name in _MATCHING_SCALARS}
        return {"b_index": b_index, "cosine": m.cosine}, meta

    key = make_key(
        "match", a.fingerprint, b.fingerprint, directions=directions,
        k_candidates=k_candidates, dense_limit=dense_limit,
    )  # fmt: skip
    arrays, meta = through(cache, key, compute)
    return Matching(arrays["b_index"], arrays["cosine"], **meta)


def _rows(d: Dictionary, directions: Directions, index: np.ndarray) -> np.ndarray:
    """The unit rows of `index` (the alive features): the dictionary's own array, not a
    140 MB copy, when every feature is alive."""
    rows = d.directions(directions)
    return rows if len(index) == len(rows) else rows[index]


# Matching's fields besides its two arrays: stored as JSON (floats round-trip exactly, NaN too).
_MATCHING_SCALARS = ("total", "mean", "n_matched", "method", "upper_bound", "n_candidates")
