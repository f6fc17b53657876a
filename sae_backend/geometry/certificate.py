"""Proof that a one-to-one matching is optimal over ALL n_a x n_b pairs, not only candidates.

The LP (n_a <= n_b shown; otherwise the roles of u and v swap):

    maximise  sum_ij c_ij x_ij,  sum_j x_ij = 1 (each row of A),  sum_i x_ij <= 1 (each row of
              B), x >= 0                                             (c_ij = cos(a_i, b_j))
    dual:     minimise  sum_i u_i + sum_j v_j  s.t.  u_i + v_j >= c_ij for ALL pairs,  v >= 0

Weak duality: every one-to-one matching that covers the smaller side has total cosine
<= sum u + sum v for any dual-feasible (u, v). The sparse solver (`lap.py`) returns (u, v)
feasible on the candidate graph with sum u + sum v = its objective. If the same (u, v) are
feasible for every pair, the objective equals the upper bound: optimal. Where some row i has
e_i = max_j (c_ij - v_j) - u_i > 0, (u + e, v) is feasible, so

    bound = sum_i u_i + sum_j v_j + sum_i max(e_i, 0)   >=   the optimum over all pairs,

always; the matching is certified when bound - objective <= tolerance. The e_i are upper
bounds computed below, so `bound` is rigorous even when they are not exact.

How max_j (c_ij - v_j) is computed for every row without the n_a x n_b matrix: one blocked pass
of the exact top-k engine (`topk_cosine`) over augmented unit vectors

    a'_i = [a_i, 1, 0] / |[a_i, 1]|,     b'_j = [s b_j, -s v_j, sqrt(1 - s^2 (|b_j|^2 + v_j^2))],

s = 1 / sqrt(1 + max v^2), so a'_i . b'_j = s (c_ij - v_j) / |[a_i, 1]|: the row's order of
c_ij - v_j. The top-K pairs of each row are re-scored exactly in float64; every other pair is
at most the K-th value plus `engine_error` (float32 dot products of unit vectors of length
d + 2, rounding of the inputs to float32, and selection by float32 scores: 2 gamma_{d+2} +
3 * 2^-24). A row whose K-th value plus that error still reaches u_i is re-checked with a
larger K, and at last exactly in float64 against every row of B.

Rounds are cheap because each checked row remembers a bound: for all j outside its candidate
pairs, c_ij - v'_j <= T_i at the duals v' it was checked with. With new duals v,
c_ij - v_j <= T_i + max_j (v'_j - v_j); the few columns whose v dropped most are checked
explicitly (rows x those columns), the rest through the remembered bound, and only rows whose
bound no longer proves them are passed through the engine again. The forward top-k pass that
built the candidates is the first such memory (v' = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..types import Float32, Float64, Int64
from .topk import topk_cosine

_U32 = 2.0**-24  # unit roundoff of float32
_DENSE_BLOCK = 256  # rows per block of the exact float64 fallback
_CHUNK_ROWS = 8192  # rows converted to float64 at a time (bounds the temporaries)
_NARROW_COST = 4  # cost per pair of a float32 check against few columns, in bf16-pass pairs


def _squared_norms(x: np.ndarray) -> np.ndarray:
    """[n] float64 squared row norms, a chunk of rows at a time."""
    out = np.empty(x.shape[0])
    for r0 in range(0, x.shape[0], _CHUNK_ROWS):
        c = x[r0 : r0 + _CHUNK_ROWS].astype(np.float64)
        out[r0 : r0 + c.shape[0]] = np.einsum("ij,ij->i", c, c)
    return out


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): bound on the relative error of an n-term float32 dot
    product, any summation order (|fl(x.y) - x.y| <= gamma_n sum |x_k y_k|)."""
    return n * _U32 / (1 - n * _U32)


def engine_error(d: int) -> float:
    """Error bound, for unit vectors of length d, on any value `topk_cosine` reports and on any
    value it leaves out (<= its k-th value + this): two float32 dot-product errors (reported vs
    selected) and the rounding of float64 inputs to float32."""
    return 2.02 * gamma(d) + 3 * _U32


def pair_cosines(
    a: Float32[np.ndarray, "n_a d"],
    b: Float32[np.ndarray, "n_b d"],
    rows: Int64[np.ndarray, " p"],
    cols: Int64[np.ndarray, " p"],
) -> Float64[np.ndarray, " p"]:
    """float64 dot products of the given row pairs of float32 arrays (products exact, only the
    float64 sum rounds: ~1e-16 relative), without gathering rows into float64 copies."""
    from ._match_kernels import pair_dots

    out = np.empty(rows.size, np.float64)
    if rows.size:
        pair_dots(
            np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
            np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(cols, np.int64), out,
        )  # fmt: skip
    return out


@dataclass
class Memory:
    """What earlier checks proved about each row of A, for pairs outside the candidate graph.

    bound[i]: every j not a candidate of row i has c_ij - refs[version[i]][j] <= bound[i].
    """

    bound: Float64[np.ndarray, " n_a"]
    version: Int64[np.ndarray, " n_a"]
    refs: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def from_topk(cls, kth: np.ndarray, d: int, n_b: int) -> Memory:
        """From a plain top-k pass (duals v' = 0): c_ij <= k-th value + error elsewhere."""
        bound = kth.astype(np.float64) + engine_error(d) * 1.0001 + 1e-12
        return cls(bound, np.zeros(kth.size, np.int64), [np.zeros(n_b)])


@dataclass
class Check:
    """Result of one check of duals (u, v) over all pairs.

    excess:      [n_a] rigorous upper bounds of max(0, max_j (c_ij - v_j) - u_i).
    new_rows, new_cols, new_cos: pairs found worth adding to the graph (exact cosines).
    rows_engine: rows of A passed through the engine against all of B this round.
    pairs_engine: row-column pairs the engine scored this round (the check's cost).
    rows_dense:  rows checked exactly in float64 against all of B.
    """

    excess: np.ndarray
    new_rows: np.ndarray
    new_cols: np.ndarray
    new_cos: np.ndarray
    rows_engine: int
    pairs_engine: int
    rows_dense: int


class Checker:
    """Checks duals against every pair; keeps the per-row `Memory` between rounds."""

    def __init__(
        self,
        a: Float32[np.ndarray, "n_a d"],
        b: Float32[np.ndarray, "n_b d"],
        memory: Memory,
        *,
        k: int = 16,
        device: str = "auto",
        dense_rows_max: int = 4096,
    ):
        self.a, self.b = a, b
        self.memory = memory
        self.k = k
        self.device = device
        self.dense_rows_max = dense_rows_max
        self.n_a, self.n_b = a.shape[0], b.shape[0]
        self.err = engine_error(a.shape[1] + 2) * 1.0001 + 1e-12
        self.norm_a = np.sqrt(_squared_norms(a) + 1)  # |[a_i, 1]|
        self.sq_b = _squared_norms(b)

    # ------------------------------------------------------------------------------------
    def check(
        self,
        u: Float64[np.ndarray, " n_a"],
        v: Float64[np.ndarray, " n_b"],
        graph_max: Float64[np.ndarray, " n_a"],
        tol: float,
    ) -> Check:
        """Bound max_j (c_ij - v_j) - u_i for every row. `graph_max[i]` is the exact maximum
        of c_ij - v_j over row i's candidate pairs (-inf if none). Rows whose remembered bound
        no longer proves them are re-checked; pairs found are returned for the graph."""
        mem = self.memory
        limit = u + tol * 0.01  # a row is proved when its bound is below this
        proved = np.full(self.n_a, -np.inf)  # best rigorous bound of c_ij - v_j off the graph
        todo = np.zeros(self.n_a, bool)
        b_aug, scale = self._augment_b(v)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        pairs = 0
        for t, ref in enumerate(mem.refs):
            rows = np.flatnonzero(mem.version == t)
            if rows.size == 0:
                continue
            drop = ref - v
            cols, rest = self._split_columns(drop, mem.bound[rows], limit[rows])
            bound = mem.bound[rows] + rest
            if cols.size:
                ok = bound <= limit[rows]
                sub = rows[ok]
                if sub.size:
                    top, r, c = self._engine(sub, b_aug, scale, cols, v, limit[sub])
                    bound[ok] = np.maximum(bound[ok], top)
                    pairs += sub.size * cols.size
                    found.append((r, c))
            proved[rows] = bound
            todo[rows] = bound > limit[rows]
        redo = np.flatnonzero(todo)
        n_engine, n_dense = redo.size, 0
        k = self.k
        while redo.size:
            if k > 8 * self.k or k >= self.n_b:
                dense = redo[: self.dense_rows_max]
                proved[dense] = self._dense(dense, v)
                mem.bound[dense] = proved[dense]  # exact, over every pair of these rows
                mem.version[dense] = len(mem.refs)
                n_dense += dense.size
                redo = redo[dense.size :]
                continue
            top, r, c, kth = self._engine_full(redo, b_aug, scale, v, k)
            pairs += redo.size * self.n_b
            found.append((r, c))
            proved[redo] = np.maximum(top, kth)
            mem.bound[redo] = kth
            mem.version[redo] = len(mem.refs)
            # rows with a violation found are settled by re-solving; rows whose k-th value
            # still reaches the limit without one need a wider look
            redo = redo[(kth > limit[redo]) & (top <= limit[redo])]
            k *= 8
        mem.refs.append(v.copy())
        rows_new = np.concatenate([r for r, _ in found]) if found else np.empty(0, np.int64)
        cols_new = np.concatenate([c for _, c in found]) if found else np.empty(0, np.int64)
        cos_new = pair_cosines(self.a, self.b, rows_new, cols_new)
        excess = np.maximum(np.maximum(proved, graph_max) - u, 0.0)
        return Check(excess, rows_new, cols_new, cos_new, n_engine, pairs, n_dense)

    # ------------------------------------------------------------------------------------
    def _split_columns(
        self, drop: np.ndarray, bound: np.ndarray, limit: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Columns to check explicitly (those whose v dropped most) and the largest drop of the
        rest, chosen to minimise the engine's work: explicit columns cost every row (scored in
        float32 against a narrow B, ~4x a bf16 pass's cost per pair on CPUs), a row the
        remembered bound cannot prove costs a full pass of that row."""
        order = np.argsort(-drop, kind="stable")
        best: tuple[float, int, float] | None = None
        for s in (0, 16, 64, 256, 1024, 4096, self.n_b // 8, self.n_b // 2):
            if s >= self.n_b:
                continue
            rest = float(drop[order[s]])
            fail = int(np.count_nonzero(bound + rest > limit))
            cost = fail * self.n_b + (bound.size - fail) * s * _NARROW_COST
            if best is None or cost < best[0]:
                best = (cost, s, rest)
        assert best is not None
        _, s, rest = best
        return np.sort(order[:s]), rest

    def _augment_b(self, v: np.ndarray) -> tuple[np.ndarray, float]:
        """[n_b, d + 2] float32 unit rows b'_j (module docstring) and the scale s."""
        s = 1.0 / math.sqrt(1.0 + float(np.max(v * v, initial=0.0)))
        out = np.empty((self.n_b, self.b.shape[1] + 2), np.float32)
        for r0 in range(0, self.n_b, _CHUNK_ROWS):  # no float64 copy of all of B
            r1 = min(self.n_b, r0 + _CHUNK_ROWS)
            out[r0:r1, :-2] = s * self.b[r0:r1].astype(np.float64)
        out[:, -2] = -s * v
        out[:, -1] = np.sqrt(np.maximum(1.0 - s * s * (self.sq_b + v * v), 0.0))
        return out, s

    def _augment_a(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), d + 2] float32 unit rows a'_i = [a_i, 1, 0] / |[a_i, 1]|."""
        out = np.zeros((rows.size, self.a.shape[1] + 2), np.float32)
        for r0 in range(0, rows.size, _CHUNK_ROWS):
            sel = rows[r0 : r0 + _CHUNK_ROWS]
            out[r0 : r0 + sel.size, :-2] = self.a[sel].astype(np.float64) / self.norm_a[sel, None]
        out[:, -2] = 1.0 / self.norm_a[rows]
        return out

    def _engine(
        self,
        rows: np.ndarray,
        b_aug: np.ndarray,
        scale: float,
        cols: np.ndarray,
        v: np.ndarray,
        limit: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """max over `cols` of c_ij - v_j for `rows` (rigorous upper bounds) and the pairs that
        come near their limit. Top-1 in float32: a narrow B leaves the bf16 path nothing to
        prune, and one value per row is all a proof needs here (the rest <= it + error)."""
        k = 1
        res = topk_cosine(
            self._augment_a(rows), b_aug[cols], k, device=self.device, precision="fp32"
        )
        to_cos = self.norm_a[rows] / scale  # scaled value -> c - v units
        kth = (res.values[:, -1].astype(np.float64) + self.err) * to_cos
        r = np.repeat(rows, k)
        c = cols[res.indices.ravel()]
        exact = (pair_cosines(self.a, self.b, r, c) - v[c]).reshape(rows.size, k)
        top = np.maximum(exact.max(axis=1), kth if k < cols.size else -np.inf)
        near = exact.ravel() >= np.repeat(limit, k) - 0.05
        return top, r[near], c[near]

    def _engine_full(
        self, rows: np.ndarray, b_aug: np.ndarray, scale: float, v: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of c_ij - v_j over all of B for `rows`: exact top values, the pairs, and the
        rigorous bound on every other pair."""
        k = min(k, self.n_b)
        res = topk_cosine(self._augment_a(rows), b_aug, k, device=self.device)
        to_cos = self.norm_a[rows] / scale
        if k < self.n_b:
            kth = (res.values[:, -1].astype(np.float64) + self.err) * to_cos
        else:
            kth = np.full(rows.size, -np.inf)
        r = np.repeat(rows, k)
        c = res.indices.ravel().astype(np.int64)
        exact = (pair_cosines(self.a, self.b, r, c) - v[c]).reshape(rows.size, k)
        return exact.max(axis=1), r, c, kth

    def _dense(self, rows: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Exact float64 max_j (c_ij - v_j) over all of B (a fallback for rows with many ties)."""
        out = np.empty(rows.size)
        for s in range(0, rows.size, _DENSE_BLOCK):
            x = self.a[rows[s : s + _DENSE_BLOCK]].astype(np.float64)
            best = np.full(x.shape[0], -np.inf)
            for c0 in range(0, self.n_b, 8192):
                y = self.b[c0 : c0 + 8192].astype(np.float64)
                best = np.maximum(best, (x @ y.T - v[c0 : c0 + 8192]).max(axis=1))
            out[s : s + _DENSE_BLOCK] = best
        return out
