"""Frame geometry of one dictionary: how close its decoder is to an ideal frame.

N alive unit decoder rows d_i in R^d (the rows of D, [N, d]). Everything but the coherence
comes from the d x d Gram matrix G = D^T D, accumulated in float64 over row blocks, so no
N x N matrix is ever formed (46,080 x 768: G is 768 x 768):

* frame potential  sum_ij <d_i, d_j>^2 = |D D^T|_F^2 = |G|_F^2, beside its lower bound
  max(N, N^2 / d) (= N^2 / d for N >= d; reached exactly by tight frames, G = (N/d) I);
* singular values of D = sqrt(eig(G)), descending, min(N, d) of them;
* effective rank (Roy & Vetterli 2007): exp of the Shannon entropy of the singular values
  normalised to sum 1 (d for an orthonormal basis or any tight frame; 1 for a single line);
  and the stable rank |D|_F^2 / |D|_2^2 = N / s_max^2 beside it;
* capacity per feature (Scherlis et al. 2022): C_i = (d_i . d_i)^2 / sum_j (d_i . d_j)^2
  = |d_i|^4 / (d_i^T G d_i); each C_i is in (0, 1] and sum_i C_i <= d;
* mutual coherence max_{i != j} |cos(d_i, d_j)|, exact, from two top-k passes (the within
  top-1 of D, and the top of -D against D with self dropped), beside the Welch bound
  sqrt((N - d) / (d (N - 1))) that no N unit vectors in R^d can beat (0 for N <= d).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cache import ArrayCache, make_key, through
from ..dictionary import Dictionary
from ..errors import InputError
from ..types import Float32, Float64, Int64
from .compare import compare
from .topk import topk_cosine

_ROW_BLOCK = 8192  # float64 rows per block of Gram / capacity work

__all__ = ["Frame", "effective_rank", "frame", "gram", "welch_bound"]


@dataclass(frozen=True)
class Frame:
    """Frame quantities of a dictionary's alive unit decoder rows (see the module docstring).

    feature:         [N] alive feature indices; the per-feature arrays align with it.
    capacity:        [N] float64 C_i.
    max_abs_cos:     [N] largest |cos| of each feature with any other (NaN when N = 1).
    max_abs_partner: [N] the feature attaining it (ties: lower index; -1 when N = 1).
    decoder_norms:   [N] raw decoder row norms, before normalising.
    singular_values: [min(N, d)] float64, descending.
    coherence:       max of max_abs_cos (NaN when N = 1); coherent_pair attains it.
    """

    fingerprint: str
    source: str
    n_features: int
    d_model: int
    feature: Int64[np.ndarray, " N"]
    capacity: Float64[np.ndarray, " N"]
    max_abs_cos: Float32[np.ndarray, " N"]
    max_abs_partner: Int64[np.ndarray, " N"]
    decoder_norms: Float32[np.ndarray, " N"]
    singular_values: Float64[np.ndarray, " r"]
    frame_potential: float

    @property
    def coherence(self) -> float:
        return float(np.max(self.max_abs_cos)) if self.n_features > 1 else float("nan")

    @property
    def coherent_pair(self) -> tuple[int, int]:
        """Two features whose |cos| is the coherence ((-1, -1) when N = 1)."""
        if self.n_features < 2:
            return (-1, -1)
        i = int(np.argmax(self.max_abs_cos))
        return int(self.feature[i]), int(self.max_abs_partner[i])

    @property
    def welch_bound(self) -> float:
        return welch_bound(self.n_features, self.d_model)

    @property
    def frame_potential_bound(self) -> float:
        n, d = self.n_features, self.d_model
        return float(max(n, n * n / d))

    @property
    def effective_rank(self) -> float:
        return effective_rank(self.singular_values)

    @property
    def stable_rank(self) -> float:
        s = self.singular_values
        return float(np.sum(s**2) / s[0] ** 2) if len(s) and s[0] > 0 else float("nan")

    @property
    def capacity_sum(self) -> float:
        return float(np.sum(self.capacity))

    def to_json(self) -> dict[str, float | int | str | list[int]]:
        """The scalars, under the names the `frame` command prints."""
        return {
            "source": self.source,
            "n_features": self.n_features,
            "d_model": self.d_model,
            "coherence": self.coherence,
            "coherent_pair": list(self.coherent_pair),
            "welch_bound": self.welch_bound,
            "frame_potential": self.frame_potential,
            "frame_potential_bound": self.frame_potential_bound,
            "effective_rank": self.effective_rank,
            "effective_rank_definition": "exp(entropy of singular values / their sum), "
            "Roy & Vetterli 2007",
            "stable_rank": self.stable_rank,
            "capacity_sum": self.capacity_sum,
        }


def welch_bound(n: int, d: int) -> float:
    """sqrt((N - d) / (d (N - 1))): no N unit vectors in R^d have a smaller coherence;
    0 for N <= d (orthonormal vectors fit), NaN for N < 2."""
    if n < 2:
        return float("nan")
    return float(np.sqrt(max(0.0, (n - d) / (d * (n - 1)))))


def effective_rank(singular_values: Float64[np.ndarray, " r"]) -> float:
    """Roy & Vetterli's effective rank exp(-sum p log p), p = s / sum(s) over s > 0."""
    s = np.asarray(singular_values, np.float64)
    s = s[s > 0]
    if len(s) == 0:
        return float("nan")
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def gram(rows: Float32[np.ndarray, "n d"]) -> Float64[np.ndarray, "d d"]:
    """rows^T rows in float64, accumulated over row blocks."""
    g = np.zeros((rows.shape[1],) * 2)
    for s in range(0, len(rows), _ROW_BLOCK):
        b = rows[s : s + _ROW_BLOCK].astype(np.float64)
        g += b.T @ b
    return g


def frame(
    d: Dictionary,
    *,
    device: str = "auto",
    cache: ArrayCache | None | bool = True,
) -> Frame:
    """Frame geometry of `d`'s alive unit decoder rows.

    cache: True uses the default disk cache, False none, or a given ArrayCache (key: the
    fingerprint; the coherence is two top-k passes, the Gram O(N d^2)).
    Raises InputError for a dictionary with no alive feature.
    """
    idx = d.alive_index
    if len(idx) == 0:
        raise InputError(f"{d.meta.source} has no alive features")
    n, dm = len(idx), d.d_model

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        rows = d.decoder[idx]
        g = gram(rows)
        cap = np.empty(n)
        for s in range(0, n, _ROW_BLOCK):
            b = rows[s : s + _ROW_BLOCK].astype(np.float64)
            sq = np.einsum("ij,ij->i", b, b)
            cap[s : s + len(b)] = sq**2 / np.einsum("ij,ij->i", b @ g, b)  # BLAS, not einsum
        eig = np.linalg.eigvalsh(g)[::-1][: min(n, dm)]
        sv = np.sqrt(np.maximum(eig, 0.0))
        coh, partner = _max_abs_cos(d, device, cache)
        arrays = {"capacity": cap, "singular_values": sv, "max_abs_cos": coh,
                  "max_abs_partner": partner}  # fmt: skip
        return arrays, {"frame_potential": float(np.sum(g * g))}

    arrays, meta = through(cache, make_key("frame", d.fingerprint), compute)
    return Frame(
        fingerprint=d.fingerprint,
        source=d.meta.source,
        n_features=n,
        d_model=dm,
        feature=idx,
        capacity=arrays["capacity"],
        max_abs_cos=arrays["max_abs_cos"],
        max_abs_partner=arrays["max_abs_partner"],
        decoder_norms=d.decoder_norms[idx],
        singular_values=arrays["singular_values"],
        frame_potential=float(meta["frame_potential"]),
    )


def _max_abs_cos(
    d: Dictionary, device: str, cache: ArrayCache | None | bool
) -> tuple[Float32[np.ndarray, " N"], Int64[np.ndarray, " N"]]:
    """Per alive feature: the largest |cos| with another alive feature, and which one.

    max |cos| = max(max cos, max -cos). The first is the within top-1 (`compare`, cached and
    shared with the Similarity page). For the second, -D against D: row i's own entry scores
    -1, the lowest possible, so with k = 2 and i dropped (or the second entry dropped when i
    is not among the two) the first left is the exact max of -cos over j != i. Where both
    signs give the same |cos|, the lower feature index is reported.
    """
    idx = d.alive_index
    n = len(idx)
    if n < 2:
        return np.full(n, np.nan, np.float32), np.full(n, -1, np.int64)
    pos = compare(d, None, directions="decoder", k=1, device=device, cache=cache)
    rows = d.decoder[idx]
    neg = topk_cosine(-rows, rows, 2, device=device)
    own = neg.indices[:, 0] == np.arange(n)
    col = own.astype(np.int64)  # the first entry unless it is the row itself
    nv = neg.values[np.arange(n), col]
    nj = idx[neg.indices[np.arange(n), col]]
    pv, pj = pos.max_cos, pos.nearest
    take_neg = (nv > pv) | ((nv == pv) & (nj < pj))
    return np.where(take_neg, nv, pv).astype(np.float32), np.where(take_neg, nj, pj)
