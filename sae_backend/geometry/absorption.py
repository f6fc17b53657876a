"""Absorption signatures: features whose encoder points away from another feature's decoder.

Feature absorption (Chanin et al., "A is for Absorption", arXiv 2409.14507) leaves a trace in
the weights: when a parent feature p absorbs a child c (c fires in p's place on the tokens
they share), p's encoder learns to *subtract* c's direction, so cos(encoder_p, decoder_c) is
strongly negative. For every alive feature p this finds the alive features c != p with the
most negative cos(encoder_p, decoder_c), exactly: the top-(k+1) of -encoder rows against
decoder rows through the blocked `topk_cosine` engine (no n x n matrix), with p itself
dropped. Beside each pair: cos(decoder_p, decoder_c) (a near-duplicate or a genuine
parent/child?) and each feature's encoder-decoder self-cosine (SAEBench core's
`encoder_decoder_cosine_sim`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cache import ArrayCache, make_key, through
from ..dictionary import Dictionary
from ..errors import InputError
from ..types import Float32, Int64, Progress
from .certificate import pair_cosines
from .compare import MAX_K
from .stats import encoder_decoder_cosine
from .topk import topk_cosine

__all__ = ["Absorption", "absorption"]


@dataclass(frozen=True)
class Absorption:
    """The k most negative encoder -> decoder partners of each alive feature.

    feature:     [m] alive feature indices (ascending).
    partner:     [m, k] partner feature indices, most negative enc_dec_cos first (ties:
                 lower index first); never the feature itself.
    enc_dec_cos: [m, k] cos(encoder_feature, decoder_partner), ascending (exact float32).
    dec_dec_cos: [m, k] cos(decoder_feature, decoder_partner).
    self_cos:    [m] cos(encoder_feature, decoder_feature) of each alive feature.
    """

    fingerprint: str
    source: str
    feature: Int64[np.ndarray, " m"]
    partner: Int64[np.ndarray, "m k"]
    enc_dec_cos: Float32[np.ndarray, "m k"]
    dec_dec_cos: Float32[np.ndarray, "m k"]
    self_cos: Float32[np.ndarray, " m"]

    @property
    def k(self) -> int:
        return int(self.partner.shape[1])

    @property
    def signature(self) -> Float32[np.ndarray, " m"]:
        """Each feature's most negative cos(encoder_feature, decoder_c): the histogram's values."""
        return self.enc_dec_cos[:, 0]

    @property
    def partner_self_cos(self) -> Float32[np.ndarray, "m k"]:
        """The partners' own encoder-decoder self-cosines."""
        return self.self_cos[np.searchsorted(self.feature, self.partner)]

    def order(self) -> Int64[np.ndarray, " m"]:
        """Rows sorted by signature, most negative first (ties: lower feature first)."""
        return np.lexsort((self.feature, self.signature)).astype(np.int64)


def absorption(
    d: Dictionary,
    *,
    k: int = 1,
    device: str = "auto",
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
) -> Absorption:
    """The k alive features c != p with the most negative cos(encoder_p, decoder_c), for
    every alive feature p of `d`.

    cache: True uses the default disk cache, False none, or a given ArrayCache; the key is the
    fingerprint and k (a full top-k pass at scale).
    Raises InputError when `d` has no encoder or k is not in 1..min(MAX_K, n_alive - 1).
    """
    if not d.has_encoder:
        raise InputError(f"{d.meta.source} has no encoder directions: absorption needs them")
    idx = d.alive_index
    limit = min(MAX_K, len(idx) - 1)
    if not 1 <= k <= limit:
        raise InputError(f"k must be between 1 and {limit} (alive features - 1), got {k}")
    enc, dec = d.directions("encoder"), d.decoder

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        # largest -cos(enc_p, dec_c) = most negative cos; k + 1 so that dropping p leaves k
        res = topk_cosine(-enc[idx], dec[idx], k + 1, device=device, progress=progress)
        pos = _drop_self(res.indices, k)
        values = -np.take_along_axis(res.values, pos, 1)
        partner = idx[np.take_along_axis(res.indices, pos, 1)]  # [m, k]
        rows = np.repeat(idx, partner.shape[1])  # each feature once per partner
        dec_dec = pair_cosines(dec, dec, rows, partner.ravel()).reshape(partner.shape)
        return {
            "partner": partner,
            "enc_dec_cos": values.astype(np.float32),
            "dec_dec_cos": dec_dec.astype(np.float32),
            "self_cos": encoder_decoder_cosine(enc[idx], dec[idx]),
        }, {}

    arrays, _ = through(cache, make_key("absorption", d.fingerprint, k=int(k)), compute)
    return Absorption(
        d.fingerprint,
        d.meta.source,
        idx,
        arrays["partner"],
        arrays["enc_dec_cos"],
        arrays["dec_dec_cos"],
        arrays["self_cos"],
    )


def _drop_self(indices: Int64[np.ndarray, "m k1"], k: int) -> Int64[np.ndarray, "m k"]:
    """Positions of the first k entries of each row that are not the row itself.

    The k + 1 entries are the top of one total order (value, then index); removing row i's
    own entry keeps the order of the others, so the first k left are exactly the top-k of
    c != i, ties included. When i is not among them, the last entry is dropped.
    """
    m, k1 = indices.shape
    own = indices == np.arange(m)[:, None]
    keep = ~own
    keep[~own.any(axis=1), k1 - 1] = False
    return np.nonzero(keep)[1].reshape(m, k)
