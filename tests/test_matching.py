"""One-to-one matching and double counting, against float64 brute force and plain Python."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sae_backend.errors import InputError
from sae_backend.geometry.matching import double_counting, match_one_to_one


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cos64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ b.astype(np.float64).T


def brute_force_best(cos: np.ndarray) -> float:
    """Best total over all injective maps of the smaller side (itertools, n <= 7)."""
    n_a, n_b = cos.shape
    if n_a <= n_b:
        return max(
            sum(cos[i, j] for i, j in enumerate(p)) for p in itertools.permutations(range(n_b), n_a)
        )
    return brute_force_best(cos.T)


def assert_valid(m, n_a: int, n_b: int, a: np.ndarray, b: np.ndarray) -> None:
    """One-to-one, indices in range, cosines exact, totals consistent."""
    matched = m.b_index >= 0
    assert m.b_index.shape == (n_a,) and m.b_index.dtype == np.int64
    assert m.cosine.shape == (n_a,) and m.cosine.dtype == np.float32
    assert np.all(m.b_index < n_b)
    assert len(set(m.b_index[matched].tolist())) == matched.sum() == m.n_matched
    assert np.all(np.isnan(m.cosine[~matched]))
    ref = np.einsum(
        "ij,ij->i", a[matched].astype(np.float64), b[m.b_index[matched]].astype(np.float64)
    )
    np.testing.assert_allclose(m.cosine[matched], ref, atol=1e-6)
    assert m.total == pytest.approx(ref.sum(), abs=1e-9)
    assert m.mean == pytest.approx(ref.sum() / max(1, matched.sum()), abs=1e-9)
    assert m.upper_bound >= m.total - 1e-9


@pytest.mark.parametrize("shape", [(5, 5), (4, 7), (7, 3), (6, 6)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hungarian_equals_brute_force(shape, seed):
    rng = np.random.default_rng(seed)
    a = unit(rng.standard_normal((shape[0], 4)))
    b = unit(rng.standard_normal((shape[1], 4)))
    m = match_one_to_one(a, b)
    assert m.method == "hungarian"
    assert m.n_matched == min(shape)
    assert_valid(m, *shape, a, b)
    assert m.total == pytest.approx(brute_force_best(cos64(a, b)), abs=1e-9)


def test_permutation_recovered_exactly_by_both_methods():
    rng = np.random.default_rng(3)
    n = 200
    a = unit(rng.standard_normal((n, 32)))
    perm = rng.permutation(n)
    b = unit(a[perm] + 0.05 * rng.standard_normal((n, 32)))  # b[j] ~ a[perm[j]]
    expected = np.argsort(perm)  # a[i] should match b[j] with perm[j] == i
    for kwargs in ({}, {"dense_limit": 0, "k_candidates": 3}, {"dense_limit": 0, "certify": False}):
        m = match_one_to_one(a, b, **kwargs)
        np.testing.assert_array_equal(m.b_index, expected)
        assert_valid(m, n, n, a, b)
    assert m.method == "sparse"


def planted_cases():
    """(name, a, b, k): k is a candidate count large enough for the exact optimum."""
    rng = np.random.default_rng(7)
    a = unit(rng.standard_normal((60, 16)))
    b = unit(a[rng.permutation(60)] + 0.2 * rng.standard_normal((60, 16)))
    yield "noisy-permutation", a, b, 10
    # B = A plus duplicates of ten of its rows, shuffled: the duplicates are left over.
    extra = np.concatenate([a, a[:10]])[rng.permutation(70)]
    yield "duplicates-extra", a, unit(extra + 0.01 * rng.standard_normal(extra.shape)), 5
    # B = A with ten rows replaced by duplicates of others: ten orphans in A match poorly.
    dup = a.copy()
    dup[40:50] = a[:10]
    yield "duplicates-replace", a, unit(dup + 0.01 * rng.standard_normal(dup.shape)), 60
    yield "random", unit(rng.standard_normal((50, 8))), unit(rng.standard_normal((50, 8))), 50
    yield "rect-wide", unit(rng.standard_normal((30, 8))), unit(rng.standard_normal((55, 8))), 55
    yield "rect-tall", unit(rng.standard_normal((55, 8))), unit(rng.standard_normal((30, 8))), 55


CASES = list(planted_cases())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_sparse_with_enough_candidates_equals_hungarian(case):
    _, a, b, k = case
    n_a, n_b = a.shape[0], b.shape[0]
    h = match_one_to_one(a, b)
    s = match_one_to_one(a, b, dense_limit=0, k_candidates=k, certify=False)
    assert (h.method, s.method) == ("hungarian", "sparse")
    assert s.n_matched == h.n_matched == min(n_a, n_b)
    assert s.total == pytest.approx(h.total, abs=1e-6)
    assert s.upper_bound == pytest.approx(h.upper_bound, abs=1e-6)
    assert_valid(h, n_a, n_b, a, b)
    assert_valid(s, n_a, n_b, a, b)


def candidate_mask(cos: np.ndarray, k: int) -> np.ndarray:
    """[n_a, n_b] bool: pair is among the top-k of its row or of its column (float64)."""
    n_a, n_b = cos.shape
    mask = np.zeros(cos.shape, bool)
    mask[np.arange(n_a)[:, None], np.argsort(-cos, axis=1)[:, : min(k, n_b)]] = True
    mask[np.argsort(-cos, axis=0)[: min(k, n_a)], np.arange(n_b)[None, :]] = True
    return mask


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_sparse_is_optimal_among_candidates(case, k):
    """Reference: dense Hungarian where non-candidate pairs cost a large penalty.

    The penalty makes it use as few non-candidates as possible (so the candidate pairs it
    keeps form a largest candidate matching) and then maximise their total: exactly what the
    sparse solver promises, including its fallback when no full candidate matching exists.
    """
    _, a, b, _ = case
    cos = cos64(a, b)
    mask = candidate_mask(cos, k)
    r, c = linear_sum_assignment(np.where(mask, cos, -1e3), maximize=True)
    keep = mask[r, c]
    s = match_one_to_one(a, b, dense_limit=0, k_candidates=k, certify=False)
    assert_valid(s, a.shape[0], b.shape[0], a, b)
    assert s.n_matched == keep.sum()
    assert s.total == pytest.approx(cos[r[keep], c[keep]].sum(), abs=1e-6)
    matched = np.flatnonzero(s.b_index >= 0)
    assert mask[matched, s.b_index[matched]].all()
    assert s.n_candidates == mask.sum()
    assert s.total <= match_one_to_one(a, b).total + 1e-9


def test_upper_bound_is_the_min_of_row_and_column_maxima():
    rng = np.random.default_rng(11)
    a = unit(rng.standard_normal((6, 5)))
    b = unit(rng.standard_normal((9, 5)))
    cos = cos64(a, b)
    m = match_one_to_one(a, b)
    rows = np.sort(np.maximum(cos.max(1), 0))[-6:].sum()
    cols = np.sort(np.maximum(cos.max(0), 0))[-6:].sum()
    assert m.upper_bound == pytest.approx(min(rows, cols), abs=1e-12)
    assert m.gap >= -1e-12


def test_double_claims_on_both_sides_open_a_gap():
    """A = {u, u', v}, B = {v, v', u}: max-cos counts ~3 on both sides, one-to-one only 2."""
    e = np.eye(4)
    u, v = e[0], e[1]
    a = unit(np.stack([u, u + 0.1 * e[2], v]))
    b = unit(np.stack([v, v + 0.1 * e[3], u]))
    m = match_one_to_one(a, b)
    assert m.total == pytest.approx(brute_force_best(cos64(a, b)), abs=1e-9)
    assert m.total == pytest.approx(2.0, abs=1e-6)
    assert m.upper_bound == pytest.approx(2 + 1 / np.sqrt(1.01), abs=1e-6)
    assert m.gap > 0.9


def best_partial_matching(cos: np.ndarray, edges: set[tuple[int, int]]) -> tuple[int, float]:
    """(max cardinality, best total at that cardinality) over matchings within `edges`."""
    n_a = cos.shape[0]
    best = (0, 0.0)

    def go(i: int, used: frozenset, size: int, total: float) -> None:
        nonlocal best
        if i == n_a:
            if size > best[0] or (size == best[0] and total > best[1]):
                best = (size, total)
            return
        go(i + 1, used, size, total)
        for i2, j in edges:
            if i2 == i and j not in used:
                go(i + 1, used | {j}, size + 1, total + cos[i, j])

    go(0, frozenset(), 0, 0.0)
    return best


def test_sparse_fallback_when_candidates_have_no_full_matching():
    """A = noisy copies of one direction: top-1 candidates cannot match everyone."""
    rng = np.random.default_rng(5)
    n, d = 6, 8
    a = unit(np.eye(d)[0] + 0.15 * rng.standard_normal((n, d)))
    b = unit(np.eye(d)[:n] + 0.05 * rng.standard_normal((n, d)))
    cos = cos64(a, b)
    k = 1
    edges = {(i, int(j)) for i in range(n) for j in np.argsort(-cos[i])[:k]}
    edges |= {(int(i), j) for j in range(n) for i in np.argsort(-cos[:, j])[:k]}
    size, total = best_partial_matching(cos, edges)
    assert size < n  # the planted case really lacks a full matching
    m = match_one_to_one(a, b, dense_limit=0, k_candidates=k, certify=False)
    assert m.method == "sparse"
    assert not m.certified
    assert_valid(m, n, n, a, b)
    assert m.n_matched == size
    assert m.total == pytest.approx(total, abs=1e-6)
    for i in np.flatnonzero(m.b_index >= 0):
        assert (int(i), int(m.b_index[i])) in edges


def test_empty_and_bad_inputs():
    a = unit(np.random.default_rng(0).standard_normal((3, 4)))
    m = match_one_to_one(a, np.zeros((0, 4), np.float32))
    assert m.n_matched == 0 and np.all(m.b_index == -1) and np.isnan(m.mean)
    with pytest.raises(InputError, match="d_model"):
        match_one_to_one(a, np.zeros((3, 5), np.float32))
    with pytest.raises(InputError, match="2-D"):
        match_one_to_one(a[0], a)
    with pytest.raises(InputError, match="NaN"):
        match_one_to_one(a, np.full((2, 4), np.nan, np.float32))
    with pytest.raises(InputError, match="k_candidates"):
        match_one_to_one(a, a, k_candidates=0)


def test_progress_reaches_the_end():
    rng = np.random.default_rng(0)
    a, b = unit(rng.standard_normal((40, 8))), unit(rng.standard_normal((30, 8)))
    calls = []
    match_one_to_one(a, b, dense_limit=0, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (70, 70)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# ---- double counting -------------------------------------------------------------------------


def double_counting_reference(nearest: list[int], n_b: int) -> dict:
    claims = Counter(nearest)
    degree = [claims.get(j, 0) for j in range(n_b)]
    hist = Counter(degree)
    max_deg = max(degree)
    return {
        "n_targets": len(claims),
        "fraction_targeted": len(claims) / n_b,
        "in_degree_counts": [hist.get(c, 0) for c in range(max_deg + 1)],
        "max_in_degree": max_deg,
        "fraction_shared": sum(1 for t in nearest if claims[t] > 1) / len(nearest),
    }


@pytest.mark.parametrize(
    "nearest, n_b",
    [
        ([0, 1, 2, 3], 4),  # a permutation: no sharing
        ([2, 2, 2, 2, 2], 3),  # everyone claims one feature
        ([0, 0, 1, 5, 5, 5, 7], 10),  # mixed, with unclaimed B features
        (list(np.random.default_rng(0).integers(0, 50, size=200)), 50),
        (list(np.random.default_rng(1).integers(0, 500, size=40)), 500),
    ],
)
def test_double_counting_matches_plain_python(nearest, n_b):
    got = double_counting(np.asarray(nearest, np.int64), n_b)
    ref = double_counting_reference([int(x) for x in nearest], n_b)
    assert got.n_targets == ref["n_targets"]
    assert got.fraction_targeted == pytest.approx(ref["fraction_targeted"])
    assert got.in_degree_counts.tolist() == ref["in_degree_counts"]
    assert got.max_in_degree == ref["max_in_degree"]
    assert got.fraction_shared == pytest.approx(ref["fraction_shared"])
    assert got.in_degree_counts.sum() == n_b
    assert (got.in_degree_counts * np.arange(got.in_degree_counts.size)).sum() == len(nearest)


def test_double_counting_rejects_bad_indices():
    with pytest.raises(InputError, match="nearest"):
        double_counting(np.array([0, 3]), 3)
    with pytest.raises(InputError, match="nearest"):
        double_counting(np.array([0.5, 1.0]), 3)
