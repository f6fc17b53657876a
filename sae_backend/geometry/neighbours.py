"""Neighbours of one feature: what the dashboard's feature page shows, computed on demand.

`compare()` answers "every feature of A against B" and is cached; a page about one feature
needs only that feature's row, which is one exact [1, n] pass through `topk_cosine` (cheap
even at 46,080 x 768), for any k and without a cache. Beside the cosine that ranked the
neighbours, each neighbour's decoder and encoder cosine to the feature is reported, so one
table shows whether the two kinds of direction agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dictionary import Dictionary
from ..errors import InputError
from ..types import Directions
from .compare import check_comparable
from .topk import topk_cosine


@dataclass(frozen=True)
class Neighbours:
    """Top-k neighbours of one feature of A among B's included features (or A's own).

    index:   [k] int64 feature indices in B (in A for a within-dictionary search).
    cosine:  [k] float32 cosine in the `directions` that ranked them, descending.
    decoder: [k] float32 decoder-direction cosine of each pair.
    encoder: [k] float32 encoder-direction cosine of each pair, or None if A or B has no encoder.
    """

    feature: int
    directions: Directions
    index: np.ndarray
    cosine: np.ndarray
    decoder: np.ndarray
    encoder: np.ndarray | None


def check_feature(d: Dictionary, feature: int) -> int:
    """`feature` as an int in [0, n_features), else one InputError line naming the dictionary."""
    try:
        i = int(feature)
    except (TypeError, ValueError):
        raise InputError(f"feature index {feature!r}: expected a whole number") from None
    if not 0 <= i < d.n_features:
        raise InputError(
            f"feature {i} is out of range for {d.meta.source} "
            f"({d.n_features} features, indices 0..{d.n_features - 1})"
        )
    return i


def feature_neighbours(
    a: Dictionary,
    feature: int,
    b: Dictionary | None = None,
    *,
    k: int = 10,
    directions: Directions = "decoder",
    device: str = "cpu",
) -> Neighbours:
    """The k nearest included features of B (B=None: of A, the feature itself excluded).

    k is capped at the number of candidates. A dead (zero) feature gets cosines of 0.
    Raises InputError for an index out of range, mismatched d_model or a missing encoder.
    """
    i = check_feature(a, feature)
    other = a if b is None else b
    check_comparable([a, other], directions)
    candidates = other.alive_index
    if b is None:
        candidates = candidates[candidates != i]
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    k = min(k, len(candidates))
    if k == 0:
        empty = np.zeros(0, np.float32)
        return Neighbours(i, directions, np.zeros(0, np.int64), empty, empty, None)
    query = a.directions(directions)[[i]]  # [1, d] (a copy: torch wants writable arrays)
    top = topk_cosine(query, other.directions(directions)[candidates], k, device=device)
    index = candidates[top.indices[0]]  # [k] int64
    return Neighbours(
        feature=i,
        directions=directions,
        index=index,
        cosine=top.values[0],
        decoder=_pair_cosines(a.decoder[i], other.decoder[index]),
        encoder=(
            _pair_cosines(a.encoder[i], other.encoder[index])
            if a.encoder is not None and other.encoder is not None
            else None
        ),
    )


def _pair_cosines(row: np.ndarray, rows: np.ndarray) -> np.ndarray:  # [d], [k, d] -> [k] float32
    """Cosines of unit rows (dot products), float32, clipped to [-1, 1]."""
    return np.clip(rows.astype(np.float32) @ row.astype(np.float32), -1.0, 1.0)
