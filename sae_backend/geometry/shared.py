"""What a one-to-one matching means: shared features at a threshold, and orphans.

Paulo & Belrose (2025) call a matched pair "shared" when both its decoder cosine and its
encoder cosine reach tau (0.7 by default); the decoder-only fraction is reported beside it,
as is the mean matched cosine (PW-MCC, Song et al. 2025). A feature is an "orphan" when the
matching leaves it without a partner that reaches tau: either its partner is below tau
("below") or it has none ("unmatched": the larger side's leftovers). Each orphan is shown
with its max-cosine partner and the feature the matching gave that partner to, which is what
explains why max-cos and one-to-one disagree.

Everything here is plain arrays in the dictionaries' own feature indices, for the CLI, the
export and the pages alike (the pages only lay it out).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from ..cache import ArrayCache, make_key, through
from ..dictionary import Dictionary
from ..errors import InputError
from ..types import Directions, Float64, Int64
from .compare import Comparison
from .matching import Matching

DEFAULT_TAU = 0.7
Criterion = Literal["both", "decoder"]
"""What "shared" requires: decoder and encoder cosine >= tau (Paulo & Belrose), or decoder only."""
Side = Literal["a", "b"]
Status = Literal["shared", "below", "unmatched", "dead"]
STATUSES: tuple[Status, ...] = get_args(Status)


@dataclass(frozen=True)
class MatchedPairs:
    """The matched pairs of a matching of A with B, with both cosines of each pair.

    a, b:        [p] feature indices in A and B (sorted by a).
    decoder_cos: [p] float64 cosine of the two decoder rows.
    encoder_cos: [p] float64 cosine of the two encoder rows (NaN when either has no encoder).
    directions:  which directions the matching maximised.
    n_a, n_b:    features of A and B that took part (alive).
    has_encoder: both dictionaries have encoders (else encoder_cos is all NaN).
    """

    a: Int64[np.ndarray, " p"]
    b: Int64[np.ndarray, " p"]
    decoder_cos: Float64[np.ndarray, " p"]
    encoder_cos: Float64[np.ndarray, " p"]
    directions: Directions
    n_a: int
    n_b: int
    has_encoder: bool

    @property
    def matched_cos(self) -> Float64[np.ndarray, " p"]:
        """The cosine the matching maximised."""
        return self.decoder_cos if self.directions == "decoder" else self.encoder_cos

    def shared(self, tau: float = DEFAULT_TAU, criterion: Criterion = "both") -> np.ndarray:
        """[p] bool: decoder (and, for "both", encoder) cosine >= tau. NaN counts as below."""
        _check_tau(tau)
        if criterion not in get_args(Criterion):
            raise InputError(f"criterion must be 'both' or 'decoder', not {criterion!r}")
        ok = self.decoder_cos >= tau
        if criterion == "both":
            ok &= self.encoder_cos >= tau
        return ok


def matched_pairs(
    a: Dictionary,
    b: Dictionary,
    m: Matching,
    directions: Directions,
    *,
    cache: ArrayCache | bool | None = None,
) -> MatchedPairs:
    """The pairs of `m` (from `compare.match(a, b, directions=...)`) with exact float64
    decoder and encoder cosines. cache: as in `compare` (None: none); keyed by the
    fingerprints and the pairs themselves, so a cached rerun of `compare --match` reads no
    rows (at the paper's size, both matrices of both dictionaries)."""
    if m.b_index.size != a.n_alive:
        raise InputError(
            f"the matching has {m.b_index.size} rows but {a.meta.source} has {a.n_alive} alive "
            "features: pass the result of match(a, b)"
        )
    has_encoder = a.has_encoder and b.has_encoder

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        from .certificate import pair_cosines  # numba and torch: only when computed

        pos = np.flatnonzero(m.b_index >= 0)  # match() indexes A by position among alive
        fa, fb = a.alive_index[pos], m.b_index[pos]
        dec = pair_cosines(a.decoder, b.decoder, fa, fb)
        enc = np.full(fa.size, np.nan)
        if a.encoder is not None and b.encoder is not None:
            enc = pair_cosines(a.encoder, b.encoder, fa, fb)
        return {"a": fa, "b": fb, "decoder_cos": dec, "encoder_cos": enc}, {}

    def key() -> str:
        pairs = hashlib.blake2b(np.ascontiguousarray(m.b_index, np.int64).tobytes()).hexdigest()
        return make_key("matched_pairs", a.fingerprint, b.fingerprint, pairs=pairs)

    arrays, _ = through(cache, key, compute)
    return MatchedPairs(arrays["a"], arrays["b"], arrays["decoder_cos"], arrays["encoder_cos"],
                        directions, a.n_alive, b.n_alive, has_encoder)  # fmt: skip


@dataclass(frozen=True)
class SharedSummary:
    """The matching in a few numbers (fractions are over matched pairs, min(n_a, n_b)).

    mean_matched_cos: mean cosine of the matched pairs in the matching's directions (PW-MCC).
    fraction_shared:  decoder and encoder cosine >= tau (NaN without encoders).
    fraction_shared_decoder: decoder cosine >= tau.
    n_orphans_a, n_orphans_b: alive features of A / B without a partner reaching tau by the
                      criterion (below tau or unmatched).
    """

    tau: float
    criterion: Criterion
    n_pairs: int
    mean_matched_cos: float
    fraction_shared: float
    fraction_shared_decoder: float
    n_shared: int
    n_orphans_a: int
    n_orphans_b: int


def shared_summary(
    pairs: MatchedPairs, tau: float = DEFAULT_TAU, criterion: Criterion = "both"
) -> SharedSummary:
    """Mean matched cosine and the fractions shared at `tau`; `criterion` picks which
    fraction decides the orphan counts ("both" falls back to "decoder" without encoders)."""
    _check_tau(tau)
    n = pairs.a.size
    dec = pairs.shared(tau, "decoder")
    both = pairs.shared(tau, "both")
    used = both if criterion == "both" and pairs.has_encoder else dec
    mean = float(np.mean(pairs.matched_cos)) if n else float("nan")
    return SharedSummary(
        tau=tau,
        criterion=criterion if pairs.has_encoder else "decoder",
        n_pairs=n,
        mean_matched_cos=mean,
        fraction_shared=float(both.mean()) if n and pairs.has_encoder else float("nan"),
        fraction_shared_decoder=float(dec.mean()) if n else float("nan"),
        n_shared=int(used.sum()),
        n_orphans_a=pairs.n_a - int(used.sum()),
        n_orphans_b=pairs.n_b - int(used.sum()),
    )


@dataclass(frozen=True)
class Orphans:
    """Features of one side left without a partner reaching tau, and why.

    side:        "a" or "b": whose features these are.
    feature:     [o] their feature indices.
    status:      [o] "below" (matched, cosine below tau) or "unmatched" (no partner).
    partner:     [o] matched feature on the other side (-1 if unmatched).
    partner_cos: [o] its cosine in the matching's directions (NaN if unmatched).
    nearest:     [o] max-cos feature on the other side.
    nearest_cos: [o] its cosine.
    taken_by:    [o] the feature of this side the matching gave `nearest` to (-1: nobody).
    """

    side: Side
    tau: float
    feature: Int64[np.ndarray, " o"]
    status: np.ndarray
    partner: Int64[np.ndarray, " o"]
    partner_cos: Float64[np.ndarray, " o"]
    nearest: Int64[np.ndarray, " o"]
    nearest_cos: Float64[np.ndarray, " o"]
    taken_by: Int64[np.ndarray, " o"]

    def __len__(self) -> int:
        return int(self.feature.size)

    def to_rows(self) -> list[dict[str, object]]:
        """One plain dict per orphan (for tables and exports)."""
        names = ("feature", "status", "partner", "partner_cos", "nearest", "nearest_cos")
        cols = [getattr(self, n) for n in names] + [self.taken_by]
        return [
            {n: _plain(x[i]) for n, x in zip((*names, "taken_by"), cols, strict=True)}
            for i in range(len(self))
        ]


def feature_status(
    pairs: MatchedPairs,
    side: Side,
    n_features: int,
    alive_index: np.ndarray,
    tau: float = DEFAULT_TAU,
    criterion: Criterion = "both",
) -> np.ndarray:
    """[n_features] status of every feature of one side: "shared", "below", "unmatched" or
    "dead" (not compared). For colouring every point of a UMAP by match status."""
    _check_side(side)
    out = np.full(n_features, "dead", dtype=object)
    out[alive_index] = "unmatched"
    mine = pairs.a if side == "a" else pairs.b
    crit: Criterion = criterion if pairs.has_encoder else "decoder"
    out[mine] = np.where(pairs.shared(tau, crit), "shared", "below")
    return out.astype(str)


def orphans(
    pairs: MatchedPairs,
    side: Side,
    nearest: Comparison,
    alive_index: np.ndarray,
    tau: float = DEFAULT_TAU,
    criterion: Criterion = "both",
) -> Orphans:
    """Orphans of `side` with their max-cos partner and who took it.

    `nearest` is `compare(this side, other side, directions=pairs.directions)` (k >= 1):
    for A's orphans compare(A, B), for B's compare(B, A). `alive_index` is that side's.
    """
    _check_side(side)
    if nearest.is_self:
        raise InputError("orphans need a comparison with the other dictionary, not within one")
    if nearest.directions != pairs.directions:
        raise InputError(
            f"nearest compares {nearest.directions} directions but the matching used "
            f"{pairs.directions}"
        )
    mine, other = (pairs.a, pairs.b) if side == "a" else (pairs.b, pairs.a)
    n = int(max(alive_index.max(initial=-1), mine.max(initial=-1))) + 1
    status = feature_status(pairs, side, n, alive_index, tau, criterion)
    feature = np.flatnonzero((status == "below") | (status == "unmatched"))
    partner = np.full(n, -1, np.int64)
    partner[mine] = other
    partner_cos = np.full(n, np.nan)
    partner_cos[mine] = pairs.matched_cos
    pos = np.full(n, -1, np.int64)
    pos[nearest.a_index] = np.arange(nearest.a_index.size)
    if np.any(pos[feature] < 0):
        raise InputError("nearest does not cover every compared feature of this side")
    near = nearest.nearest[pos[feature]]
    near_cos = nearest.max_cos[pos[feature]].astype(np.float64)
    owner = np.full(int(max(near.max(initial=-1), other.max(initial=-1))) + 1, -1, np.int64)
    owner[other] = mine
    return Orphans(
        side=side,
        tau=tau,
        feature=feature,
        status=status[feature],
        partner=partner[feature],
        partner_cos=partner_cos[feature],
        nearest=near,
        nearest_cos=near_cos,
        taken_by=owner[near],
    )


def _check_tau(tau: float) -> None:
    if not -1.0 <= tau <= 1.0:
        raise InputError(f"tau must be a cosine between -1 and 1, got {tau}")


def _check_side(side: str) -> None:
    if side not in ("a", "b"):
        raise InputError(f"side must be 'a' or 'b', not {side!r}")


def _plain(x: object) -> object:
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and np.isnan(x):
        return None
    return x
