"""One-to-one matching of two dictionaries, and how much plain max-cosine double counts.

Per-feature max cosine (its mean is "MMCS") lets many features of A claim the same feature
of B. `match_one_to_one` instead finds the assignment (each B feature used at most once, the
smaller side fully matched, as scipy's rectangular `linear_sum_assignment`) that maximises
the total cosine; `double_counting` describes how shared the max-cosine targets are.

Solvers, chosen by size:
- "hungarian": exact, `scipy.optimize.linear_sum_assignment` on the dense float64 cosine
  matrix, used when max(n_a, n_b) <= dense_limit (that matrix is then small).
- "sparse" (certified, the default at scale): candidate pairs are each feature of A's top-k
  neighbours in B (the exact blocked `topk_cosine`), rescored exactly in float64, solved by
  the shortest-augmenting-path solver in `lap.py`, which also returns dual potentials
  (u over A, v over B). `certificate.py` then proves optimality over ALL n_a x n_b pairs
  (no pruned pair has negative reduced cost: for every row, max_j (c_ij - v_j) <= u_i),
  with the top-k engine on augmented vectors. Pairs that break it are added to the graph and
  the solver restarts warm, until the check passes (`rounds`) or `max_rounds` is reached.
  `bound` is a rigorous upper bound on the optimum over all pairs in every case;
  `certified` means bound - total <= tolerance (1e-9 per matched pair by default).
- "sparse" with certify=False: the earlier heuristic, candidates = top-k in both directions,
  optimal among them (scipy's LAPJVsp), with a maximum-cardinality fallback; not certified.

A feature is "unmatched" (index -1, cosine NaN) when it is on the larger side and left over,
or, in the uncertified sparse solver, when the candidate graph has no full matching.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from . import lap

if TYPE_CHECKING:  # scipy, torch (topk) and numba (certificate) are imported where a matching
    # is computed, so the result types here load without them (a cached answer needs none)
    from .topk import TopK

Progress = Callable[[int, int], None]

K_CANDIDATES = 32  # top-k per feature of A in the certified solver's first graph
DEFAULT_TOLERANCE = 1e-9  # per matched pair: certified means total >= optimum - n * this


@dataclass(frozen=True)
class Matching:
    """A one-to-one assignment of rows of A to rows of B.

    b_index:      [n_a] int64, the matched row of B for each row of A, or -1 if unmatched.
    cosine:       [n_a] float32, cosine of each matched pair (float64-exact), NaN if unmatched.
    total:        sum of matched cosines (float64): the objective.
    mean:         total / n_matched (NaN when nothing is matched).
    n_matched:    number of matched pairs (min(n_a, n_b) unless the sparse graph lacked one).
    method:       "hungarian" (exact, dense) or "sparse" (top-k candidate graph).
    upper_bound:  >= the total of any one-to-one matching, from per-feature maxima alone:
                  the sum of the min(n_a, n_b) largest max cosines (negative maxima count as
                  0), the smaller over the sides whose maxima are known.
    n_candidates: number of (a, b) pairs the solver considered (n_a * n_b for "hungarian").
    certified:    True when the total is proved optimal over all pairs within `tolerance`
                  ("hungarian" always; "sparse" after the dual check, see the module doc).
    bound:        rigorous upper bound on the optimum over all pairs (the dual objective plus
                  any excess the check found; = total for "hungarian"; NaN when not checked).
    tolerance:    the total tolerance of `certified` (per-pair tolerance x n_matched).
    rounds:       solver/check rounds until certified (0 for "hungarian").
    potentials_a, potentials_b: [n_a], [n_b] float64 dual potentials with
                  u_i + v_j >= cos(a_i, b_j) - excess_i for all pairs (empty when none).
    """

    b_index: np.ndarray
    cosine: np.ndarray
    total: float
    mean: float
    n_matched: int
    method: str
    upper_bound: float
    n_candidates: int
    certified: bool = False
    bound: float = float("nan")
    tolerance: float = 0.0
    rounds: int = 0
    potentials_a: np.ndarray = field(default_factory=lambda: np.empty(0))
    potentials_b: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def objective(self) -> float:
        """The sum of matched cosines (what the matching maximises)."""
        return self.total

    @property
    def gap(self) -> float:
        """upper_bound - total: how far per-feature maxima (max-cos) overstate what a
        one-to-one matching reaches; with an uncertified solver, also at most this much total
        cosine is missed."""
        return self.upper_bound - self.total

    @property
    def dual_gap(self) -> float:
        """bound - total: at most this much total cosine is missed (NaN when not checked)."""
        return self.bound - self.total


def match_one_to_one(
    a: np.ndarray,  # [n_a, d] float32 unit rows
    b: np.ndarray,  # [n_b, d] float32 unit rows
    *,
    k_candidates: int = K_CANDIDATES,
    dense_limit: int = 4096,
    device: str = "auto",
    progress: Progress | None = None,
    forward: TopK | None = None,
    certify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    max_rounds: int = 30,
    info: dict | None = None,
) -> Matching:
    """Assignment of rows of `a` to rows of `b` maximising the total cosine (one-to-one).

    `forward`, if given, is the already computed top-k of `a` among `b` (at least
    `k_candidates` wide); the sparse solver then skips that pass.

    Exact Hungarian when max(n_a, n_b) <= dense_limit, else the sparse top-`k_candidates`
    candidate graph, certified over all pairs unless `certify=False` (see the module
    docstring). `progress(done, total)` is called as rows are scanned. Rectangular inputs:
    the smaller side is fully matched. `tolerance` is per matched pair. `info`, if given,
    receives where the certified solver spent its time and how much the check scanned.
    """
    a, b = _check_pair(a, b)
    if k_candidates < 1:
        raise InputError(f"k_candidates must be at least 1, got {k_candidates}")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise InputError(f"tolerance must be a finite number >= 0, got {tolerance}")
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a == 0 or n_b == 0:
        empty = np.empty(0, np.int64)
        m = _result(empty, empty, np.empty(0), n_a, 0.0, "hungarian", 0)
        return replace(m, certified=True, bound=0.0)
    if max(n_a, n_b) <= dense_limit:
        return _hungarian(a, b, progress, tolerance)
    if not certify:
        return _sparse(a, b, k_candidates, device, progress, forward)
    return _certified(
        a,
        b,
        k_candidates,
        device,
        progress,
        forward,
        tolerance,
        max_rounds,
        {} if info is None else info,
    )


def _hungarian(
    a: np.ndarray, b: np.ndarray, progress: Progress | None, tolerance: float
) -> Matching:
    """Exact optimum on the dense float64 cosine matrix [n_a, n_b] (small by construction)."""
    from scipy.optimize import linear_sum_assignment

    cos = a.astype(np.float64) @ b.astype(np.float64).T  # [n_a, n_b]
    rows, cols = linear_sum_assignment(cos, maximize=True)
    bound = _upper_bound(cos.max(axis=1), cos.max(axis=0))
    if progress:
        progress(1, 1)
    m = _result(rows, cols, cos[rows, cols], a.shape[0], bound, "hungarian", cos.size)
    return replace(m, certified=True, bound=m.total, tolerance=tolerance * m.n_matched)


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

    from .certificate import pair_cosines

    n_a, n_b = a.shape[0], b.shape[0]
    rows, cols = _candidate_pairs(a, b, k, device, progress, forward)
    cos = pair_cosines(a, b, rows, cols)  # [n_edges] float64
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


def _certified(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    device: str,
    progress: Progress | None,
    forward: TopK | None,
    tolerance: float,
    max_rounds: int,
    info: dict,
) -> Matching:
    """Optimal matching over all pairs, proved by the dual check (see the module docstring)."""
    from .certificate import Checker, Memory, pair_cosines

    n_a, n_b = a.shape[0], b.shape[0]
    total = n_a + n_b
    clock = _Clock(info)
    with clock("forward_s"):
        fwd = _forward(a, b, k, device, progress, forward)
    k_fwd = fwd.indices.shape[1]
    graph = _Graph(n_a, n_b)
    rows = np.repeat(np.arange(n_a), k_fwd)
    cols = fwd.indices.ravel().astype(np.int64)
    with clock("rescore_s"):
        graph.add(rows, cols, pair_cosines(a, b, rows, cols))
        kth = fwd.values[:, -1] if k_fwd < n_b else np.full(n_a, -np.inf, np.float32)
        checker = Checker(a, b, Memory.from_topk(kth, a.shape[1], n_b), device=device)
        _complete(graph, a, b, k, device)
    state: lap.LapState | None = None
    rounds = 0
    info.update(rows_engine=0, pairs_engine=0, rows_dense=0)
    while True:
        rounds += 1
        with clock("solve_s"):
            state = graph.solve(state)
            u, v = graph.duals(state)
        with clock("check_s"):
            check = checker.check(u, v, graph.row_max(v), tolerance)
        for name in ("rows_engine", "pairs_engine", "rows_dense"):
            info[name] += getattr(check, name)
        fresh = graph.add(check.new_rows, check.new_cols, check.new_cos)
        r, c, cos = check.new_rows[fresh], check.new_cols[fresh], check.new_cos[fresh]
        violated = bool(np.any(cos - u[r] - v[c] > tolerance))
        if not violated or rounds >= max_rounds:
            break
    a_rows, b_cols = graph.assignment(state)
    cos = graph.cosines(a_rows, b_cols)
    objective = math.fsum(cos.tolist())
    bound = math.fsum(u.tolist()) + math.fsum(v.tolist()) + math.fsum(check.excess.tolist())
    row_max = graph.row_max(np.zeros(n_b))
    upper = _upper_bound(row_max, np.full(n_b, np.inf))  # B's maxima are not all known
    if progress:
        progress(total, total)
    m = _result(a_rows, b_cols, cos, n_a, upper, "sparse", graph.n_edges)
    tol = tolerance * m.n_matched
    return replace(
        m, total=objective, certified=bool(bound - objective <= tol), bound=bound,
        tolerance=tol, rounds=rounds, potentials_a=u, potentials_b=v,
    )  # fmt: skip


class _Clock:
    """`with clock("name_s"):` adds the block's wall time to info["name_s"]."""

    def __init__(self, info: dict):
        self.info = info

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.info[name] = self.info.get(name, 0.0) + time.perf_counter() - t0


def _forward(
    a: np.ndarray, b: np.ndarray, k: int, device: str, progress: Progress | None, given: TopK | None
) -> TopK:
    """Top-k of A among B (positions into b): `given` when wide enough, else one engine pass."""
    from .topk import TopK, topk_cosine

    k_fwd = min(k, b.shape[0])
    if given is not None and given.indices.ndim == 2:
        n, width = given.indices.shape
        if n == a.shape[0] and width >= k_fwd:
            return TopK(given.values[:, :k_fwd], given.indices[:, :k_fwd])
    total = a.shape[0] + b.shape[0]
    tick = (lambda done, _n: progress(done, total)) if progress else None
    return topk_cosine(a, b, k_fwd, device=device, progress=tick)


class _Graph:
    """The candidate pairs (a, b) with exact cosines, kept sorted by (a, b) and unique, and
    their view for the solver (rows = the smaller side)."""

    def __init__(self, n_a: int, n_b: int):
        self.n_a, self.n_b = n_a, n_b
        self.transposed = n_a > n_b
        self.key = np.empty(0, np.int64)
        self.cos = np.empty(0, np.float64)

    @property
    def n_edges(self) -> int:
        return int(self.key.size)

    def add(self, rows: np.ndarray, cols: np.ndarray, cos: np.ndarray) -> np.ndarray:
        """Add pairs; returns a mask of those that were new."""
        key = rows.astype(np.int64) * self.n_b + cols
        key, first = np.unique(key, return_index=True)
        pos = np.minimum(np.searchsorted(self.key, key), max(self.key.size - 1, 0))
        known = self.key[pos] == key if self.key.size else np.zeros(key.size, bool)
        new = np.zeros(rows.size, bool)
        new[first[~known]] = True
        if np.any(~known):
            merged = np.concatenate([self.key, key[~known]])
            order = np.argsort(merged, kind="stable")
            self.key = merged[order]
            self.cos = np.concatenate([self.cos, cos[first[~known]]])[order]
        return new

    def cosines(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.cos[np.searchsorted(self.key, rows.astype(np.int64) * self.n_b + cols)]

    def row_max(self, v: np.ndarray) -> np.ndarray:
        """[n_a] exact max over each row of A's pairs of c_ij - v_j (-inf for no pairs)."""
        out = np.full(self.n_a, -np.inf)
        np.maximum.at(out, self.key // self.n_b, self.cos - v[self.key % self.n_b])
        return out

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(indptr, indices, weights, n_cols) with rows = the smaller side."""
        a, b = self.key // self.n_b, self.key % self.n_b
        if not self.transposed:
            indptr = np.searchsorted(a, np.arange(self.n_a + 1))
            return indptr, b, self.cos, self.n_b
        order = np.argsort(b * self.n_a + a, kind="stable")
        indptr = np.searchsorted(b[order], np.arange(self.n_b + 1))
        return indptr, a[order], self.cos[order], self.n_a

    def solve(self, state: lap.LapState | None) -> lap.LapState:
        indptr, indices, weights, n_cols = self.csr()
        return lap.solve(indptr, indices, weights, n_cols, state)

    def duals(self, state: lap.LapState) -> tuple[np.ndarray, np.ndarray]:
        """(u over A, v over B) with u_i + v_j >= c_ij on the graph."""
        u, v = state.duals()
        return (v, u) if self.transposed else (u, v)

    def assignment(self, state: lap.LapState) -> tuple[np.ndarray, np.ndarray]:
        """Matched (rows of A, rows of B), sorted by A."""
        if not self.transposed:
            return np.arange(self.n_a), state.row_col.copy()
        order = np.argsort(state.row_col)
        return state.row_col[order], order.astype(np.int64)


def _complete(graph: _Graph, a: np.ndarray, b: np.ndarray, k: int, device: str) -> None:
    """Add pairs until the graph has a matching that covers the smaller side: rows left out
    of a maximum matching get their top-k among the free columns and a free column each."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import maximum_bipartite_matching

    from .certificate import pair_cosines
    from .topk import topk_cosine

    indptr, indices, weights, n_cols = graph.csr()
    n_rows = indptr.size - 1
    g = sp.csr_array((np.ones(indices.size), indices, indptr), shape=(n_rows, n_cols))
    match = maximum_bipartite_matching(g, perm_type="column")
    lone = np.flatnonzero(match < 0)
    if lone.size == 0:
        return
    free = np.setdiff1d(np.arange(n_cols), match[match >= 0])
    rows_x, cols_x = (b, a) if graph.transposed else (a, b)
    res = topk_cosine(rows_x[lone], cols_x[free], min(k, free.size), device=device)
    taken = np.zeros(n_cols, bool)
    pick = np.empty(lone.size, np.int64)
    spare = iter(free.tolist())
    for n, listed in enumerate(free[res.indices]):
        choice = next((int(j) for j in listed if not taken[j]), -1)
        while choice < 0:
            j = next(spare)
            choice = j if not taken[j] else -1
        taken[choice] = True
        pick[n] = choice
    r = np.concatenate([np.repeat(lone, res.indices.shape[1]), lone])
    c = np.concatenate([free[res.indices].ravel(), pick])
    ra, cb = (c, r) if graph.transposed else (r, c)
    graph.add(ra, cb, pair_cosines(a, b, ra, cb))


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
