"""Planted width ladders and absorption pairs, with float64 reference implementations.

`planted_ladder()` builds three dictionaries (5 -> 8 -> 9 rows) in a random orthonormal
basis e_0..e_23 of R^24, so every cosine is known by construction:

    dictionary 0 (narrow)         dictionary 1 (wider)                  dictionary 2 (widest)
    A0 = e0                       B0 = e0 + 0.1 e20   (A0, cos .995)    C0 = B0 + 0.05 e21 (B0)
    A1 = e1                       B1 = e1 + e5        (A1, cos .707)    C1 = e1 + e5 + .3 e10 (B1)
    A2 = e2                       B2 = e1 + e6        (A1, cos .707)    C2 = e1 + e5 - .3 e10 (B1)
    A3 = e3                       B3 = e7             (novel)           C3 = e6 + 0.1 e11  (B2, .704)
    A4 = 0 (dead)                 B4 = .4 e3 + .917 e8 (cos .4: novel)  C4 = e7             (B3, 1)
                                  B5 = .8 e2 + .6 e1  (A2 .8; A1 .6)    C5 = e12            (novel)
                                  B6 = 5 e9 (scaled)  (novel)           C6 = e9 + 0.2 e13  (B6)
                                  B7 = 0 (dead)                         C7 = e14            (novel)
                                                                        C8 = 0 (dead)

With tau = 0.5, level 0 (tree): A0 stable, A1 split (B1, B2), A2 stable (B5), A3 vanished;
B3, B4, B6 novel. In dag mode B5 also has parent A1 (cos .6), so A1 splits into three.
Level 1: B0 stable, B1 split (C1, C2), B2 stable, B3 stable, B4 and B5 vanished, B6 stable;
C5, C7 novel. No cosine lies within 0.01 of 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sae_backend.dictionary import Dictionary, RawSAE

D_MODEL = 24


def basis(d: int = D_MODEL, seed: int = 0) -> np.ndarray:
    """A random orthonormal basis of R^d (rows), so planted rows are not axis-aligned."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q.T


def rows(spec: list[dict[int, float]], e: np.ndarray) -> np.ndarray:
    """Rows sum_j c_j e_j from {j: c_j} dicts (an empty dict is a zero row)."""
    out = np.zeros((len(spec), e.shape[1]))
    for i, terms in enumerate(spec):
        for j, c in terms.items():
            out[i] += c * e[j]
    return out


@dataclass(frozen=True)
class Ladder:
    decoders: tuple[np.ndarray, ...]  # float64 raw rows, narrowest first
    hooks: tuple[str, ...]

    def dictionaries(self, hooks: tuple[str, ...] | None = None) -> list[Dictionary]:
        return [
            Dictionary.from_raw(
                RawSAE(dec, meta={"hook": hook}), source=f"ladder/{i}", format="matrix"
            )
            for i, (dec, hook) in enumerate(zip(self.decoders, hooks or self.hooks, strict=True))
        ]


def planted_ladder(seed: int = 0) -> Ladder:
    e = basis(seed=seed)
    a = rows([{0: 1}, {1: 1}, {2: 1}, {3: 1}, {}], e)
    b = rows(
        [
            {0: 1, 20: 0.1},
            {1: 1, 5: 1},
            {1: 1, 6: 1},
            {7: 1},
            {3: 0.4, 8: np.sqrt(1 - 0.16)},
            {2: 0.8, 1: 0.6},
            {9: 5.0},
            {},
        ],
        e,
    )
    c = rows(
        [
            {0: 1, 20: 0.1, 21: 0.05},
            {1: 1, 5: 1, 10: 0.3},
            {1: 1, 5: 1, 10: -0.3},
            {6: 1, 11: 0.1},
            {7: 1},
            {12: 1},
            {9: 1, 13: 0.2},
            {14: 1},
            {},
        ],
        e,
    )
    hook = "blocks.6.hook_resid_pre"
    return Ladder((a, b, c), (hook, hook, hook))


# Known answers of the planted ladder at tau = 0.5: {level: {(parent, child), ...}}
TREE_EDGES = {
    0: {(0, 0), (1, 1), (1, 2), (2, 5)},
    1: {(0, 0), (1, 1), (1, 2), (2, 3), (3, 4), (6, 6)},
}
DAG_EDGES = {0: TREE_EDGES[0] | {(1, 5)}, 1: TREE_EDGES[1]}
TREE_LABELS = {
    0: {0: "stable", 1: "split", 2: "stable", 3: "vanished"},
    1: {
        0: "stable",
        1: "split",
        2: "stable",
        3: "stable",
        4: "vanished",
        5: "vanished",
        6: "stable",
    },
}
TREE_NOVEL = {1: {3, 4, 6}, 2: {5, 7}}


# ----------------------------------------------------------------------------- references


def unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, n, out=np.zeros_like(m), where=n > 0)


def alive(m: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.linalg.norm(m, axis=1) > 0)


def families_reference(
    narrow: np.ndarray, wide: np.ndarray, tau: float, dag: bool
) -> dict[tuple[int, int], float]:
    """float64 brute force: {(parent, child): cosine} over alive rows (feature indices)."""
    ia, ib = alive(narrow), alive(wide)
    s = unit(wide)[ib] @ unit(narrow)[ia].T  # [wide, narrow]
    out = {}
    for r, c in enumerate(ib):
        if dag:
            for j in np.flatnonzero(s[r] >= tau):
                out[(int(ia[j]), int(c))] = float(s[r, j])
        else:
            j = int(np.argmax(s[r]))  # first maximum: the lower index on ties
            if s[r, j] >= tau:
                out[(int(ia[j]), int(c))] = float(s[r, j])
    return out


def coverage_reference(parent_row: np.ndarray, child_rows: np.ndarray) -> float:
    """1 - |r|^2 / |p|^2 with r the lstsq residual of p on the children (float64, numpy)."""
    p = unit(parent_row[None])[0]
    c = unit(child_rows).T
    x, *_ = np.linalg.lstsq(c, p, rcond=None)
    r = p - c @ x
    return float(1 - r @ r / (p @ p))


def absorption_reference(
    enc: np.ndarray, dec: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float64: for each alive feature p (decoder non-zero), the k alive c != p with the most
    negative cos(enc_p, dec_c) (ties: lower index): (feature, partner, enc_dec, dec_dec)."""
    idx = alive(dec)
    ue, ud = unit(enc)[idx], unit(dec)[idx]
    s = ue @ ud.T
    np.fill_diagonal(s, np.inf)
    order = np.argsort(s, axis=1, kind="stable")[:, :k]
    partner = idx[order]
    enc_dec = np.take_along_axis(s, order, 1)
    dec_dec = np.einsum("id,ikd->ik", ud, ud[order])
    return idx, partner, enc_dec, dec_dec
