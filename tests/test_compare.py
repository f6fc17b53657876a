"""compare()/match() on loaded dictionaries against float64 references, with the disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from sae_backend import load
from sae_backend.cache import ArrayCache
from sae_backend.errors import InputError
from sae_backend.geometry.compare import compare, match
from tests.factories import unit_rows, write_saelens


def planted_pair(tmp_path, n=300, d=24, seed=0):
    """A and B = a noisy permutation of A; a few dead features in each (via sparsity files)."""
    rng = np.random.default_rng(seed)
    dec_a = rng.standard_normal((n, d)) * rng.uniform(0.2, 5, (n, 1))
    enc_a = rng.standard_normal((n, d))
    perm = rng.permutation(n)
    dec_b = dec_a[perm] + 0.05 * rng.standard_normal((n, d))
    enc_b = enc_a[perm] + 0.05 * rng.standard_normal((n, d))
    dens_a = rng.uniform(1e-4, 1e-1, n)
    dens_a[[3, 50, 77]] = 0.0  # dead in A
    dens_b = rng.uniform(1e-4, 1e-1, n)
    dens_b[[5, 9]] = 0.0  # dead in B
    a = load(str(write_saelens(tmp_path / "a", dec_a, enc_a, density=dens_a)))
    b = load(str(write_saelens(tmp_path / "b", dec_b, enc_b, density=dens_b)))
    return a, b, dec_a, dec_b, enc_a, enc_b, perm


def reference(x, y, alive_x, alive_y, k, self_mode=False):
    """float64: for each alive row of x, the k best alive rows of y (original indices)."""
    ux, uy = unit_rows(x)[0], unit_rows(y)[0]
    ix, iy = np.flatnonzero(alive_x), np.flatnonzero(alive_y)
    s = ux[ix] @ uy[iy].T
    if self_mode:
        s[np.arange(len(ix)), np.arange(len(ix))] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ix, np.take_along_axis(s, order, 1), iy[order]


@pytest.mark.parametrize("directions", ["decoder", "encoder"])
def test_compare_equals_float64_reference(tmp_path, directions):
    a, b, dec_a, dec_b, enc_a, enc_b, perm = planted_pair(tmp_path)
    x, y = (dec_a, dec_b) if directions == "decoder" else (enc_a, enc_b)
    res = compare(a, b, directions=directions, k=5, cache=False)
    ix, ref_v, ref_i = reference(x, y, a.alive, b.alive, 5)
    np.testing.assert_array_equal(res.a_index, ix)
    np.testing.assert_allclose(res.values, ref_v, atol=1e-5)
    np.testing.assert_array_equal(res.indices, ref_i)
    # the planted permutation: A's feature i sits at B's position where perm == i
    where = np.argsort(perm)
    alive_target = b.alive[where[ix]]
    np.testing.assert_array_equal(res.nearest[alive_target], where[ix][alive_target])
    assert res.n_targets == b.n_alive == 298


def test_self_comparison_excludes_self_and_finds_duplicates(tmp_path):
    rng = np.random.default_rng(1)
    dec = rng.standard_normal((120, 16))
    dec[100:110] = 3.0 * dec[:10]  # scaled duplicates: cosine exactly 1 after normalising
    a = load(str(write_saelens(tmp_path / "a", dec, None)))
    res = compare(a, None, k=3, cache=False)
    ix, ref_v, ref_i = reference(dec, dec, a.alive, a.alive, 3, self_mode=True)
    np.testing.assert_allclose(res.values, ref_v, atol=1e-5)
    # argmax equal up to exact ties (rows 0-9 and 100-109 are duplicates of each other)
    u = unit_rows(dec)[0]
    got = np.einsum("ij,ij->i", u[ix], u[res.indices[:, 0]])
    np.testing.assert_allclose(got, ref_v[:, 0], atol=1e-6)
    tie = np.isclose(ref_v[:, 0], ref_v[:, 1], atol=1e-6)
    np.testing.assert_array_equal(res.indices[~tie, 0], ref_i[~tie, 0])
    assert not np.any(res.indices == res.a_index[:, None])
    np.testing.assert_array_equal(res.nearest[:10], np.arange(100, 110))
    np.testing.assert_allclose(res.max_cos[:10], 1.0, atol=1e-6)
    assert res.is_self and res.n_targets == 119
    dc = res.double_counting(a.n_features)
    assert dc.n_targets == len(np.unique(res.nearest))


def test_summary_numbers(tmp_path):
    a, b, *_ = planted_pair(tmp_path)
    res = compare(a, b, cache=False)
    s = res.summary()
    assert s.mean == pytest.approx(float(np.mean(res.max_cos.astype(np.float64))))
    assert s.above[0.9] == pytest.approx(float((res.max_cos > 0.9).mean()))


def test_match_recovers_permutation_in_feature_indices(tmp_path):
    a, b, *_, perm = planted_pair(tmp_path)
    m = match(a, b)
    where = np.argsort(perm)
    ia = a.alive_index
    both = b.alive[where[ia]]
    np.testing.assert_array_equal(m.b_index[both], where[ia][both])
    assert m.method == "hungarian" and np.all(m.b_index[m.b_index >= 0] < b.n_features)
    # the sparse solver fed the forward comparison equals the one computing it itself
    fwd = compare(a, b, k=10, cache=False)
    reused = match(a, b, forward=fwd, dense_limit=10)
    own = match(a, b, dense_limit=10)
    assert reused.method == own.method == "sparse"
    np.testing.assert_array_equal(reused.b_index, own.b_index)
    assert reused.total == pytest.approx(own.total, abs=1e-9)
    assert own.total <= m.total + 1e-9 <= own.upper_bound + 1e-9


def test_cache_hit_returns_same_arrays(tmp_path):
    a, b, *_ = planted_pair(tmp_path)
    store = ArrayCache(tmp_path / "cache")
    first = compare(a, b, k=4, cache=store)
    second = compare(a, b, k=4, cache=store)
    assert store.stats.misses == 1 and store.stats.hits == 1
    np.testing.assert_array_equal(first.values, second.values)
    np.testing.assert_array_equal(first.indices, second.indices)
    compare(a, b, k=2, cache=store)  # other parameters: another entry
    compare(b, a, k=4, cache=store)  # other direction: another entry
    assert store.stats.misses == 3


def test_bad_inputs(tmp_path):
    a, b, *_ = planted_pair(tmp_path)
    other = load(str(write_saelens(tmp_path / "c", np.eye(8), None)))
    with pytest.raises(InputError, match="d_model 24.*d_model 8"):
        compare(a, other, cache=False)
    with pytest.raises(InputError, match="no encoder"):
        compare(other, None, directions="encoder", cache=False)
    with pytest.raises(InputError, match="k must be between 1 and 100"):
        compare(a, b, k=101, cache=False)
    with pytest.raises(InputError, match="k must be between 1 and 7"):
        compare(other, None, k=8, cache=False)
