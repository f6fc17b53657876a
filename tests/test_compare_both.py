"""compare_both(): A -> B and B -> A from one two-sided pass, equal to two comparisons and to
float64, cached under compare()'s keys, computed once for concurrent callers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sae_backend.cache import ArrayCache
from sae_backend.errors import InputError
from sae_backend.geometry import _cpu_select, topk, topk_tiles
from sae_backend.geometry.compare import compare, compare_both
from tests.test_compare import planted_pair, reference
from tests.test_cpu_select import needs_compiler

pytestmark = needs_compiler


@pytest.fixture()
def small_tiles(monkeypatch):
    """Blocks of 128 rows and the bf16 path for small passes: the two-sided pass on ~300
    features, so it covers many tiles. Counts its calls."""
    monkeypatch.setattr(topk_tiles, "TILE", 128)
    monkeypatch.setattr(topk, "SMALL_PAIRS", 0)
    monkeypatch.setenv("SAE_TOPK_PRECISION", "bf16")
    calls = []
    real = topk_tiles.pair_topk

    def counted(*args, **kw):
        calls.append(args[0].shape[0])
        return real(*args, **kw)

    monkeypatch.setattr(topk_tiles, "pair_topk", counted)
    return calls


@pytest.mark.parametrize("directions", ["decoder", "encoder"])
def test_both_directions_equal_two_comparisons_and_float64(tmp_path, small_tiles, directions):
    a, b, dec_a, dec_b, enc_a, enc_b, _ = planted_pair(tmp_path)
    x, y = (dec_a, dec_b) if directions == "decoder" else (enc_a, enc_b)
    fwd, back = compare_both(a, b, directions=directions, k=3, cache=False)
    assert small_tiles == [len(a.alive_index)]  # one two-sided pass
    for got, one, (p, q, dp, dq) in (
        (fwd, compare(a, b, directions=directions, k=3, cache=False), (x, y, a, b)),
        (back, compare(b, a, directions=directions, k=3, cache=False), (y, x, b, a)),
    ):
        np.testing.assert_array_equal(got.indices, one.indices)  # bit for bit
        np.testing.assert_array_equal(got.values, one.values)
        assert (got.a_fingerprint, got.b_fingerprint, got.n_targets) == (
            one.a_fingerprint, one.b_fingerprint, one.n_targets,
        )  # fmt: skip
        alive_p = np.isin(np.arange(len(p)), dp.alive_index)
        alive_q = np.isin(np.arange(len(q)), dq.alive_index)
        ix, vals, idx = reference(p, q, alive_p, alive_q, 3)
        np.testing.assert_array_equal(got.a_index, ix)
        np.testing.assert_allclose(got.values, vals, atol=1e-6)
        np.testing.assert_array_equal(got.indices[:, 0], idx[:, 0])  # dead features never named


def test_both_are_cached_for_compare(tmp_path, small_tiles, monkeypatch):
    a, b, *_ = planted_pair(tmp_path)
    cache = ArrayCache(tmp_path / "cache")
    fwd, back = compare_both(a, b, k=2, cache=cache)

    def no_pass(*args, **kw):
        raise AssertionError("a cached comparison was computed again")

    monkeypatch.setattr(topk, "topk_cosine", no_pass)
    for x, y, want in ((a, b, fwd), (b, a, back)):
        got = compare(x, y, k=2, cache=cache)
        np.testing.assert_array_equal(got.values, want.values)
        np.testing.assert_array_equal(got.indices, want.indices)
    again = compare_both(b, a, k=2, cache=cache)  # the other order: both lookups
    np.testing.assert_array_equal(again[0].values, back.values)
    assert small_tiles == [len(a.alive_index)]


def test_one_side_cached_computes_only_the_other(tmp_path, small_tiles):
    a, b, *_ = planted_pair(tmp_path)
    cache = ArrayCache(tmp_path / "cache")
    known = compare(b, a, k=1, cache=cache)
    fwd, back = compare_both(a, b, k=1, cache=cache)
    assert small_tiles == []  # no two-sided pass for one missing side
    np.testing.assert_array_equal(back.values, known.values)
    np.testing.assert_array_equal(fwd.values, compare(a, b, k=1, cache=False).values)


def test_concurrent_callers_of_a_pair_compute_it_once(tmp_path, small_tiles):
    a, b, *_ = planted_pair(tmp_path)
    cache = ArrayCache(tmp_path / "cache")
    out: dict[str, object] = {}
    threads = [
        threading.Thread(target=lambda: out.setdefault("ab", compare_both(a, b, cache=cache))),
        threading.Thread(target=lambda: out.setdefault("ba", compare_both(b, a, cache=cache))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(small_tiles) == 1 and set(out) == {"ab", "ba"}
    ab, ba = out["ab"], out["ba"]
    np.testing.assert_array_equal(ab[0].values, ba[1].values)  # type: ignore[index]
    np.testing.assert_array_equal(ab[1].indices, ba[0].indices)  # type: ignore[index]


def test_without_the_kernel_it_is_two_comparisons(tmp_path, small_tiles, monkeypatch):
    a, b, *_ = planted_pair(tmp_path)
    monkeypatch.setattr(_cpu_select, "kernel", lambda: None)
    fwd, back = compare_both(a, b, k=2, cache=False)
    assert small_tiles == []
    np.testing.assert_array_equal(back.indices, compare(b, a, k=2, cache=False).indices)
    assert fwd.values.shape == (len(a.alive_index), 2)


def test_bad_requests_are_one_line_errors(tmp_path):
    a, b, *_ = planted_pair(tmp_path)
    with pytest.raises(InputError, match="k must be between 1 and"):
        compare_both(a, b, k=10_000, cache=False)


def test_both_in_one_pass_says_when_one_pass_serves_both(tmp_path, small_tiles, monkeypatch):
    from sae_backend.geometry.compare import both_in_one_pass

    a, b, *_ = planted_pair(tmp_path)
    assert both_in_one_pass(a, b) and both_in_one_pass(a, b, k=5)
    assert not both_in_one_pass(a, b, k=len(b.alive_index) + 1)  # k beyond B: compare() only
    monkeypatch.setenv("SAE_TOPK_ORDER", "rows")
    assert not both_in_one_pass(a, b)


def test_compare_with_reverse_leaves_the_reverse_cached(tmp_path, small_tiles, monkeypatch):
    from sae_backend.geometry.compare import _compare_key, compare_with_reverse

    a, b, *_ = planted_pair(tmp_path)
    cache = ArrayCache(tmp_path / "cache")
    fwd = compare_with_reverse(a, b, k=1, cache=cache)
    assert small_tiles == [len(a.alive_index)] and cache.stats.misses == 1
    np.testing.assert_array_equal(fwd.values, compare(a, b, k=1, cache=False).values)
    back = compare_with_reverse(b, a, k=1, cache=cache)  # a lookup: no pass, a hit
    assert small_tiles == [len(a.alive_index)] and cache.stats.misses == 1
    np.testing.assert_array_equal(back.indices, compare(b, a, k=1, cache=False).indices)
    monkeypatch.setenv("SAE_TOPK_ORDER", "rows")  # no two-sided pass: plain compare
    compare_with_reverse(a, b, k=2, cache=cache)
    assert len(small_tiles) == 1 and cache.get(_compare_key(b, a, "decoder", 2)) is None
