"""The compiled CPU selection (geometry/_cpu_select) against torch's path and float64.

The kernel must not change a single result: on every case below, the bf16 path with the
kernel and without it (torch's selection) give identical values and indices and send the
same rows to the exact fallback, and both match a float64 reference. The kernel's parts are
also checked directly: the threshold tau bit for bit against topk.py's torch arithmetic,
the candidate lists against a numpy re-implementation of the rule, the dot products against
torch.bmm, and the final selection against a lexicographic sort.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from sae_backend.geometry import _cpu_select, topk
from sae_backend.geometry.topk import GROUP, topk_cosine
from tests.test_topk import assert_matches_reference, unit

HAVE_COMPILER = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
needs_compiler = pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")


@pytest.fixture()
def kernel() -> _cpu_select.Kernel:
    found = _cpu_select.kernel()
    assert found is not None, f"the kernel did not build or load: {_cpu_select._failed}"
    return found


@pytest.fixture()
def fresh_kernel_state(monkeypatch):
    """Forget the process's loaded kernel for one test (restored afterwards)."""
    monkeypatch.setattr(_cpu_select, "_loaded", None)
    monkeypatch.setattr(_cpu_select, "_failed", None)


def both_paths(a, b, k, monkeypatch, **kw):
    """(kernel result, kernel info, torch result, torch info) of the bf16 path."""
    assert _cpu_select.kernel() is not None
    info_k: dict = {}
    with_kernel = topk_cosine(a, b, k, device="cpu", precision="bf16", info=info_k, **kw)
    with monkeypatch.context() as m:
        m.setattr(_cpu_select, "kernel", lambda: None)
        info_t: dict = {}
        with_torch = topk_cosine(a, b, k, device="cpu", precision="bf16", info=info_t, **kw)
    return with_kernel, info_k, with_torch, info_t


def assert_identical(a, b, k, monkeypatch, **kw):
    res_k, info_k, res_t, info_t = both_paths(a, b, k, monkeypatch, **kw)
    np.testing.assert_array_equal(res_k.indices, res_t.indices)
    np.testing.assert_array_equal(res_k.values, res_t.values)
    assert info_k["fallback_rows"] == info_t["fallback_rows"]
    assert_matches_reference(res_k, a, b, k)
    return res_k, info_k


def clusters(rng, n_centres, per, d, noise):
    centre = rng.standard_normal((n_centres, d))
    return unit(np.repeat(centre, per, axis=0) + noise * rng.standard_normal((n_centres * per, d)))


@needs_compiler
@pytest.mark.parametrize("k", [1, 5, 40])
@pytest.mark.parametrize("shape", [(300, 48, 1000), (130, 33, 64), (50, 7, 129), (90, 1000, 200)])
def test_random_cross_and_self_are_identical(shape, k, monkeypatch, kernel):
    n_a, d, n_b = shape  # n_b: not a multiple of the group, exactly one group, one over
    rng = np.random.default_rng(k * 1000 + n_b)
    a = unit(rng.standard_normal((n_a, d)))
    b = unit(rng.standard_normal((n_b, d)))
    for bb in (b, None):
        if k <= (n_b if bb is not None else n_a - 1):
            assert_identical(a, bb, k, monkeypatch, block_rows=37)


@needs_compiler
def test_tiny_and_degenerate_shapes(monkeypatch, kernel):
    rng = np.random.default_rng(7)
    one = unit(rng.standard_normal((1, 5)))
    two = unit(rng.standard_normal((2, 5)))
    assert_identical(one, one, 1, monkeypatch)  # one target
    assert_identical(two, None, 1, monkeypatch)  # self: one other row
    assert_identical(two, two, 2, monkeypatch)  # k = n_b
    line = unit(rng.standard_normal((40, 1)))  # d = 1: every cosine is +-1, all ties
    assert_identical(line, line, 3, monkeypatch)
    assert_identical(line, None, 39, monkeypatch)  # k = n - 1, the largest there is
    with pytest.raises(ValueError, match="k=3"):
        topk_cosine(two, two, 3, precision="bf16")


@needs_compiler
def test_ties_duplicates_and_zero_rows(monkeypatch, kernel):
    rng = np.random.default_rng(8)
    b = np.repeat(unit(rng.standard_normal((30, 32))), 3, axis=0)  # every target three times
    a = unit(rng.standard_normal((20, 32)))
    res, _ = assert_identical(a, b, 3, monkeypatch)
    np.testing.assert_array_equal(res.indices, res.indices[:, :1] + np.arange(3))
    # zero rows: a dead target scores 0; a zero query row ties with every target at 0, so
    # its candidates overflow the budget and it takes the exact fallback, in both paths
    b2 = unit(rng.standard_normal((300, 16)))
    b2[::7] = 0.0
    a2 = unit(rng.standard_normal((40, 16)))
    a2[[3, 17]] = 0.0
    res2, info = assert_identical(a2, b2, 4, monkeypatch, block_rows=16)
    assert info["fallback_rows"] == 2
    assert not res2.values[[3, 17]].any()  # cosine 0 with everything, never NaN
    np.testing.assert_array_equal(res2.indices[3], np.arange(4))  # ties: lowest indices
    # self-comparison with exact duplicates: the copy is the nearest, self never reported
    c = np.concatenate([a[:10], a[:10], a[10:]])
    res3, _ = assert_identical(c, None, 2, monkeypatch)
    np.testing.assert_array_equal(res3.indices[:10, 0], np.arange(10, 20))


@needs_compiler
def test_candidate_budget_overflow_and_long_rows(monkeypatch, kernel):
    rng = np.random.default_rng(9)
    # dense clusters: hundreds of targets within the bf16 error of the best -> fallback rows
    b = clusters(rng, 4, 300, 96, 1e-3)
    a = np.concatenate([clusters(rng, 4, 1, 96, 1e-3), unit(rng.standard_normal((60, 96)))])
    _, info = assert_identical(a, b, 10, monkeypatch)
    assert info["fallback_rows"] >= 4
    # clusters of 40: more candidates than the first re-score table, fewer than the budget
    b2 = np.concatenate([clusters(rng, 6, 40, 64, 2e-3), unit(rng.standard_normal((2000, 64)))])
    a2 = clusters(rng, 6, 1, 64, 2e-3)
    res, info2 = assert_identical(a2, b2, 10, monkeypatch)
    assert info2["fallback_rows"] == 0
    # groups: a row whose candidates spread over more groups than are kept falls back
    spread = unit(np.tile(rng.standard_normal((1, 64)), (64 * 40, 1)) +
                  1e-3 * rng.standard_normal((64 * 40, 64)))  # fmt: skip
    _, info3 = assert_identical(spread[:5], spread, 1, monkeypatch)
    assert info3["fallback_rows"] == 5


def strided_scores(a: torch.Tensor, scorer: topk._Bf16Scorer) -> torch.Tensor:
    return torch.mm(a.to(torch.bfloat16), scorer.b16_t)


def reference_candidates(s, n_b, self_offset, k, n_keep, delta, max_pairs):
    """The selection rule in numpy, as topk.py's torch path applies it."""
    m = s.shape[0]
    n_groups = s.shape[1] // GROUP
    sc = s.float().numpy().reshape(m, GROUP, n_groups).copy()  # [row, member r, group j]
    cols = np.arange(n_groups)[None, :] * GROUP + np.arange(GROUP)[:, None]  # B index of (r, j)
    sc[:, cols >= n_b] = -np.inf
    if self_offset is not None:
        own = self_offset + np.arange(m)
        sc[np.arange(m), own % GROUP, own // GROUP] = -np.inf
    gmax = sc.max(axis=1)
    out = []
    for i in range(m):
        t = np.sort(gmax[i])[::-1][k - 1] if k <= n_keep else np.sort(sc[i].ravel())[::-1][k - 1]
        t = np.float32(t)
        y = (t - np.float32(2.0**-8) * np.abs(t)) - np.float32(2.0) * delta[i]
        tau = (y / np.float32(1 + 2.0**-8) if y >= 0 else y / np.float32(1 - 2.0**-8))
        tau = np.float32(tau - np.float32(1e-6))
        hot = int((gmax[i] >= tau).sum())
        picked = np.sort(cols[sc[i] >= tau])
        ok = (n_keep == n_groups or hot < n_keep) and len(picked) <= max_pairs
        out.append((tau, ok, picked))
    return out


@needs_compiler
@pytest.mark.parametrize("self_mode", [False, True])
def test_candidates_follow_the_rule_exactly(self_mode, kernel):
    rng = np.random.default_rng(10)
    b = torch.from_numpy(np.concatenate([clusters(rng, 3, 30, 24, 5e-3),
                                         unit(rng.standard_normal((610, 24)))]))  # fmt: skip
    a = b[:77] if self_mode else torch.from_numpy(unit(rng.standard_normal((77, 24))))
    for k in (1, 4, 30):
        sc = topk._Bf16Scorer(b, k)
        s = strided_scores(a, sc)
        delta = sc._delta(a, a.to(torch.bfloat16))
        offset = 0 if self_mode else None
        cand, counts, complete, tau = kernel.candidates(
            s, n_groups=sc.n_groups, group=GROUP, n_b=sc.n_b, self_offset=offset, k=k,
            n_keep=sc.n_keep_groups, delta=delta, max_pairs=sc.max_pairs,
        )  # fmt: skip
        want = reference_candidates(s, sc.n_b, offset, k, sc.n_keep_groups, delta.numpy(),
                                    sc.max_pairs)  # fmt: skip
        # tau bit for bit as topk.py computes it in torch
        t = torch.tensor([w[0] for w in want])
        np.testing.assert_array_equal(tau.numpy(), t.numpy())
        for i, (_, ok, picked) in enumerate(want):
            assert bool(complete[i]) == ok, (k, i)
            if ok:
                assert int(counts[i]) == len(picked)
                np.testing.assert_array_equal(cand[i, : len(picked)].numpy(), picked)
                assert not cand[i, len(picked):].any()  # the rest is zeros


@needs_compiler
def test_tau_matches_the_torch_arithmetic(kernel):
    """The kernel's float32 threshold equals topk.py's torch expression on awkward values."""
    rng = np.random.default_rng(11)
    t = np.concatenate([rng.uniform(-1, 1, 5000), [0.0, -0.0, 1.0, -1.0, 2**-20, -(2**-20)]])
    t = torch.tensor(t, dtype=torch.float32).to(torch.bfloat16)  # t is a bf16 score
    delta = torch.tensor(rng.uniform(0, 1e-2, len(t)), dtype=torch.float32)
    tf = t.float()
    y = tf - topk._U_BF16 * tf.abs() - 2 * delta
    want = torch.where(y >= 0, y / (1 + topk._U_BF16), y / (1 - topk._U_BF16)) - 1e-6
    # one group per row whose only member scores t: the k=1 threshold is tau(t)
    s = torch.full((len(t), GROUP), -torch.inf, dtype=torch.bfloat16)
    s[:, 0] = t
    _, _, _, tau = kernel.candidates(s, n_groups=1, group=GROUP, n_b=1, self_offset=None, k=1,
                                     n_keep=1, delta=delta, max_pairs=4)  # fmt: skip
    np.testing.assert_array_equal(tau.numpy(), want.numpy())


@needs_compiler
@pytest.mark.parametrize("d", [1, 3, 16, 17, 768, 1001])
def test_dots_are_torch_bmm_bit_for_bit(d, kernel):
    rng = np.random.default_rng(d)
    x = torch.from_numpy(unit(rng.standard_normal((50, d))))
    y = torch.from_numpy(unit(rng.standard_normal((9, d))))
    idx = torch.from_numpy(rng.integers(0, 50, (9, 23)))
    want = torch.bmm(x[idx.reshape(-1)].view(9, 23, d), y.unsqueeze(2)).squeeze(2)
    pairs = torch.stack([idx.reshape(-1), torch.arange(9).repeat_interleave(23)], 1)
    got = kernel.dots(x, y, pairs).view(9, 23)
    assert torch.equal(got, want)
    exact = x.double()[idx] @ y.double().unsqueeze(2)
    assert float((got.double() - exact.squeeze(2)).abs().max()) < 1e-6


@needs_compiler
def test_top_pairs_orders_by_value_then_index(kernel):
    rng = np.random.default_rng(12)
    m, w, k = 200, 17, 6
    vals = rng.integers(-3, 4, (m, w)).astype(np.float32) / 4  # many exact ties
    idx = np.stack([rng.permutation(1000)[:w] for _ in range(m)])
    counts = rng.integers(0, w + 1, m)
    counts[:3] = [0, 2, w]  # none, fewer than k (padded), all
    got_v, got_i = kernel.top_pairs(torch.from_numpy(vals), torch.from_numpy(idx),
                                    torch.from_numpy(counts), k)  # fmt: skip
    for i in range(m):
        n = counts[i]
        order = np.lexsort((idx[i, :n], -vals[i, :n]))[:k]
        want_v = np.concatenate([vals[i, order], np.full(k - len(order), -np.inf)])
        want_i = np.concatenate([idx[i, order], np.zeros(k - len(order), np.int64)])
        np.testing.assert_array_equal(got_v[i].numpy(), want_v)
        np.testing.assert_array_equal(got_i[i].numpy(), want_i)


@needs_compiler
def test_build_is_cached_and_reused(fresh_kernel_state, monkeypatch, capfd):
    first = _cpu_select._build(quiet=True)  # the CLI's background build says nothing
    assert first.is_file() and first.parent.parent.name == "sae_kernels"
    assert "compiling" not in capfd.readouterr().err

    def compile_again(cxx, lib, quiet=False):
        raise AssertionError(f"compiled again into {lib}")

    monkeypatch.setattr(_cpu_select, "_compile", compile_again)
    assert _cpu_select._build() == first
    assert _cpu_select.is_built()
    assert _cpu_select.kernel() is not None  # loads the build on disk


def test_off_and_no_compiler_fall_back_to_torch(fresh_kernel_state, monkeypatch, caplog):
    rng = np.random.default_rng(13)
    a = unit(rng.standard_normal((60, 20)))
    b = unit(rng.standard_normal((500, 20)))
    want = topk_cosine(a, b, 3, precision="fp32")
    monkeypatch.setenv("SAE_CPU_KERNEL", "off")
    assert _cpu_select.kernel() is None
    monkeypatch.setenv("SAE_CPU_KERNEL", "auto")

    def missing() -> str:
        raise _cpu_select.KernelUnavailable("no C++ compiler found (test)")

    monkeypatch.setattr(_cpu_select, "_compiler", missing)
    with caplog.at_level(logging.WARNING, logger=_cpu_select.__name__):
        assert _cpu_select.kernel() is None
    assert "no C++ compiler found (test)" in caplog.text and "torch selection" in caplog.text
    got = topk_cosine(a, b, 3, precision="bf16")  # the torch selection: same answer
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.values, want.values, atol=1e-6)


@needs_compiler
def test_a_compiler_error_is_a_note_not_a_failure(fresh_kernel_state, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "false")  # exists, fails every compile (and --version)
    monkeypatch.setattr(_cpu_select, "_build_dir", lambda: _cpu_select.settings.base_dir() / "k")
    with caplog.at_level(logging.WARNING, logger=_cpu_select.__name__):
        assert _cpu_select.kernel() is None
    assert "CPU selection kernel unavailable" in caplog.text
