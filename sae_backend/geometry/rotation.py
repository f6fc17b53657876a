"""The rotation null: what A -> B max cosines would be if B kept its shape but not its place.

The isotropic null (`stats.random_null`) compares A with directions uniform on the sphere. Real
decoders are anisotropic (rows crowd into a few directions), and against such a B chance
max-cosines are larger than isotropic ones. The rotation null compares A with B Q, Q a random
orthogonal matrix drawn from the Haar measure: B Q has exactly B's Gram matrix (its own
geometry), and only B's alignment with A is gone. It is the fairer control for "A and B agree
more than chance" (field survey, part b, method 2).
"""

from __future__ import annotations

import numpy as np

from ..cache import ArrayCache, make_key, through
from ..dictionary import Dictionary
from ..errors import InputError
from ..types import Directions, Float32, Float64, Progress
from .compare import MAX_K, check_comparable
from .topk import topk_cosine

__all__ = ["haar_orthogonal", "rotation_null"]


def haar_orthogonal(d: int, rng: np.random.Generator) -> Float64[np.ndarray, "d d"]:
    """A d x d orthogonal matrix from the Haar (uniform) measure on O(d).

    QR of a standard Gaussian matrix, with each column of Q multiplied by the sign of R's
    diagonal entry (Mezzadri 2007): without that fix Q is not Haar-distributed.
    """
    if d < 1:
        raise InputError(f"d must be at least 1, got {d}")
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


def rotation_null(
    a: Dictionary,
    b: Dictionary,
    *,
    directions: Directions = "decoder",
    k: int = 1,
    seed: int = 0,
    device: str = "auto",
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
) -> Float32[np.ndarray, " m"]:
    """k-th largest cosine (k=1: the max) of each alive feature of A against the alive
    features of B rotated by a Haar-random Q (`haar_orthogonal(d, default_rng(seed))`).

    Aligned with `a.alive_index`, like `compare(a, b).max_cos`, whose null it is. The B -> A
    null is `rotation_null(b, a)` (A Q^T against B is the same in distribution). A within-A
    rotation null is not offered: a dictionary's alignment with itself is its geometry.
    cache: True uses the default disk cache, False none, or a given ArrayCache; the key is
    the fingerprints, directions, k and seed.
    """
    check_comparable([a, b], directions)
    ia, ib = a.alive_index, b.alive_index
    if len(ia) == 0 or len(ib) == 0:
        raise InputError("rotation_null needs alive features in both dictionaries")
    limit = min(MAX_K, len(ib))
    if not 1 <= k <= limit:
        raise InputError(f"k must be between 1 and {limit}, got {k}")

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        q = haar_orthogonal(a.d_model, np.random.default_rng(seed))
        rotated = (b.directions(directions)[ib].astype(np.float64) @ q).astype(np.float32)
        res = topk_cosine(a.directions(directions)[ia], rotated, k, device=device,
                          progress=progress)  # fmt: skip
        return {"values": res.values[:, k - 1].copy()}, {}

    key = make_key("rotation_null", a.fingerprint, b.fingerprint, directions=directions,
                   k=int(k), seed=int(seed))  # fmt: skip
    return through(cache, key, compute)[0]["values"].copy()
