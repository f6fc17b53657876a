"""Summary statistics, encoder/decoder cosines, the random null and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from sae_backend.errors import InputError
from sae_backend.geometry import stats as gstats
from sae_backend.geometry.stats import (
    bootstrap_mean_difference,
    encoder_decoder_cosine,
    random_null,
    random_unit_rows,
    summarize,
)

# ---- summarize -------------------------------------------------------------------------------


def test_summarize_matches_plain_python():
    rng = np.random.default_rng(0)
    v = rng.uniform(-0.2, 1.0, size=501).astype(np.float32)
    s = summarize(v, thresholds=(0.5, 0.7, 0.9, 0.25))
    ref = [float(x) for x in v]
    n = len(ref)
    mean = sum(ref) / n
    assert s.n == n and s.n_nan == 0
    assert s.mean == pytest.approx(mean, abs=1e-12)
    assert s.median == pytest.approx(sorted(ref)[n // 2], abs=1e-12)  # n odd
    assert s.std == pytest.approx((sum((x - mean) ** 2 for x in ref) / n) ** 0.5, abs=1e-12)
    for t in (0.5, 0.7, 0.9, 0.25):
        assert s.above[t] == pytest.approx(sum(x > t for x in ref) / n, abs=1e-15)


def test_summarize_planted_values_and_nans():
    v = np.array([0.95, 0.95, 0.8, 0.6, 0.5, 0.1, np.nan, np.nan])
    s = summarize(v)
    assert (s.n, s.n_nan) == (6, 2)
    assert s.mean == pytest.approx(3.9 / 6)
    assert s.median == pytest.approx(0.7)
    assert s.above == {0.5: pytest.approx(4 / 6), 0.7: pytest.approx(3 / 6), 0.9: 2 / 6}
    empty = summarize(np.array([np.nan]))
    assert empty.n == 0 and np.isnan(empty.mean) and np.isnan(empty.above[0.5])
    with pytest.raises(InputError, match="Inf"):
        summarize(np.array([0.1, np.inf]))
    with pytest.raises(InputError, match="1-D"):
        summarize(np.zeros((2, 2)))


# ---- encoder/decoder cosine ------------------------------------------------------------------


def test_encoder_decoder_cosine_planted(monkeypatch):
    monkeypatch.setattr(gstats, "_ROW_BLOCK", 3)  # exercise the block loop
    rng = np.random.default_rng(1)
    dec = rng.standard_normal((8, 5))
    enc = rng.standard_normal((8, 5))
    enc[0] = 3.0 * dec[0]  # same direction, scaled: +1
    enc[1] = -0.5 * dec[1]  # opposite: -1
    enc[2] = 0.0  # dead encoder row: 0, not NaN
    dec[3] = 0.0  # dead decoder row: 0, not NaN
    enc[4] = np.array([1.0, 0, 0, 0, 0])
    dec[4] = np.array([0, 2.0, 0, 0, 0])  # orthogonal: 0
    got = encoder_decoder_cosine(enc.astype(np.float32), dec.astype(np.float32))
    e64, d64 = enc.astype(np.float32).astype(np.float64), dec.astype(np.float32).astype(np.float64)
    ref = [
        float(e @ d / (np.linalg.norm(e) * np.linalg.norm(d))) if e.any() and d.any() else 0.0
        for e, d in zip(e64, d64, strict=True)
    ]
    assert got.dtype == np.float32 and got.shape == (8,)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(got[:5], [1.0, -1.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert not np.isnan(got).any()


def test_encoder_decoder_cosine_rejects_mismatch():
    with pytest.raises(InputError, match="same shape"):
        encoder_decoder_cosine(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(InputError, match="NaN"):
        encoder_decoder_cosine(np.full((2, 2), np.nan), np.ones((2, 2)))


# ---- random null -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_b", [None, 37])
@pytest.mark.parametrize("k", [1, 3])
def test_random_null_equals_dense_float64_reference(n_b, k):
    n_a, d, seed = 50, 12, 4
    got = random_null(n_a, n_b, d, k=k, seed=seed)
    rng = np.random.default_rng(seed)
    a = random_unit_rows(n_a, d, rng).astype(np.float64)
    b = a if n_b is None else random_unit_rows(n_b, d, rng).astype(np.float64)
    cos = a @ b.T
    if n_b is None:
        np.fill_diagonal(cos, -np.inf)
    ref = -np.sort(-cos, axis=1)[:, k - 1]
    assert got.shape == (n_a,) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_array_equal(got, random_null(n_a, n_b, d, k=k, seed=seed))
    assert not np.array_equal(got, random_null(n_a, n_b, d, k=k, seed=seed + 1))


def test_random_unit_rows_are_unit_and_isotropic():
    x = random_unit_rows(4000, 6, np.random.default_rng(0)).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.05)  # sd of each mean ~ 0.0065
    np.testing.assert_allclose(x.T @ x / len(x), np.eye(6) / 6, atol=0.02)


def expected_kth_max_cosine(n: int, d: int, k: int) -> float:
    """E[k-th largest of n cosines between a fixed and n random unit vectors in R^d].

    (1 + cos) / 2 ~ Beta((d-1)/2, (d-1)/2); the k-th largest is <= t iff fewer than k of the n
    exceed t, so E = 1 - integral_{-1}^{1} P(k-th largest <= t) dt.
    """
    beta = stats.beta((d - 1) / 2, (d - 1) / 2)

    def cdf_kth(t: float) -> float:
        return stats.binom.cdf(k - 1, n, beta.sf((1 + t) / 2))

    return 1.0 - integrate.quad(cdf_kth, -1, 1, limit=200)[0]


@pytest.mark.parametrize(("n_b", "k"), [(None, 1), (300, 1), (300, 2)])
def test_random_null_mean_matches_theory(n_b, k):
    n_a, d = 3000, 24
    got = random_null(n_a, n_b, d, k=k, seed=0)
    n_others = n_a - 1 if n_b is None else n_b
    assert got.mean() == pytest.approx(expected_kth_max_cosine(n_others, d, k), abs=0.006)


def test_random_null_rejects_bad_sizes():
    with pytest.raises(InputError, match="k="):
        random_null(5, None, 3, k=5)
    with pytest.raises(InputError, match="n_a"):
        random_null(0, 3, 3)


# ---- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_interval_covers_known_difference():
    """Over many synthetic data sets, the 90% interval contains the true difference ~90%."""
    rng = np.random.default_rng(0)
    hits, reps = 0, 300
    for r in range(reps):
        x = rng.normal(0.6, 0.1, size=80)
        y = rng.normal(0.5, 0.2, size=120)
        diff, low, high = bootstrap_mean_difference(x, y, n_boot=400, seed=r, alpha=0.1)
        assert low <= diff <= high
        assert diff == pytest.approx(x.mean() - y.mean(), abs=1e-12)
        hits += low <= 0.1 <= high
    assert 0.82 <= hits / reps <= 0.96  # binomial sd ~ 0.017 around 0.9


def test_bootstrap_width_and_decisions():
    rng = np.random.default_rng(1)
    x = rng.normal(0.70, 0.1, size=2000)
    y = rng.normal(0.65, 0.1, size=3000)
    diff, low, high = bootstrap_mean_difference(x, y, seed=3)
    se = np.sqrt(x.var() / x.size + y.var() / y.size)
    assert high - low == pytest.approx(2 * stats.norm.ppf(0.975) * se, rel=0.12)
    assert low > 0  # a large difference: the interval excludes 0
    same = rng.normal(0.5, 0.1, size=500)
    _, low0, high0 = bootstrap_mean_difference(same, same, seed=3)
    assert low0 < 0 < high0  # no difference: it includes 0
    assert bootstrap_mean_difference(x, y, seed=3) == (diff, low, high)


def test_bootstrap_chunking_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=50), rng.normal(size=70)
    whole = bootstrap_mean_difference(x, y, n_boot=300, seed=9)
    monkeypatch.setattr(gstats, "_BOOT_ELEMENTS", 128)  # a few resamples per chunk
    assert bootstrap_mean_difference(x, y, n_boot=300, seed=9) == pytest.approx(whole)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(InputError, match="NaN"):
        bootstrap_mean_difference(np.array([0.1, np.nan]), np.ones(3))
    with pytest.raises(InputError, match="non-empty"):
        bootstrap_mean_difference(np.array([]), np.ones(3))
    with pytest.raises(InputError, match="alpha"):
        bootstrap_mean_difference(np.ones(3), np.ones(3), alpha=1.5)
