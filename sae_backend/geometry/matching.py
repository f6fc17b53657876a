"""One-to-one matching of two dictionaries, and how much plain max-cosine double counts.

Per-feature max cosine (its mean is "MMCS") lets many features of A claim the same feature
of B. `match_one_to_one` instead finds the assignment (each B feature used at most once) that
maximises the total cosine; `double_counting` describes how shared the max-cosine targets are.

Two solvers, chosen by size:
- "hungarian": exact, `scipy.optimize.linear_sum_assignment` on the dense float64 cosine
  matrix, used when max(n_a, n_b) <= dense_limit (that matrix is then small).
- "sparse": at paper scale (46,080 x 46,080) the dense matrix does not fit, so candidate pairs
  are the union of the top-k neighbours in both directions (A->B and B->A, from the exact
  blocked `topk_cosine`), rescored exactly in float64, and solved by
  `scipy.sparse.csgraph.min_weight_full_bipartite_matching` (LAPJVsp). It is optimal among
  candidate pairs; with enough candidates it equals the dense optimum, and `upper_bound`
  shows how far from the unrestricted optimum it can at most be.

A feature is "unmatched" (index -1, cosine NaN) when it is on the larger side and left over,
or, in the sparse solver, when the candidate graph has no full matching: then the largest
possible number of candidate pairs is matched (and, among those, the best total), and the
rest of the smaller side has no free candidate partner left among its top-k neighbours.
Raising `k_candidates` shrinks that set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # scipy and torch (topk) are imported where a matching is computed, so
    # the result types here load without them (a cached answer needs neither)
    from .topk import TopK

Progress = Callable[[int, int], None]

# Pairs rescored in float64 per chunk: bounds the temporary [chunk, d] float64 arrays.
_RESCORE_CHUNK = 16384


@dataclass(frozen=True)
class Matching:
    """A one-to-one assignment of rows of A to rows of B.

    b_index:      [n_a] int64, the matched row of B for each row of A, or -1 if unmatched.
    cosine:       [n_a] float32, cosine of each matched pair (float64-exact), NaN if unmatched.
    total:        sum of matched cosines (float64).
    mean:         total / n_matched (NaN when nothing is matched).
    n_matched:    number of matched pairs (min(n_a, n_b) unless the sparse graph lacked one).
    method:       "hungarian" (exact, dense) or "sparse" (optimal among top-k candidates).
    upper_bound:  >= the total of any one-to-one matching: the smaller, over the two sides, of
                  the sum of the min(n_a, n_b) largest per-feature max cosines (negative
                  maxima count as 0). `upper_bound - total` bounds what an exact solver could
                  still gain.
    n_candidates: number of (a, b) pairs the solver considered (n_a * n_b for "hungarian").
    """

    b_index: np.ndarray
    cosine: np.ndarray
    total: float
    mean: float
    n_matched: int
    method: str
    upper_bound: float
    n_candidates: int

    @property
    def gap(self) -> float:
        """upper_bound - total: at most this much total cosine is missed (0 means optimal)."""
        return self.upper_bound - self.total


def match_one_to_one(
    a: np.ndarray,  # [n_a, d] float32 unit rows
    b: np.ndarray,  # [n_b, d] float32 unit rows
    *,
    k_candidates: int = 10,
    dense_limit: int = 4096,
    device: str = "auto",
    progress: Progress | None = None,
    forward: TopK | None = None,
) -> Matching:
    """Assignment of rows of `a` to rows of `b` maximising the total cosine (one-to-one).

    `forward`, if given, is the already computed top-k of `a` among `b` (at least
    `k_candidates` wide); the sparse solver then only computes the B->A direction.

    Exact Hungarian when max(n_a, n_b) <= dense_limit, else the sparse top-`k_candidates`
    candidate graph (see the module docstring). `progress(done, total)` is called as rows are
    scanned for candidates. Rectangular inputs: the smaller side is fully matched.
    """
    a, b = _check_pair(a, b)
    if k_candidates < 1:
        raise InputError(f"k_candidates must be at least 1, got {k_candidates}")
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a == 0 or n_b == 0:
        return _result(
            np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), n_a, 0.0, "hungarian", 0
        )
    if max(n_a, n_b) <= dense_limit:
        return _hungarian(a, b, progress)
    return _sparse(a, b, k_candidates, device, progress, forward)


def _hungarian(a: np.ndarray, b: np.ndarray, progress: Progress | None) -> Matching:
    """Exact optimum on the dense float64 cosine matrix [n_a, n_b] (small by construction)."""
    from scipy.optimize import linear_sum_assignment

    cos = a.astype(np.float64) @ b.astype(np.float64).T  # [n_a, n_b]
    rows, cols = linear_sum_assignment(cos, maximize=True)
    bound = _upper_bound(cos.max(axis=1), cos.max(axis=0))
    if progress:
        progress(1, 1)
    return _result(rows, cols, cos[rows, cols], a.shape[0], bound, "hungarian", cos.size)


def _sparse(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    device: str,
    progress: Progress | None,
    forward: TopK | None = None,
) -> Matching:
    """Optimal matching among the union of top-k candidate pairs in both directions."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

    n_a, n_b = a.shape[0], b.shape[0]
    rows, cols = _candidate_pairs(a, b, k, device, progress, forward)
    cos = _pair_cosines(a, b, rows, cols)  # [n_edges] float64
    row_max = np.full(n_a, -np.inf)
    col_max = np.full(n_b, -np.inf)
    np.maximum.at(row_max, rows, cos)
    np.maximum.at(col_max, cols, cos)
    bound = _upper_bound(row_max, col_max)

    # Weights must be positive and non-zero (explicit zeros vanish from sparse arrays):
    # minimising 2 - cos in [1, 3] over full matchings maximises the total cosine.
    graph = sp.csr_array((2.0 - cos, (rows, cols)), shape=(n_a, n_b))
    full = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    if full == min(n_a, n_b):
        r, c = min_weight_full_bipartite_matching(graph)
    else:
        r, c = _max_cardinality_matching(rows, cols, cos, n_a, n_b)
    # Look the exact cosine of each matched pair up from the candidate list (pairs are unique).
    key = rows * n_b + cols  # sorted, since _candidate_pairs returns np.unique order
    pos = np.searchsorted(key, r.astype(np.int64) * n_b + c)
    if progress:
        progress(n_a + n_b, n_a + n_b)
    return _result(r, c, cos[pos], n_a, bound, "sparse", rows.size)


def _max_cardinality_matching(
    rows: np.ndarray, cols: np.ndarray, cos: np.ndarray, n_a: int, n_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fallback when the candidate graph has no full matching: most pairs, then best total.

    Every row of A gets a private dummy column and every row of B a private dummy row, both
    meaning "unmatched" at cost `u`; dummy rows and columns are joined along the transpose of
    the candidate pairs (cost 1) so they can pair off whenever a real pair is used. A full
    matching of this (n_a + n_b) square graph always exists (everyone unmatched), and
    u > min(n_a, n_b) + 1 makes one more real pair always worth more than any change of the
    cosine total, so the result has maximum cardinality and, among those, maximum total.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    u = float(min(n_a, n_b) + 2)
    ia, ib = np.arange(n_a), np.arange(n_b)
    r = np.concatenate([rows, ia, n_a + ib, n_a + cols])
    c = np.concatenate([cols, n_b + ia, ib, n_b + rows])
    w = np.concatenate([2.0 - cos, np.full(n_a + n_b, u), np.ones(rows.size)])
    graph = sp.csr_array((w, (r, c)), shape=(n_a + n_b, n_b + n_a))
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = (row_ind < n_a) & (col_ind < n_b)
    return row_ind[real], col_ind[real]


def _candidate_pairs(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    device: str,
    progress: Progress | None,
    forward: TopK | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unique (row of A, row of B) pairs from top-k in both directions, sorted by (row, col)."""
    from .topk import TopK, topk_cosine

    n_a, n_b = a.shape[0], b.shape[0]
    total = n_a + n_b
    fwd_progress = (lambda done, _n: progress(done, total)) if progress else None
    bwd_progress = (lambda done, _n: progress(n_a + done, total)) if progress else None
    k_fwd = min(k, n_b)
    if (
        forward is not None
        and forward.indices.shape[0] == n_a
        and forward.indices.shape[1] >= k_fwd
    ):
        fwd = TopK(forward.values[:, :k_fwd], forward.indices[:, :k_fwd])
    else:
        fwd = topk_cosine(a, b, k_fwd, device=device, progress=fwd_progress)
    bwd = topk_cosine(b, a, min(k, n_a), device=device, progress=bwd_progress)
    rows = np.concatenate([np.repeat(np.arange(n_a), fwd.indices.shape[1]), bwd.indices.ravel()])
    cols = np.concatenate([fwd.indices.ravel(), np.repeat(np.arange(n_b), bwd.indices.shape[1])])
    key = np.unique(rows.astype(np.int64) * n_b + cols)
    return key // n_b, key % n_b


def _pair_cosines(a: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """[n_pairs] float64 dot products of the given row pairs, in bounded chunks."""
    out = np.empty(rows.size, np.float64)
    for s in range(0, rows.size, _RESCORE_CHUNK):
        e = min(rows.size, s + _RESCORE_CHUNK)
        ra = a[rows[s:e]].astype(np.float64)
        rb = b[cols[s:e]].astype(np.float64)
        out[s:e] = np.einsum("ij,ij->i", ra, rb)
    return out


def _upper_bound(row_max: np.ndarray, col_max: np.ndarray) -> float:
    """min over sides of the sum of the m largest non-negative per-feature maxima."""
    m = min(row_max.size, col_max.size)

    def top_sum(x: np.ndarray) -> float:
        x = np.maximum(x, 0.0)
        return float(np.sort(x)[x.size - m :].sum()) if m else 0.0

    return min(top_sum(row_max), top_sum(col_max))


def _result(
    rows: np.ndarray,
    cols: np.ndarray,
    cos: np.ndarray,  # [n_pairs] float64 cosines of the matched pairs
    n_a: int,
    bound: float,
    method: str,
    n_candidates: int,
) -> Matching:
    b_index = np.full(n_a, -1, np.int64)
    cosine = np.full(n_a, np.nan, np.float32)
    b_index[rows] = cols
    cosine[rows] = cos
    total = float(np.sum(cos, dtype=np.float64))
    n = int(rows.size)
    return Matching(
        b_index=b_index,
        cosine=cosine,
        total=total,
        mean=total / n if n else float("nan"),
        n_matched=n,
        method=method,
        upper_bound=bound,
        n_candidates=int(n_candidates),
    )


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both 2-D finite float arrays with the same d; returned as contiguous float32."""
    out = []
    for name, x in (("a", a), ("b", b)):
        x = np.asarray(x)
        if x.ndim != 2:
            raise InputError(f"{name}: expected a 2-D [n, d] array, got shape {list(x.shape)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"{name}: expected a float array, got dtype {x.dtype}")
        if not np.isfinite(x).all():
            raise InputError(f"{name}: contains NaN or Inf")
        out.append(np.ascontiguousarray(x, dtype=np.float32))
    if out[0].shape[1] != out[1].shape[1]:
        raise InputError(
            f"a has d={out[0].shape[1]} but b has d={out[1].shape[1]}; both need the same d_model"
        )
    return out[0], out[1]


@dataclass(frozen=True)
class DoubleCounting:
    """How shared the max-cosine targets of A's features are among B's features.

    n_targets:         number of distinct B features that are some A feature's target.
    fraction_targeted: n_targets / n_b.
    in_degree_counts:  [max_in_degree + 1] int64; entry c = number of B features claimed by
                       exactly c A features (entry 0 = B features nobody claims).
    max_in_degree:     the largest number of A features claiming one B feature.
    fraction_shared:   fraction of A features whose target is also another A feature's target
                       (0.0 when A is empty).
    """

    n_targets: int
    fraction_targeted: float
    in_degree_counts: np.ndarray
    max_in_degree: int
    fraction_shared: float


def double_counting(nearest: np.ndarray, n_b: int) -> DoubleCounting:
    """Statistics of `nearest` [n_a] int64 (each A feature's argmax row of B, in [0, n_b))."""
    nearest = np.asarray(nearest)
    if nearest.ndim != 1 or not np.issubdtype(nearest.dtype, np.integer):
        raise InputError(
            f"nearest: expected a 1-D integer array, got {nearest.dtype} shape {list(nearest.shape)}"
        )
    if n_b < 1:
        raise InputError(f"n_b must be at least 1, got {n_b}")
    if nearest.size and (nearest.min() < 0 or nearest.max() >= n_b):
        raise InputError(
            f"nearest: indices must lie in [0, {n_b}), got {nearest.min()}..{nearest.max()}"
        )
    in_degree = np.bincount(nearest, minlength=n_b)  # [n_b]
    counts = np.bincount(in_degree).astype(np.int64)
    n_targets = int((in_degree > 0).sum())
    shared = int((in_degree[nearest] > 1).sum())
    return DoubleCounting(
        n_targets=n_targets,
        fraction_targeted=n_targets / n_b,
        in_degree_counts=counts,
        max_in_degree=int(in_degree.max()),
        fraction_shared=shared / nearest.size if nearest.size else 0.0,
    )
