"""Blocked exact top-k cosine against an independent float64 reference, on planted data."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sae_backend.geometry.topk import topk_cosine

# The same tests run on a GPU machine with SAE_TEST_DEVICE=cuda (CI has none: CPU by default).
DEVICE = os.environ.get("SAE_TEST_DEVICE", "cpu")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference_topk(a: np.ndarray, b: np.ndarray | None, k: int):
    """float64 dense cosines, self excluded when b is None; returns (values, full matrix)."""
    b_ = a if b is None else b
    s = a.astype(np.float64) @ b_.astype(np.float64).T
    if b is None:
        np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), s


def assert_matches_reference(res, a, b, k, tie_tol=1e-6):
    ref_vals, s = reference_topk(a, b, k)
    np.testing.assert_allclose(res.values, ref_vals, atol=1e-5, rtol=0)
    # every reported value is the true cosine of the reported index
    got = np.take_along_axis(s, res.indices, 1)
    np.testing.assert_allclose(res.values, got, atol=1e-5, rtol=0)
    # argmax identical up to ties: the reported neighbour is (within fp32 noise) a true maximum
    best = s.max(axis=1)
    assert np.all(got[:, 0] >= best - tie_tol)
    # indices distinct within each row, self never reported
    assert all(len(set(r)) == k for r in res.indices.tolist())
    if b is None:
        assert not np.any(res.indices == np.arange(len(a))[:, None])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_random_cross_and_self(precision, k):
    rng = np.random.default_rng(k)
    a = unit(rng.standard_normal((700, 48)))
    b = unit(rng.standard_normal((1000, 48)))  # 1000 is not a multiple of the group size
    for bb in (b, None):
        res = topk_cosine(a, bb, k, device=DEVICE, precision=precision, block_rows=128)
        assert res.values.shape == (700, k) and res.values.dtype == np.float32
        assert_matches_reference(res, a, bb, k)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_planted_permutation_and_duplicates(precision):
    rng = np.random.default_rng(1)
    a = unit(rng.standard_normal((500, 64)))
    perm = rng.permutation(500)
    b = a[perm].copy()
    res = topk_cosine(a, b, 3, device=DEVICE, precision=precision)
    # each feature of A finds its own copy in B at cosine 1
    np.testing.assert_array_equal(perm[res.indices[:, 0]], np.arange(500))
    np.testing.assert_allclose(res.values[:, 0], 1.0, atol=1e-6)
    assert_matches_reference(res, a, b, 3)
    # within one dictionary with exact duplicates: the duplicate is the nearest (self excluded),
    # and exact ties (two copies) come out lowest index first
    c = np.concatenate([a[:50], a[:50], a[50:100]])
    res = topk_cosine(c, None, 2, device=DEVICE, precision=precision)
    np.testing.assert_array_equal(res.indices[:50, 0], np.arange(50, 100))
    np.testing.assert_array_equal(res.indices[50:100, 0], np.arange(50))
    np.testing.assert_allclose(res.values[:100, 0], 1.0, atol=1e-6)
    assert_matches_reference(res, c, None, 2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_ties_break_to_lower_index(precision):
    rng = np.random.default_rng(2)
    a = unit(rng.standard_normal((20, 32)))
    b = np.repeat(unit(rng.standard_normal((30, 32))), 3, axis=0)  # every target three times
    res = topk_cosine(a, b, 3, device=DEVICE, precision=precision)
    # the three copies of the best target, in index order
    first = res.indices[:, 0]
    assert np.all(first % 3 == 0)
    np.testing.assert_array_equal(res.indices, first[:, None] + np.arange(3))
    assert_matches_reference(res, a, b, 3)


def test_bf16_near_duplicates_fall_back_and_stay_exact():
    """Dense clusters: hundreds of targets within the bf16 error of the best one.

    The shortlist cannot hold them all, so those rows must take the exact fallback, and
    the answer must still be the float64 one (including the order inside the cluster).
    """
    rng = np.random.default_rng(3)
    centre = rng.standard_normal((4, 96))
    b = unit(np.repeat(centre, 300, axis=0) + 1e-3 * rng.standard_normal((1200, 96)))
    a = unit(centre + 1e-3 * rng.standard_normal((4, 96)))
    a = np.concatenate([a, unit(rng.standard_normal((60, 96)))])
    info: dict = {}
    res = topk_cosine(a, b, 10, device=DEVICE, precision="bf16", info=info)
    assert info["path"] == "bf16" and info["fallback_rows"] >= 4
    assert_matches_reference(res, a, b, 10, tie_tol=1e-6)


def test_zero_rows_and_progress():
    rng = np.random.default_rng(4)
    b = unit(rng.standard_normal((300, 16)))
    b[::7] = 0.0  # dead features are zero rows: cosine 0, never NaN
    a = unit(rng.standard_normal((90, 16)))
    calls = []
    res = topk_cosine(
        a,
        b,
        4,
        device=DEVICE,
        precision="bf16",
        block_rows=32,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert not np.isnan(res.values).any()
    assert_matches_reference(res, a, b, 4)
    assert calls == [(32, 90), (64, 90), (90, 90)]


def test_k_out_of_range():
    a = unit(np.random.default_rng(5).standard_normal((10, 8)))
    with pytest.raises(ValueError, match="k=10"):
        topk_cosine(a, None, 10)
    with pytest.raises(ValueError, match="do not share d"):
        topk_cosine(a, a[:, :4], 1)


def test_bf16_moderate_clusters_are_rescored_without_fallback():
    """Clusters of 40 near-duplicates: far more candidates than k, fewer than the fallback
    limit, so the re-scoring table itself must carry them all, exactly."""
    rng = np.random.default_rng(6)
    centre = rng.standard_normal((6, 64))
    b = unit(np.repeat(centre, 40, axis=0) + 2e-3 * rng.standard_normal((240, 64)))
    b = np.concatenate([b, unit(rng.standard_normal((2000, 64)))])
    a = unit(centre + 2e-3 * rng.standard_normal((6, 64)))
    info: dict = {}
    res = topk_cosine(a, b, 10, device=DEVICE, precision="bf16", info=info)
    assert info["fallback_rows"] == 0
    assert_matches_reference(res, a, b, 10)
    # every neighbour of a cluster centre is one of its own 40 copies
    assert np.all(res.indices // 40 == np.arange(6)[:, None])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero_rows_of_a_tie_everywhere_and_take_the_lowest_indices(precision):
    """A dead feature of A scores 0 against all of B: a tie far wider than k, still broken
    towards the lowest indices (own index skipped in a self comparison)."""
    rng = np.random.default_rng(7)
    a = unit(rng.standard_normal((40, 16)))
    a[[0, 3, 25]] = 0.0
    b = unit(rng.standard_normal((300, 16)))
    res = topk_cosine(a, b, 5, device=DEVICE, precision=precision)
    np.testing.assert_array_equal(res.indices[[0, 3, 25]], np.tile(np.arange(5), (3, 1)))
    np.testing.assert_array_equal(res.values[[0, 3, 25]], 0.0)
    res = topk_cosine(a, None, 5, device=DEVICE, precision=precision)
    np.testing.assert_array_equal(res.indices[0], [1, 2, 3, 4, 5])  # each skips itself
    np.testing.assert_array_equal(res.indices[3], [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(res.values[[0, 3]], 0.0)
    assert_matches_reference(res, a, None, 5)
