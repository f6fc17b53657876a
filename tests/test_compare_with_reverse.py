"""compare_with_reverse(): A -> B, with B -> A from the same two-sided pass, equal to two
comparisons and to float64, cached under compare()'s keys, computed once for concurrent
callers, and a plain compare() wherever the two-sided pass does not apply."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sae_backend.cache import ArrayCache
from sae_backend.errors import InputError
from sae_backend.geometry import _cpu_select, topk, topk_tiles
from sae_backend.geometry.compare import _compare_key, compare, compare_with_reverse
from tests.test_compare import planted_pair, reference
from tests.test_cpu_select import needs_compiler

pytestmark = needs_compiler


@pytest.fixture()
def small_tiles(monkeypatch):
    """Blocks of 128 rows and the bf16 path for small passes: the two-sided pass on ~300
    features, so it covers many tiles. Records the size of each two-sided pass."""
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


@pytest.fixture()
def cache(tmp_path) -> ArrayCache:
    return ArrayCache(tmp_path / "cache")


def no_pass(*args, **kw):
    raise AssertionError("a cached comparison was computed again")


@pytest.mark.parametrize("directions", ["decoder", "encoder"])
def test_one_pass_gives_both_as_two_comparisons_and_float64(
    tmp_path, small_tiles, cache, monkeypatch, directions
):
    a, b, dec_a, dec_b, enc_a, enc_b, _ = planted_pair(tmp_path)
    x, y = (dec_a, dec_b) if directions == "decoder" else (enc_a, enc_b)
    fwd = compare_with_reverse(a, b, directions=directions, k=3, cache=cache)
    assert small_tiles == [len(a.alive_index)] and cache.stats.misses == 1
    with monkeypatch.context() as m:
        m.setattr(topk, "topk_cosine", no_pass)  # B -> A is stored: a lookup
        back = compare(b, a, directions=directions, k=3, cache=cache)
        again = compare_with_reverse(b, a, directions=directions, k=3, cache=cache)
    np.testing.assert_array_equal(again.values, back.values)
    for got, one, (p, q, dp, dq) in (
        (fwd, compare(a, b, directions=directions, k=3, cache=False), (x, y, a, b)),
        (back, compare(b, a, directions=directions, k=3, cache=False), (y, x, b, a)),
    ):
        np.testing.assert_array_equal(got.indices, one.indices)  # bit for bit
        np.testing.assert_array_equal(got.values, one.values)
        assert (got.a_fingerprint, got.b_fingerprint, got.n_targets) == (
            one.a_fingerprint,
            one.b_fingerprint,
            one.n_targets,
        )
        alive_p = np.isin(np.arange(len(p)), dp.alive_index)
        alive_q = np.isin(np.arange(len(q)), dq.alive_index)
        ix, vals, idx = reference(p, q, alive_p, alive_q, 3)
        np.testing.assert_array_equal(got.a_index, ix)
        np.testing.assert_allclose(got.values, vals, atol=1e-6)
        np.testing.assert_array_equal(got.indices[:, 0], idx[:, 0])  # dead features never named


def test_a_known_reverse_leaves_one_direction_to_compute(tmp_path, small_tiles, cache):
    a, b, *_ = planted_pair(tmp_path)
    known = compare(b, a, k=1, cache=cache)
    fwd = compare_with_reverse(a, b, k=1, cache=cache)
    assert small_tiles == []  # B -> A was there: A -> B by the one-sided pass
    np.testing.assert_array_equal(fwd.values, compare(a, b, k=1, cache=False).values)
    np.testing.assert_array_equal(compare(b, a, k=1, cache=cache).values, known.values)


def test_concurrent_callers_of_a_pair_compute_it_once(tmp_path, small_tiles, cache):
    a, b, *_ = planted_pair(tmp_path)
    out: dict[str, object] = {}
    threads = [
        threading.Thread(target=lambda: out.setdefault("ab", compare_with_reverse(a, b, cache=cache))),
        threading.Thread(target=lambda: out.setdefault("ba", compare_with_reverse(b, a, cache=cache))),
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(small_tiles) == 1 and set(out) == {"ab", "ba"}
    assert cache.stats.misses == 1  # the second caller found its direction stored
    np.testing.assert_array_equal(out["ab"].values, compare(a, b, k=1, cache=False).values)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(out["ba"].indices, compare(b, a, k=1, cache=False).indices)  # type: ignore[attr-defined]


@pytest.mark.parametrize("why", ["no kernel", "order rows", "no cache", "small pass"])
def test_plain_compare_where_the_pass_does_not_apply(
    tmp_path, small_tiles, cache, monkeypatch, why
):
    a, b, *_ = planted_pair(tmp_path)
    use: ArrayCache | None = cache
    if why == "no kernel":
        monkeypatch.setattr(_cpu_select, "kernel", lambda: None)
    elif why == "order rows":
        monkeypatch.setenv("SAE_TOPK_ORDER", "rows")
    elif why == "no cache":
        use = None
    else:
        monkeypatch.setattr(topk_tiles, "TILE", 4096)  # ~300 rows: below two blocks
    got = compare_with_reverse(a, b, k=2, cache=use)
    assert small_tiles == []
    np.testing.assert_array_equal(got.values, compare(a, b, k=2, cache=False).values)
    if use is not None:
        assert cache.get(_compare_key(b, a, "decoder", 2)) is None  # nothing else stored


def test_bad_requests_are_one_line_errors(tmp_path, small_tiles, cache):
    a, b, *_ = planted_pair(tmp_path)
    with pytest.raises(InputError, match="k must be between 1 and"):
        compare_with_reverse(a, b, k=10_000, cache=cache)
    assert small_tiles == []


_CACHED_RUN = """
import json, sys
from sae_backend import load
from sae_backend.geometry.compare import compare_with_reverse
a, b = load(sys.argv[1]), load(sys.argv[2])
fwd = compare_with_reverse(a, b, k=2)
back = compare_with_reverse(b, a, k=2)
heavy = sorted(m for m in ("torch", "scipy", "numba") if m in sys.modules)
print(json.dumps({"heavy": heavy, "values": float(fwd.values.sum() + back.values.sum())}))
"""


def test_a_cached_pair_imports_no_torch(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.factories import write_saelens

    rng = np.random.default_rng(5)
    paths = [write_saelens(tmp_path / n, rng.standard_normal((120, 16)), None) for n in "ab"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "SAE_CACHE_DIR": str(tmp_path / "cache")}

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", _CACHED_RUN, *map(str, paths)],
                              capture_output=True, text=True, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold, cached = run(), run()
    assert "torch" in cold["heavy"]  # computing needs it (the check is not vacuous)
    assert cached["heavy"] == [] and cached["values"] == cold["values"]
