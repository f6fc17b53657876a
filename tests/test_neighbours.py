"""feature_neighbours (one feature's top-k) and the toy demo, against float64 references."""

from __future__ import annotations

import numpy as np
import pytest

from sae_backend import load
from sae_backend.demo import N_DEAD, toy_matrices, toy_sources
from sae_backend.errors import InputError
from sae_backend.geometry.compare import compare
from sae_backend.geometry.neighbours import feature_neighbours
from tests.factories import unit_rows, write_saelens


def planted(tmp_path, n=200, d=16, seed=0):
    """A (scaled rows, two dead) and B = noisy permutation of A plus a duplicate row."""
    rng = np.random.default_rng(seed)
    dec_a = rng.standard_normal((n, d)) * rng.uniform(0.2, 5, (n, 1))
    enc_a = rng.standard_normal((n, d))
    dec_a[7] = 3.0 * dec_a[4]  # a scaled duplicate: cosine exactly 1 with feature 4
    perm = rng.permutation(n)
    dec_b = dec_a[perm] + 0.05 * rng.standard_normal((n, d))
    enc_b = enc_a[perm] + 0.05 * rng.standard_normal((n, d))
    dens_a = rng.uniform(1e-4, 1e-1, n)
    dens_a[[3, 50]] = 0.0
    a = load(str(write_saelens(tmp_path / "a", dec_a, enc_a, density=dens_a)))
    b = load(str(write_saelens(tmp_path / "b", dec_b, enc_b)))
    return a, b, (dec_a, enc_a, dens_a > 0), (dec_b, enc_b, np.ones(n, bool)), perm


def reference(i, x, y, alive_y, k, exclude_self):
    """float64: (indices, cosines) of the k best alive rows of y for row i of x, stable ties."""
    ux, uy = unit_rows(x)[0], unit_rows(y)[0]
    cand = np.flatnonzero(alive_y)
    if exclude_self:
        cand = cand[cand != i]
    s = uy[cand] @ ux[i]
    order = np.argsort(-s, kind="stable")[:k]
    return cand[order], s[order]


@pytest.mark.parametrize("feature", [0, 4, 50, 199])
def test_neighbours_within_and_across_match_float64(tmp_path, feature):
    a, b, (dec_a, enc_a, alive_a), (dec_b, enc_b, alive_b), _ = planted(tmp_path)
    for other, (dec_o, enc_o, alive_o), self_mode in (
        (None, (dec_a, enc_a, alive_a), True),
        (b, (dec_b, enc_b, alive_b), False),
    ):
        nb = feature_neighbours(a, feature, other, k=12)
        idx, cos = reference(feature, dec_a, dec_o, alive_o, 12, self_mode)
        np.testing.assert_allclose(nb.cosine, cos, atol=1e-5)
        # Same neighbours (order may differ only between cosines tied within float32 rounding).
        np.testing.assert_allclose(unit_rows(dec_o)[0][nb.index] @ unit_rows(dec_a)[0][feature],
                                   cos, atol=1e-5)  # fmt: skip
        assert feature not in nb.index or not self_mode
        assert alive_o[nb.index].all()
        ue, ueo = unit_rows(enc_a)[0][feature], unit_rows(enc_o)[0]
        np.testing.assert_allclose(nb.encoder, ueo[nb.index] @ ue, atol=1e-5)
        np.testing.assert_allclose(nb.decoder, nb.cosine, atol=1e-6)


def test_encoder_ranking_and_planted_duplicate(tmp_path):
    a, b, (dec_a, enc_a, alive_a), (dec_b, enc_b, _), perm = planted(tmp_path)
    nb = feature_neighbours(a, 4, k=3)
    assert nb.index[0] == 7 and nb.cosine[0] == pytest.approx(1.0, abs=1e-6)
    # Across: the nearest B feature of A's feature f is where the permutation put it.
    f = 11
    across = feature_neighbours(a, f, b, k=5)
    assert perm[across.index[0]] == f
    enc = feature_neighbours(a, f, b, k=5, directions="encoder")
    idx, cos = reference(f, enc_a, enc_b, np.ones(len(enc_b), bool), 5, False)
    np.testing.assert_array_equal(enc.index, idx)
    np.testing.assert_allclose(enc.cosine, cos, atol=1e-5)
    np.testing.assert_allclose(enc.decoder, unit_rows(dec_b)[0][idx] @ unit_rows(dec_a)[0][f],
                               atol=1e-5)  # fmt: skip


def test_agrees_with_compare(tmp_path):
    a, b, *_ = planted(tmp_path)
    res = compare(a, b, k=10, cache=False)
    for row in (0, 20, 150):
        f = int(res.a_index[row])
        nb = feature_neighbours(a, f, b, k=10)
        np.testing.assert_allclose(nb.cosine, res.values[row], atol=1e-6)


def test_bad_input(tmp_path):
    a, b, *_ = planted(tmp_path)
    with pytest.raises(InputError, match="out of range"):
        feature_neighbours(a, 200, b)
    with pytest.raises(InputError, match="out of range"):
        feature_neighbours(a, -1)
    with pytest.raises(InputError, match="whole number"):
        feature_neighbours(a, "x")
    rng = np.random.default_rng(1)
    c = load(str(write_saelens(tmp_path / "c", rng.standard_normal((30, 8)), None)))
    with pytest.raises(InputError, match="d_model"):
        feature_neighbours(a, 0, c)
    with pytest.raises(InputError, match="no encoder"):
        feature_neighbours(c, 0, directions="encoder")
    assert feature_neighbours(c, 0, k=500).index.size == 29  # capped at the candidates


def test_demo_is_deterministic_and_planted(tmp_path):
    src = toy_sources()
    assert list(src) == ["toy-a", "toy-b", "toy-a-seed2"]
    assert toy_sources() == src  # second call reuses the files
    ds = {name: load(path) for name, path in src.items()}
    ref = toy_matrices()
    for name, d in ds.items():
        np.testing.assert_allclose(d.decoder, unit_rows(ref[name]["decoder"])[0], atol=1e-6)
        assert d.density is not None and d.has_encoder
    assert ds["toy-a"].n_alive == ds["toy-a"].n_features - N_DEAD
    ab = compare(ds["toy-a"], ds["toy-b"], cache=False).max_cos
    assert 0.45 < (ab > 0.9).mean() < 0.55  # half of toy-a's directions live on in toy-b
    a2 = compare(ds["toy-a"], ds["toy-a-seed2"], cache=False).max_cos
    assert (a2 > 0.7).all() and a2.mean() < 0.95  # all shared, perturbed more strongly
