"""Absorption signatures: planted absorbing pairs recovered with their cosines; every value
equal to a float64 brute-force reference; the feature itself is never its own partner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_backend.cache import ArrayCache
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.errors import InputError
from sae_backend.geometry.absorption import _drop_self, absorption
from tests.ladders import absorption_reference, basis, rows


def planted_absorption():
    """12 features in an orthonormal basis e_0..e_23 of R^24 (random orientation).

    Decoders: d_i = e_i, except d_7 = .6 e2 + .8 e13 (a child sharing its parent's direction)
    and d_11 = 0 (dead). Encoders: e_i + 0.05 e_(12 + i) (points along its own decoder), except
      feature 2 absorbs 7:        enc_2 = e2 - 0.8 d_7
      feature 5 absorbs 9 and 10: enc_5 = e5 - 0.5 e9 - 0.7 e10
      feature 3 points away from itself: enc_3 = -e3 + 0.3 e4 (self-cos < 0; never its own partner)
    """
    e = basis(seed=3)
    dec = rows([{i: 1.0} for i in range(12)], e)
    dec[7] = rows([{2: 0.6, 13: 0.8}], e)[0]
    dec[11] = 0.0
    enc = rows([{i: 1.0, 12 + i: 0.05} for i in range(12)], e)
    enc[2] = e[2] - 0.8 * dec[7]
    enc[5] = rows([{5: 1, 9: -0.5, 10: -0.7}], e)[0]
    enc[3] = rows([{3: -1, 4: 0.3}], e)[0]
    d = Dictionary.from_raw(RawSAE(dec, enc), source="planted", format="matrix")
    return d, dec, enc


def test_planted_pairs_recovered_with_their_cosines():
    d, dec, enc = planted_absorption()
    res = absorption(d, k=2, cache=False)
    assert res.feature.tolist() == list(range(11))  # 11 is dead
    row = dict(zip(res.feature.tolist(), range(len(res.feature)), strict=True))
    # feature 2 -> 7: cos(e2 - .8 d7, d7) = (.6 - .8) / |e2 - .8 d7|
    n2 = np.sqrt(1 - 2 * 0.8 * 0.6 + 0.64)
    assert res.partner[row[2], 0] == 7
    assert res.enc_dec_cos[row[2], 0] == pytest.approx((0.6 - 0.8) / n2, abs=1e-6)
    assert res.dec_dec_cos[row[2], 0] == pytest.approx(0.6, abs=1e-6)
    # feature 5 -> 10 then 9
    n5 = np.sqrt(1 + 0.25 + 0.49)
    assert res.partner[row[5]].tolist() == [10, 9]
    np.testing.assert_allclose(res.enc_dec_cos[row[5]], [-0.7 / n5, -0.5 / n5], atol=1e-6)
    np.testing.assert_allclose(res.dec_dec_cos[row[5]], [0.0, 0.0], atol=1e-6)
    # feature 3's most negative cosine is with its own decoder (-1/|.|): it is skipped
    assert 3 not in res.partner[row[3]].tolist()
    assert res.self_cos[row[3]] == pytest.approx(-1 / np.sqrt(1.09), abs=1e-6)
    # the signature table sorted most negative first starts with the planted absorbers
    top = res.feature[res.order()[:2]].tolist()
    assert set(top) == {5, 2}
    assert res.signature[row[5]] == pytest.approx(-0.7 / n5, abs=1e-6)
    np.testing.assert_allclose(
        res.partner_self_cos[row[5]], res.self_cos[[row[10], row[9]]], atol=0
    )


@pytest.mark.parametrize("k", [1, 3, 7])
def test_equals_float64_reference(k):
    rng = np.random.default_rng(4)
    dec = rng.standard_normal((120, 16)) * rng.uniform(0.1, 4, (120, 1))
    enc = rng.standard_normal((120, 16))
    enc[[5, 6]] = -dec[[5, 6]]  # self-cos -1: the most negative pair is the feature itself
    dec[[9, 40]] = 0.0
    d = Dictionary.from_raw(RawSAE(dec, enc), source="random", format="matrix")
    res = absorption(d, k=k, cache=False)
    feature, partner, enc_dec, dec_dec = absorption_reference(enc, dec, k)
    np.testing.assert_array_equal(res.feature, feature)
    np.testing.assert_array_equal(res.partner, partner)
    assert np.abs(res.enc_dec_cos - enc_dec).max() <= 1e-5
    assert np.abs(res.dec_dec_cos - dec_dec).max() <= 1e-5
    assert (res.partner != res.feature[:, None]).all()
    assert np.all(np.diff(res.enc_dec_cos, axis=1) >= 0)  # most negative first


def test_self_cos_follows_saebench_core_definition():
    """SAEBench core `encoder_decoder_cosine_sim` (sae_bench/evals/core/main.py): columns of
    W_enc [d, F] and rows of W_dec [F, d], each unit-normalised, then
    torch.nn.functional.cosine_similarity per feature. Written here from that definition
    (SAEBench itself pins numpy < 2 and torchvision, so it cannot be installed beside torch
    2.13 and numpy 2.4)."""
    rng = np.random.default_rng(8)
    dec = rng.standard_normal((64, 12)) * rng.uniform(0.5, 3, (64, 1))
    enc = rng.standard_normal((64, 12)) * 7.0
    w_enc = torch.tensor(enc.T)  # [d, F] as SAELens stores it
    w_dec = torch.tensor(dec)  # [F, d]
    unit_enc = w_enc / w_enc.norm(dim=0, keepdim=True)
    unit_dec = (w_dec.T / w_dec.T.norm(dim=0, keepdim=True)).T
    saebench = torch.nn.functional.cosine_similarity(unit_dec, unit_enc.T).numpy()
    d = Dictionary.from_raw(RawSAE(dec, enc), source="sb", format="matrix")
    res = absorption(d, k=1, cache=False)
    np.testing.assert_allclose(res.self_cos, saebench, atol=1e-6)


def test_drop_self_keeps_order_and_ties():
    idx = np.array([[0, 3, 1], [2, 0, 3], [4, 3, 2], [1, 3, 0]])
    # row 0 holds itself first, row 1 not at all, row 2 last, row 3 in the middle
    np.testing.assert_array_equal(_drop_self(idx, 2), [[1, 2], [0, 1], [0, 1], [0, 2]])


def test_cached_and_errors(tmp_path):
    d, *_ = planted_absorption()
    cache = ArrayCache(tmp_path / "c")
    first = absorption(d, k=2, cache=cache)
    again = absorption(d, k=2, cache=cache)
    assert cache.stats.misses == 1 and cache.stats.hits == 1
    np.testing.assert_array_equal(first.partner, again.partner)
    np.testing.assert_array_equal(first.dec_dec_cos, again.dec_dec_cos)
    no_enc = Dictionary.from_raw(RawSAE(np.eye(4)), source="dec-only", format="matrix")
    with pytest.raises(InputError, match="no encoder"):
        absorption(no_enc)
    for k in (0, 11):  # 11 alive features: at most 10 partners
        with pytest.raises(InputError, match="k must be between 1 and 10"):
            absorption(d, k=k)
