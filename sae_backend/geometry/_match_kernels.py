"""numba kernels of the certified matching (imported lazily: numba's import and first compile
take seconds; compiled code is cached on disk): the assignment solver of `lap.py` and the
exact float64 rescoring of row pairs. Column states: >= 0 the owning row, -1 unassigned, -2
held by the surplus node. Arrays are modified in place."""

from __future__ import annotations

import numba as nb
import numpy as np

_NEG_SLACK = -1e-12  # a warm edge below this reduced cost frees its row (rounding stays)


@nb.njit(cache=True, parallel=True, fastmath=True)
def pair_dots(a, b, rows, cols, out):  # pragma: no cover - numba
    """out[p] = a[rows[p]] . b[cols[p]] accumulated in float64 (float32 inputs: every product
    is exact in float64, so only the float64 summation rounds, in whatever order the
    vectorised loop takes: error <= d * 2^-53 * sum |x y|, ~1e-13 here)."""
    d = a.shape[1]
    for p in nb.prange(rows.size):
        x = a[rows[p]]
        y = b[cols[p]]
        acc = 0.0
        for t in range(d):
            acc += np.float64(x[t]) * np.float64(y[t])
        out[p] = acc


@nb.njit(cache=True)
def greedy_start(indptr, indices, w, row_col, col_owner, u):  # pragma: no cover - numba
    """v = 0: u_i = the row's best weight; a row takes its best column while it is free."""
    for i in range(indptr.size - 1):
        best = -np.inf
        bj = -1
        for e in range(indptr[i], indptr[i + 1]):
            if w[e] > best:
                best = w[e]
                bj = indices[e]
        u[i] = best if bj >= 0 else 0.0
        if bj >= 0 and col_owner[bj] == -1:
            col_owner[bj] = i
            row_col[i] = bj


@nb.njit(cache=True)
def warm_start(indptr, indices, w, row_col, col_owner, u, v):  # pragma: no cover - numba
    """Free every row with an edge of negative reduced cost and raise its u to feasibility."""
    for i in range(indptr.size - 1):
        best = -np.inf
        broken = False
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if u[i] + v[j] - w[e] < _NEG_SLACK:
                broken = True
            if w[e] - v[j] > best:
                best = w[e] - v[j]
        if broken:
            j0 = row_col[i]
            if j0 >= 0:
                col_owner[j0] = -1
                row_col[i] = -1
            u[i] = best


@nb.njit(cache=True)
def _push(hk, hv, size, key, val):  # pragma: no cover - numba
    pos = size
    hk[pos] = key
    hv[pos] = val
    while pos > 0:
        parent = (pos - 1) // 2
        if hk[parent] <= hk[pos]:
            break
        hk[parent], hk[pos] = hk[pos], hk[parent]
        hv[parent], hv[pos] = hv[pos], hv[parent]
        pos = parent
    return size + 1


@nb.njit(cache=True)
def _pop(hk, hv, size):  # pragma: no cover - numba
    key, val = hk[0], hv[0]
    size -= 1
    hk[0] = hk[size]
    hv[0] = hv[size]
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and hk[left + 1] < hk[left]:
            child = left + 1
        if hk[pos] <= hk[child]:
            break
        hk[child], hk[pos] = hk[pos], hk[child]
        hv[child], hv[pos] = hv[pos], hv[child]
        pos = child
    return key, val, size


@nb.njit(cache=True)
def augment_all(indptr, indices, w, row_col, col_owner, u, v, u_s):  # pragma: no cover - numba
    """One shortest augmenting path per free row; returns their number, or -1 when a row
    cannot reach a free column (no full matching). u_s: [1] the surplus node's potential."""
    n_r = indptr.size - 1
    n_c = v.size
    dist = np.full(n_c, np.inf)
    pred = np.full(n_c, -1, np.int64)
    seen = np.zeros(n_c, np.int64)  # iteration stamp: dist/pred valid
    done = np.zeros(n_c, np.int64)  # iteration stamp: popped (final)
    popped = np.empty(n_c, np.int64)
    cap = indices.size + 2 * n_c + 16
    hk = np.empty(cap)
    hv = np.empty(cap, np.int64)
    count = 0
    for i0 in range(n_r):
        if row_col[i0] >= 0:
            continue
        it = count + 1
        size = 0
        n_pop = 0
        for e in range(indptr[i0], indptr[i0 + 1]):
            j = indices[e]
            r = max(u[i0] + v[j] - w[e], 0.0)
            if seen[j] != it or r < dist[j]:
                seen[j] = it
                dist[j] = r
                pred[j] = i0
                size = _push(hk, hv, size, r, j)
        surplus_scanned = False
        label_s = 0.0
        surplus_col = -1
        sink = -1
        d_sink = 0.0
        while size > 0:
            d, j, size = _pop(hk, hv, size)
            if done[j] == it or d > dist[j]:
                continue
            done[j] = it
            popped[n_pop] = j
            n_pop += 1
            own = col_owner[j]
            if own == -1:
                sink = j
                d_sink = d
                break
            if own >= 0:
                for e in range(indptr[own], indptr[own + 1]):
                    j2 = indices[e]
                    if done[j2] == it:
                        continue
                    nd = d + max(u[own] + v[j2] - w[e], 0.0)
                    if seen[j2] != it or nd < dist[j2]:
                        seen[j2] = it
                        dist[j2] = nd
                        pred[j2] = own
                        size = _push(hk, hv, size, nd, j2)
            elif not surplus_scanned:
                surplus_scanned = True
                label_s = d
                surplus_col = j
                for j2 in range(n_c):
                    if done[j2] == it:
                        continue
                    nd = d + max(u_s[0] + v[j2], 0.0)
                    if seen[j2] != it or nd < dist[j2]:
                        seen[j2] = it
                        dist[j2] = nd
                        pred[j2] = -2
                        size = _push(hk, hv, size, nd, j2)
        if sink < 0:
            return -1
        count += 1
        # potentials: every node labelled below d_sink moves by d_sink - label
        u[i0] -= d_sink
        for p in range(n_pop - 1):
            j = popped[p]
            delta = d_sink - dist[j]
            v[j] += delta
            own = col_owner[j]
            if own >= 0:
                u[own] -= delta
        if surplus_scanned:
            u_s[0] -= d_sink - label_s
        # augment along the path back from the sink
        j = sink
        while True:
            i = pred[j]
            if i == -2:
                col_owner[j] = -2
                j = surplus_col
                continue
            prev = row_col[i]
            row_col[i] = j
            col_owner[j] = i
            if i == i0:
                break
            j = prev
    return count
