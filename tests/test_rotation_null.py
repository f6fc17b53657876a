"""The rotation null: Haar-random orthogonal matrices, B's geometry kept, values equal to a
float64 reference with the same rotation."""

from __future__ import annotations

import numpy as np
import pytest

from sae_backend.cache import ArrayCache
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.errors import InputError
from sae_backend.geometry.compare import compare
from sae_backend.geometry.rotation import haar_orthogonal, rotation_null
from sae_backend.geometry.stats import random_null
from tests.ladders import unit


def dictionary(dec, enc=None, name="x"):
    return Dictionary.from_raw(RawSAE(np.asarray(dec), enc), source=name, format="matrix")


def test_haar_orthogonal_is_orthogonal_and_haar():
    """For Haar Q on O(d), tr(Q) has mean 0 and variance 1 (Diaconis & Shahshahani); the
    unfixed QR of a Gaussian (numpy's Householder signs) fails the same check."""
    rng = np.random.default_rng(0)
    q = haar_orthogonal(7, rng)
    np.testing.assert_allclose(q @ q.T, np.eye(7), atol=1e-12)
    d, n = 4, 4000
    traces = np.array([np.trace(haar_orthogonal(d, rng)) for _ in range(n)])
    se = 1 / np.sqrt(n)
    assert abs(traces.mean()) < 4 * se
    assert abs(traces.var() - 1) < 0.1
    unfixed = np.array([np.trace(np.linalg.qr(rng.standard_normal((d, d)))[0]) for _ in range(n)])
    assert abs(unfixed.mean()) > 10 * se or abs(unfixed.var() - 1) > 0.3
    # seeded: the same matrix from the same seed
    np.testing.assert_array_equal(
        haar_orthogonal(5, np.random.default_rng(3)), haar_orthogonal(5, np.random.default_rng(3))
    )


@pytest.mark.parametrize(("directions", "k"), [("decoder", 1), ("encoder", 3)])
def test_equals_float64_reference_with_the_same_rotation(directions, k):
    rng = np.random.default_rng(1)
    d = 16
    a_dec, a_enc = rng.standard_normal((70, d)), rng.standard_normal((70, d))
    b_dec, b_enc = rng.standard_normal((90, d)), rng.standard_normal((90, d))
    a_dec[[3, 9]] = 0.0  # dead in A
    b_dec[[0]] = 0.0  # dead in B
    a, b = dictionary(a_dec, a_enc, "a"), dictionary(b_dec, b_enc, "b")
    got = rotation_null(a, b, directions=directions, k=k, seed=7, cache=False)
    q = haar_orthogonal(d, np.random.default_rng(7))
    x = unit(a_enc if directions == "encoder" else a_dec)[a.alive_index]
    y = unit(b_enc if directions == "encoder" else b_dec)[b.alive_index] @ q
    ref = -np.sort(-(x @ y.T), axis=1)[:, k - 1]
    assert got.shape == (68,) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-5
    # B Q keeps B's Gram matrix: the rotation changes alignment only
    yb = unit(b_dec)[b.alive_index]
    np.testing.assert_allclose((yb @ q) @ (yb @ q).T, yb @ yb.T, atol=1e-12)


def test_rotation_removes_alignment_and_keeps_anisotropy():
    """B = A plus small noise: observed max cos near 1, the rotation null far below it.
    B crowded into a narrow cone: against it, random-looking A finds smaller maxima than
    against isotropic directions (the isotropic null overstates chance for such a B)."""
    rng = np.random.default_rng(2)
    d = 24
    a_rows = rng.standard_normal((200, d))
    a = dictionary(a_rows, name="a")
    b = dictionary(a_rows + 0.05 * rng.standard_normal((200, d)), name="b")
    observed = compare(a, b, cache=False).max_cos
    null = rotation_null(a, b, seed=0, cache=False)
    assert observed.mean() > 0.99 and null.mean() < 0.7
    u = rng.standard_normal(d)
    cone = dictionary(
        u + 0.15 * np.linalg.norm(u) * unit(rng.standard_normal((200, d))), name="cone"
    )
    iso = random_null(200, 200, d, seed=0, cache=False)
    rot = rotation_null(a, cone, seed=0, cache=False)
    assert rot.mean() < iso.mean() - 0.1


def test_seeded_cached_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    a, b = (
        dictionary(rng.standard_normal((30, 8)), name="a"),
        dictionary(rng.standard_normal((40, 8)), name="b"),
    )
    cache = ArrayCache(tmp_path / "c")
    first = rotation_null(a, b, seed=1, cache=cache)
    np.testing.assert_array_equal(rotation_null(a, b, seed=1, cache=cache), first)
    assert cache.stats.hits == 1
    other = rotation_null(a, b, seed=2, cache=cache)
    assert not np.array_equal(other, first) and cache.stats.misses == 2
    with pytest.raises(InputError, match="d_model"):
        rotation_null(a, dictionary(np.eye(5)), cache=False)
    with pytest.raises(InputError, match="k must be between 1 and 40"):
        rotation_null(a, b, k=41, cache=False)
    with pytest.raises(InputError, match="no encoder"):
        rotation_null(a, b, directions="encoder", cache=False)
