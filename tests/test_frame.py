"""Frame geometry against closed forms (orthonormal basis, regular simplex) and float64
references on random dictionaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_backend.cache import ArrayCache
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.errors import InputError
from sae_backend.geometry import frame as frame_module
from sae_backend.geometry.frame import effective_rank, frame, welch_bound
from tests.ladders import basis, unit


def dictionary(dec, **kw):
    return Dictionary.from_raw(RawSAE(np.asarray(dec), **kw), source="frame", format="matrix")


def simplex(d: int, seed: int = 0) -> np.ndarray:
    """d + 1 unit vectors in R^d with pairwise cosine -1/d (a regular simplex), rotated."""
    v = np.eye(d + 1) - 1.0 / (d + 1)  # centred vertices: they span a d-dim hyperplane
    _, _, wt = np.linalg.svd(v)
    coords = v @ wt[:d].T  # [d + 1, d]
    return unit(coords) @ basis(d, seed)


def test_orthonormal_basis_closed_forms():
    d = 16
    scale = np.random.default_rng(0).uniform(0.5, 3, (d, 1))
    f = frame(dictionary(basis(d, seed=1) * scale), cache=False)
    assert (f.n_features, f.d_model) == (d, d)
    assert f.coherence == pytest.approx(0.0, abs=1e-6)
    assert f.welch_bound == 0.0
    # float32 unit rows: closed forms hold to float32 rounding (|d_i|^2 = 1 +- 1e-7)
    assert f.frame_potential == pytest.approx(d, rel=1e-6)
    assert f.frame_potential_bound == d
    np.testing.assert_allclose(f.capacity, 1.0, atol=1e-6)
    assert f.capacity_sum == pytest.approx(d, rel=1e-6)
    np.testing.assert_allclose(f.singular_values, 1.0, atol=1e-6)
    assert f.effective_rank == pytest.approx(d, abs=1e-6)
    np.testing.assert_allclose(f.decoder_norms, scale[:, 0], rtol=1e-6)


@pytest.mark.parametrize("d", [2, 3, 7, 20])
def test_simplex_attains_the_welch_bound(d):
    f = frame(dictionary(simplex(d)), cache=False)
    assert f.n_features == d + 1
    assert welch_bound(d + 1, d) == pytest.approx(1 / d, abs=1e-12)
    assert f.coherence == pytest.approx(1 / d, abs=1e-6)
    assert f.welch_bound == pytest.approx(1 / d, abs=1e-12)
    np.testing.assert_allclose(f.max_abs_cos, 1 / d, atol=1e-6)  # equiangular
    np.testing.assert_allclose(f.capacity, d / (d + 1), atol=1e-6)
    assert f.capacity_sum == pytest.approx(d, abs=1e-5)
    assert f.frame_potential == pytest.approx((d + 1) ** 2 / d, abs=1e-5)  # tight frame
    assert f.frame_potential_bound == pytest.approx((d + 1) ** 2 / d)
    np.testing.assert_allclose(f.singular_values, np.sqrt((d + 1) / d), atol=1e-6)
    assert f.effective_rank == pytest.approx(d, abs=1e-5)


def reference(dec):
    """float64 brute force over the alive rows, with the N x N Gram of the rows."""
    alive = np.flatnonzero(np.linalg.norm(dec, axis=1) > 0)
    u = unit(dec)[alive]
    n, d = u.shape
    s = u @ u.T
    off = np.abs(s)
    np.fill_diagonal(off, -np.inf)
    partner = alive[np.argmax(off, axis=1)]
    sv = np.linalg.svd(u, compute_uv=False)
    p = sv[sv > 0] / sv[sv > 0].sum()
    return {
        "feature": alive,
        "max_abs_cos": off.max(axis=1),
        "partner": partner,
        "coherence": off.max(),
        "frame_potential": float((s**2).sum()),
        "capacity": 1.0 / (s**2).sum(axis=1),
        "singular_values": sv[: min(n, d)],
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "welch": np.sqrt(max(0, (n - d) / (d * (n - 1)))),
        "norms": np.linalg.norm(dec, axis=1)[alive],
    }


@pytest.mark.parametrize("n", [5, 12, 300])
def test_random_dictionary_equals_float64_reference(n, monkeypatch):
    monkeypatch.setattr(frame_module, "_ROW_BLOCK", 7)  # several row blocks
    rng = np.random.default_rng(n)
    d = 12
    dec = rng.standard_normal((n, d)) * rng.uniform(0.1, 5, (n, 1))
    dec[-1] = 0.0  # dead
    if n > 10:
        dec[6] = -2.5 * dec[2]  # antiparallel: the coherence (1) comes from the negative side
    f = frame(dictionary(dec), cache=False)
    ref = reference(dec)
    np.testing.assert_array_equal(f.feature, ref["feature"])
    assert f.n_features == len(ref["feature"]) and f.d_model == d
    np.testing.assert_allclose(f.max_abs_cos, ref["max_abs_cos"], atol=1e-5)
    # partners, except where two are tied in exact arithmetic (|cos| with d2 and with d6 = -d2)
    tied = np.isin(ref["partner"], [2, 6]) & (n > 10)
    np.testing.assert_array_equal(f.max_abs_partner[~tied], ref["partner"][~tied])
    assert np.isin(f.max_abs_partner[tied], [2, 6]).all()
    assert f.coherence == pytest.approx(ref["coherence"], abs=1e-5)
    if n > 10:
        assert f.coherence == pytest.approx(1.0, abs=1e-6)
        assert set(f.coherent_pair) == {2, 6}
    # the reference normalises in float64, the dictionary holds float32 unit rows
    assert f.frame_potential == pytest.approx(ref["frame_potential"], rel=1e-6)
    np.testing.assert_allclose(f.capacity, ref["capacity"], rtol=1e-6)
    assert f.capacity_sum <= d * (1 + 1e-6)
    np.testing.assert_allclose(f.singular_values, ref["singular_values"], atol=1e-6)
    assert f.effective_rank == pytest.approx(ref["effective_rank"], rel=1e-6)
    assert f.welch_bound == pytest.approx(ref["welch"], abs=1e-12)
    assert f.frame_potential >= f.frame_potential_bound - 1e-9
    assert f.frame_potential_bound == pytest.approx(max(n - 1, (n - 1) ** 2 / d))
    np.testing.assert_allclose(f.decoder_norms, ref["norms"], rtol=1e-6)


def test_coherence_from_the_negative_side_only():
    """Rows e0, e1 and -.9 e0 + .436 e1: the largest |cos| (.9) is a negative cosine."""
    e = basis(4, seed=2)
    dec = np.stack([e[0], e[1], -0.9 * e[0] + np.sqrt(1 - 0.81) * e[1]])
    f = frame(dictionary(dec), cache=False)
    assert f.coherence == pytest.approx(0.9, abs=1e-6)
    assert f.coherent_pair == (0, 2)
    np.testing.assert_allclose(f.max_abs_cos, [0.9, np.sqrt(0.19), 0.9], atol=1e-6)


def test_max_decoder_cosine_follows_saebench_core_definition():
    """SAEBench core `max_decoder_cosine_sim` (`calculate_max_cosine_sim` on W_dec.T):
    columns unit-normalised, chunks of 100 columns against all, own column set to -inf, max.
    Written here from that definition. It is the signed max; `max_abs_cos` is >= it and equal
    where the nearest neighbour is not antiparallel."""
    rng = np.random.default_rng(3)
    dec = rng.standard_normal((250, 10))
    dec[7] = -dec[100]  # antiparallel pair: |cos| 1, signed max smaller
    cols = torch.nn.functional.normalize(torch.tensor(dec.T), p=2, dim=0)
    saebench = torch.empty(cols.shape[1], dtype=cols.dtype)
    for start in range(0, cols.shape[1], 100):
        sims = cols[:, start : start + 100].T @ cols
        for c in range(start, min(start + 100, cols.shape[1])):
            sims[c - start, c] = -torch.inf
        saebench[start : start + 100] = sims.max(dim=1).values
    f = frame(dictionary(dec), cache=False)
    sb = saebench.numpy()
    assert np.all(f.max_abs_cos >= sb - 1e-6)
    same = np.ones(250, bool)
    same[[7, 100]] = False
    # where the |cos| winner is a positive cosine the two agree
    positive = same & (np.abs(f.max_abs_cos - sb) < 1e-3)
    np.testing.assert_allclose(f.max_abs_cos[positive], sb[positive], atol=1e-6)
    assert f.max_abs_cos[7] == pytest.approx(1.0, abs=1e-6) and sb[7] < 0.99


def test_one_feature_and_effective_rank_of_a_line():
    f = frame(dictionary(np.array([[3.0, 4.0, 0.0]])), cache=False)
    assert f.n_features == 1 and np.isnan(f.coherence) and np.isnan(f.welch_bound)
    assert f.coherent_pair == (-1, -1)
    np.testing.assert_allclose(f.capacity, [1.0])
    assert f.effective_rank == pytest.approx(1.0)
    assert f.frame_potential_bound == 1.0
    assert effective_rank(np.array([2.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)


def test_cached_equals_computed_and_errors(tmp_path):
    rng = np.random.default_rng(9)
    d = dictionary(rng.standard_normal((40, 8)))
    cache = ArrayCache(tmp_path / "c")
    first = frame(d, cache=cache)
    again = frame(d, cache=cache)
    assert cache.stats.hits >= 1
    assert first.to_json() == again.to_json()
    np.testing.assert_array_equal(first.capacity, again.capacity)
    with pytest.raises(InputError, match="no alive"):
        frame(dictionary(np.eye(3), alive=np.zeros(3, bool)), cache=False)
