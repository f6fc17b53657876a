"""The certified sparse matching against scipy's dense float64 `linear_sum_assignment`, the
certificate against an independent dense float64 check, and the decoy that a top-k graph
misses (so certification has to add pairs and re-solve)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sae_backend.geometry import lap
from sae_backend.geometry import topk as topk_module
from sae_backend.geometry.certificate import Checker, Memory, engine_error, gamma
from sae_backend.geometry.matching import match_one_to_one
from sae_backend.geometry.topk import topk_cosine


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1)).astype(np.float32)


def cos64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ b.astype(np.float64).T


def dense_optimum(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """scipy's exact optimum on float64 and its assignment as b_index [n_a] (-1 unmatched)."""
    c = cos64(a, b)
    r, col = linear_sum_assignment(c, maximize=True)
    b_index = np.full(a.shape[0], -1, np.int64)
    b_index[r] = col
    return math.fsum(c[r, col].tolist()), b_index


def assert_certificate(m, a: np.ndarray, b: np.ndarray) -> None:
    """Independent float64 check of every reduced cost, the bound and the objective."""
    c = cos64(a, b)
    u, v = m.potentials_a, m.potentials_b
    assert u.shape == (a.shape[0],) and v.shape == (b.shape[0],)
    larger = v if b.shape[0] >= a.shape[0] else u
    assert np.all(larger >= 0)  # the sign constraint of the larger side
    excess = np.maximum((c - v[None, :]).max(axis=1) - u, 0)  # exact, per row
    bound = math.fsum(u.tolist()) + math.fsum(v.tolist()) + math.fsum(excess.tolist())
    assert m.bound >= bound - 1e-9  # the reported bound is at least the exact dual bound
    opt, _ = dense_optimum(a, b)
    assert bound >= opt - 1e-9  # weak duality, checked independently
    matched = np.flatnonzero(m.b_index >= 0)
    objective = math.fsum(c[matched, m.b_index[matched]].tolist())
    assert m.total == pytest.approx(objective, abs=1e-9)
    if m.certified:
        assert excess.max() <= 1e-9  # feasible over all pairs, up to the tolerance
        assert bound - objective <= m.tolerance + 1e-9


def noisy_permutation(n: int, d: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = unit(rng.standard_normal((n, d)))
    b = unit(a[rng.permutation(n)] + noise * rng.standard_normal((n, d)))
    return a, b


def decoy_blocks(n_blocks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of 3 rows and 3 columns whose optimum uses a pair outside every row's top-2.

    Cosines (x0.8): r1: c1 .9, c3 .8;  r2: c2 .9, c1 .1;  r3: c1 .7, c2 .68, c3 .65.
    Top-2 graph: r1 {c1, c3}, r2 {c2, c1}, r3 {c1, c2}: its best full matching is
    r1c3 + r2c2 + r3c1 = 2.4, the optimum r1c1 + r2c2 + r3c3 = 2.45 uses r3c3 (r3's third).
    A rows are basis vectors; each B row gets the rest of its unit norm in one shared extra
    dimension (A is zero there), so cos(a, b) is exactly the table. Rows and columns are
    shuffled and the space rotated.
    """
    block = 0.8 * np.array([[0.9, 0.0, 0.8], [0.1, 0.9, 0.0], [0.7, 0.68, 0.65]])
    n = 3 * n_blocks
    a = np.zeros((n, n + 1))
    a[:, :n] = np.eye(n)
    b = np.zeros((n, n + 1))
    for k in range(n_blocks):
        s = slice(3 * k, 3 * k + 3)
        b[s, s] = block.T  # column j of the block is B row j
    b[:, n] = np.sqrt(1 - (b[:, :n] ** 2).sum(axis=1))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n + 1, n + 1)))
    return unit((a @ q)[rng.permutation(n)]), unit((b @ q)[rng.permutation(n)])


def planted_cases():
    rng = np.random.default_rng(0)
    yield "noisy-permutation", *noisy_permutation(300, 24, 0.2, 1)
    yield "random", unit(rng.standard_normal((250, 16))), unit(rng.standard_normal((250, 16)))
    a, b = noisy_permutation(240, 20, 0.1, 2)
    yield "unequal-wide", a[:180], b
    yield "unequal-tall", a, b[:170]
    # near ties: B holds pairs of almost identical rows, so which copy wins is a 1e-4 matter
    base = unit(rng.standard_normal((100, 16)))
    twins = unit(np.concatenate([base, base + 1e-4 * rng.standard_normal(base.shape)]))
    yield "near-ties", unit(base + 0.05 * rng.standard_normal(base.shape)), twins
    # dead features: zero rows on both sides (cosine 0 with everything)
    a, b = noisy_permutation(200, 16, 0.1, 3)
    a[rng.choice(200, 15, replace=False)] = 0
    b[rng.choice(200, 25, replace=False)] = 0
    yield "dead", a, b
    yield "decoys", *decoy_blocks(60, 4)
    # medium: half of B a noisy permutation of A, half fresh random rows (the hard half, where
    # top-k graphs miss the optimum), plus decoy blocks in their own dimensions
    a, b = noisy_permutation(1400, 48, 0.3, 6)
    b[700:] = unit(rng.standard_normal((700, 48)))
    da, db = decoy_blocks(100, 7)
    a2 = np.zeros((1700, 48 + 301), np.float32)
    b2 = np.zeros((1700, 48 + 301), np.float32)
    a2[:1400, :48], b2[:1400, :48] = a, b
    a2[1400:, 48:], b2[1400:, 48:] = da, db
    yield "medium", a2, b2[rng.permutation(1700)]


CASES = list(planted_cases())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_certified_equals_dense_float64_optimum(case):
    name, a, b = case
    opt, ref = dense_optimum(a, b)
    m = match_one_to_one(a, b, dense_limit=0, k_candidates=2)
    assert m.method == "sparse" and m.certified
    assert m.n_matched == min(a.shape[0], b.shape[0])
    assert m.total == pytest.approx(opt, abs=1e-6 * m.n_matched)
    assert_certificate(m, a, b)
    if name != "dead":  # zero rows tie with each other exactly; elsewhere the optimum is unique
        np.testing.assert_array_equal(m.b_index, ref)


def test_exact_ties_give_an_optimal_assignment():
    """B = two exact copies of each of A's rows: many optimal assignments, one objective."""
    a, _ = noisy_permutation(80, 12, 0.0, 5)
    b = np.concatenate([a, a])[np.random.default_rng(5).permutation(160)]
    opt, _ = dense_optimum(a, b)
    m = match_one_to_one(a, b, dense_limit=0, k_candidates=1)
    assert m.certified and m.total == pytest.approx(opt, abs=1e-9)
    assert len(set(m.b_index.tolist())) == 80
    assert_certificate(m, a, b)


def test_decoys_make_the_candidate_graph_miss_the_optimum():
    a, b = decoy_blocks(40, 6)
    opt, _ = dense_optimum(a, b)
    c = cos64(a, b)
    top2 = np.zeros(c.shape, bool)  # the first candidate graph: each row's top-2
    top2[np.arange(a.shape[0])[:, None], np.argsort(-c, axis=1)[:, :2]] = True
    r, j = linear_sum_assignment(np.where(top2, c, -1e3), maximize=True)
    assert top2[r, j].all()  # it has a full matching ...
    assert c[r, j].sum() == pytest.approx(opt - 0.04 * 40, abs=1e-5)  # ... 0.05 x 0.8 short
    m = match_one_to_one(a, b, dense_limit=0, k_candidates=2)
    assert m.certified and m.rounds >= 2 and m.total == pytest.approx(opt, abs=1e-9)
    assert m.n_candidates > a.shape[0] * 2  # the check added the missing pairs


def test_without_the_re_solve_the_certificate_fails(monkeypatch):
    """Take the re-solve away (the solver keeps its first answer): the check must refuse."""
    original = lap.solve

    def first_answer_only(indptr, indices, weights, n_cols, state=None):
        return state if state is not None else original(indptr, indices, weights, n_cols)

    monkeypatch.setattr(lap, "solve", first_answer_only)
    a, b = decoy_blocks(40, 6)
    opt, _ = dense_optimum(a, b)
    m = match_one_to_one(a, b, dense_limit=0, k_candidates=2)
    assert m.total < opt - 1.0
    assert not m.certified
    assert m.bound >= opt - 1e-9  # still a rigorous bound
    assert_certificate(m, a, b)


def test_max_rounds_one_is_not_certified_on_decoys():
    a, b = decoy_blocks(30, 7)
    m = match_one_to_one(a, b, dense_limit=0, k_candidates=2, max_rounds=1)
    assert not m.certified and m.rounds == 1
    assert_certificate(m, a, b)


@pytest.mark.parametrize("seed", range(4))
def test_check_bounds_every_row_for_arbitrary_duals(seed):
    """Whatever the duals (including ones far from optimal, over several rounds with the
    remembered bounds), every row's excess is >= its exact float64 value."""
    rng = np.random.default_rng(seed)
    a = unit(rng.standard_normal((300, 24)))
    b = unit(rng.standard_normal((340, 24)))
    b[:5] = 0  # dead rows
    c = cos64(a, b)
    fwd = topk_cosine(a, b, 4)
    checker = Checker(a, b, Memory.from_topk(fwd.values[:, -1], 24, 340), k=3)
    graph = np.zeros(c.shape, bool)
    graph[np.repeat(np.arange(300), 4), fwd.indices.ravel()] = True
    for _ in range(4):
        v = rng.uniform(-0.3, 0.6, 340) * (rng.random(340) < 0.7)
        u = rng.uniform(-0.2, 0.8, 300)
        gmax = np.where(graph, c - v, -np.inf).max(axis=1)
        chk = checker.check(u, v, gmax, 1e-9)
        exact = np.maximum((c - v).max(axis=1) - u, 0)
        assert np.all(chk.excess >= exact - 1e-12)
        graph[chk.new_rows, chk.new_cols] = True
        np.testing.assert_allclose(chk.new_cos, c[chk.new_rows, chk.new_cols], atol=1e-12)


def test_engine_contract_the_certificate_relies_on():
    """Values within gamma_d of float64; every pair left out <= the k-th value + the error."""
    rng = np.random.default_rng(3)
    a, b = unit(rng.standard_normal((300, 770))), unit(rng.standard_normal((400, 770)))
    b[:200] = unit(a[:200] + 0.01 * rng.standard_normal((200, 770)))
    c = cos64(a, b)
    res = topk_cosine(a, b, 5)
    listed = np.take_along_axis(c, res.indices, 1)
    assert np.abs(res.values - listed).max() <= gamma(770)
    rest = c.copy()
    np.put_along_axis(rest, res.indices, -np.inf, 1)
    assert np.all(rest.max(axis=1) <= res.values[:, -1] + engine_error(770))


def test_lap_warm_restart_equals_a_cold_solve():
    rng = np.random.default_rng(9)
    c = rng.standard_normal((40, 55))
    full = np.ones(c.shape, bool)
    part = rng.random(c.shape) < 0.2
    part[np.arange(40), rng.permutation(55)[:40]] = True

    def csr(mask):
        r, j = np.nonzero(mask)
        return np.searchsorted(r, np.arange(41)), j, c[r, j]

    warm = lap.solve(*csr(full), 55, lap.solve(*csr(part), 55))
    cold = lap.solve(*csr(full), 55)
    r, j = linear_sum_assignment(c, maximize=True)
    for s in (warm, cold):
        assert c[np.arange(40), s.row_col].sum() == pytest.approx(c[r, j].sum(), abs=1e-12)
        u, v = s.duals()
        assert np.all(u[:, None] + v[None, :] >= c - 1e-12) and np.all(v >= 0)
        assert u.sum() + v.sum() == pytest.approx(c[r, j].sum(), abs=1e-9)


def test_forward_pass_is_reused(monkeypatch):
    a, b = noisy_permutation(200, 16, 0.1, 8)
    fwd = topk_cosine(a, b, 5)
    calls = []
    real = topk_module.topk_cosine  # matching imports it where it computes: patched there too

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(topk_module, "topk_cosine", counting)
    m = match_one_to_one(a, b, dense_limit=0, k_candidates=5, forward=fwd)
    assert calls == [] and m.certified
