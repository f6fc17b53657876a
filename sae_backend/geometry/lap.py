"""Sparse rectangular assignment that returns its dual potentials and can restart warm.

Why not scipy: `min_weight_full_bipartite_matching` (LAPJVsp) returns no duals, and the
certificate in `certificate.py` needs them; it also cannot restart from a previous solution,
and the certified matching re-solves after adding a few pairs to the graph.

Problem (rows = the smaller side, n_r <= n_c; `w` the weight of each edge of the graph G):

    maximise  sum_ij w_ij x_ij  over x >= 0 on G,  sum_j x_ij = 1 (every row),
                                                   sum_i x_ij <= 1 (every column)
    dual:     minimise sum_i u_i + sum_j v_j,  u_i + v_j >= w_ij on G,  v_j >= 0.

Algorithm: successive shortest augmenting paths (Dijkstra on reduced costs
r_ij = u_i + v_j - w_ij >= 0, as in Crouse 2016 "On implementing 2D rectangular assignment
algorithms"), after a greedy start (each row takes its best column when that is still
free). Invariants: r >= 0 on G, r = 0 on matched pairs, and unmatched columns keep v = 0,
so the final (u, v) prove the matching optimal on G by complementary slackness.

Warm restart (after edges were added): rows with a new edge of negative reduced cost are
unmatched and their u raised until all their edges are feasible again. Their former columns
may carry v > 0, so the n_c - n_r columns no row takes are held by one "surplus" node with
weight 0 to every column and potential u_s (u_s + v_j >= 0, tight on the columns it holds);
augmenting paths may pass through it. At the end v_j + u_s and u_i - u_s are the duals of
the problem above (u_s = 0 after a cold start).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

UNASSIGNED = -1
SURPLUS = -2  # the column is held by the surplus node (no row takes it)


@dataclass
class LapState:
    """A solution and its duals; pass it back to `solve` to restart after adding edges.

    row_col:   [n_r] int64, the column of each row (-1 while a row is free).
    col_owner: [n_c] int64, the row holding each column, SURPLUS, or UNASSIGNED.
    u, v:      [n_r], [n_c] float64 potentials (see the module docstring).
    u_surplus: potential of the surplus node.
    augmentations: shortest-path searches run so far (a measure of the work).
    """

    row_col: np.ndarray
    col_owner: np.ndarray
    u: np.ndarray
    v: np.ndarray
    u_surplus: float = 0.0
    augmentations: int = 0

    def duals(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) of the LP in the module docstring: v >= 0, v = 0 on columns no row takes."""
        return self.u - self.u_surplus, np.maximum(self.v + self.u_surplus, 0.0)


class NoFullMatching(InputError):
    """The graph has no matching that covers every row."""


def solve(
    indptr: np.ndarray,  # [n_r + 1] int64, CSR of G (rows = the smaller side)
    indices: np.ndarray,  # [n_edges] int64 column of each edge
    weights: np.ndarray,  # [n_edges] float64 weight of each edge (here a cosine)
    n_cols: int,
    state: LapState | None = None,
) -> LapState:
    """Maximum-weight assignment of every row on the sparse graph; warm when `state` is given.

    `state` must come from an earlier call on a subgraph of this graph (same rows and
    columns, edges only added). Raises NoFullMatching when some row cannot be matched.
    """
    from ._match_kernels import augment_all, greedy_start, warm_start

    n_rows = indptr.size - 1
    if n_rows > n_cols:
        raise ValueError(f"rows must be the smaller side, got {n_rows} rows > {n_cols} columns")
    indptr = np.ascontiguousarray(indptr, np.int64)
    indices = np.ascontiguousarray(indices, np.int64)
    weights = np.ascontiguousarray(weights, np.float64)
    if state is None:
        row_col = np.full(n_rows, UNASSIGNED, np.int64)
        col_owner = np.full(n_cols, UNASSIGNED, np.int64)
        u = np.zeros(n_rows)
        v = np.zeros(n_cols)
        greedy_start(indptr, indices, weights, row_col, col_owner, u)
        u_s = np.zeros(1)
        done = 0
    else:
        row_col = state.row_col.copy()
        col_owner = state.col_owner.copy()
        u, v = state.u.copy(), state.v.copy()
        u_s = np.array([state.u_surplus])
        warm_start(indptr, indices, weights, row_col, col_owner, u, v)
        done = state.augmentations
    n_aug = augment_all(indptr, indices, weights, row_col, col_owner, u, v, u_s)
    if n_aug < 0:
        raise NoFullMatching("the candidate graph has no matching that covers every row")
    if state is None:
        col_owner[col_owner == UNASSIGNED] = SURPLUS  # v = 0 there: held at u_s = 0
    return LapState(row_col, col_owner, u, v, float(u_s[0]), done + n_aug)
