"""The fused Triton engine of the exact bf16 top-k path, against float64 and the torch engine.

On CPU (CI) the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET
before triton is imported) with small tiles, so partial tiles, several K steps, several blocks
and several column tiles per row all occur on small shapes. With SAE_TEST_DEVICE=cuda the same
tests run the compiled kernels with their Hopper tiles.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_backend.geometry import topk_triton
from sae_backend.geometry.topk import topk_cosine
from tests.test_topk import assert_matches_reference, unit

DEVICE = os.environ.get("SAE_TEST_DEVICE", "cpu")
SMALL = topk_triton.Tiles(block_m=16, block_n=32, block_k=16, group_m=2, num_warps=4, num_stages=1)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    if DEVICE == "cpu":
        assert topk_triton.INTERPRET, "TRITON_INTERPRET must be set before triton is imported"
        monkeypatch.setattr(topk_triton, "TILES", SMALL)


def both_engines(monkeypatch, a, b, k, near_ties=False, **kw):
    """topk_cosine through the Triton engine, checked against the torch engine's answer:
    the same indices, and values equal up to float32 summation order. With `near_ties`
    (scores closer than float32 resolves), only the values are compared, to 1e-6: there the
    order depends on rounding in either engine."""
    info: dict = {}
    monkeypatch.setenv("SAE_TOPK_ENGINE", "triton")
    res = topk_cosine(a, b, k, device=DEVICE, precision="bf16", info=info, **kw)
    monkeypatch.setenv("SAE_TOPK_ENGINE", "torch")
    ref = topk_cosine(a, b, k, device=DEVICE, precision="bf16", **kw)
    assert info["engine"] == "triton" and info["path"] == "bf16"
    assert res.values.dtype == np.float32 and res.indices.dtype == np.int64
    if not near_ties:
        np.testing.assert_array_equal(res.indices, ref.indices)
    np.testing.assert_allclose(res.values, ref.values, atol=1e-6 if near_ties else 3e-7, rtol=0)
    return res, info


@pytest.mark.parametrize("k", [1, 5, 13])
def test_random_cross_and_self(monkeypatch, k):
    """70 rows (not a multiple of the 16-row tile) against 203 (not a multiple of the 32-column
    tile), d=40 (zero-padded to 48: three K steps), blocks of 32 rows (own-row offsets)."""
    rng = np.random.default_rng(10 + k)
    a = unit(rng.standard_normal((70, 40)))
    b = unit(rng.standard_normal((203, 40)))
    for bb in (b, None):
        res, info = both_engines(monkeypatch, a, bb, k, block_rows=32)
        assert info["fallback_rows"] == 0
        assert_matches_reference(res, a, bb, k)


def test_exact_ties_break_to_lower_index(monkeypatch):
    rng = np.random.default_rng(2)
    a = unit(rng.standard_normal((20, 32)))
    b = np.repeat(unit(rng.standard_normal((30, 32))), 3, axis=0)  # every target three times
    res, _ = both_engines(monkeypatch, a, b, 5)
    # the three copies of the best target in index order, then the first two of the next
    first = res.indices[:, 0]
    assert np.all(first % 3 == 0)
    np.testing.assert_array_equal(res.indices[:, :3], first[:, None] + np.arange(3))
    assert np.all(res.indices[:, 3] % 3 == 0)
    np.testing.assert_array_equal(res.indices[:, 4], res.indices[:, 3] + 1)
    np.testing.assert_array_equal(res.values[:, :3], np.repeat(res.values[:, :1], 3, axis=1))
    assert_matches_reference(res, a, b, 5)
    # one dictionary with exact duplicates: the copy is the nearest (self excluded)
    c = np.concatenate([a[:12], a[:12], a[12:]])
    res, _ = both_engines(monkeypatch, c, None, 2, block_rows=16)
    np.testing.assert_array_equal(res.indices[:12, 0], np.arange(12, 24))
    np.testing.assert_array_equal(res.indices[12:24, 0], np.arange(12))
    assert_matches_reference(res, c, None, 2)


def test_zero_rows_in_a_and_b(monkeypatch):
    """Dead features are zero rows. A zero row of A scores 0 against everything, so its list
    overflows and it falls back: indices 0..k-1. A row whose only non-negative scores are B's
    zero rows gets those, lowest index first, at exactly 0 (products of -x and 0 are -0.0)."""
    rng = np.random.default_rng(4)
    n_b, d, k = 300, 16, 4
    b = np.abs(unit(rng.standard_normal((n_b, d))))  # positive entries
    zero_b = np.arange(5, n_b, 7)
    b[zero_b] = 0.0
    a = unit(rng.standard_normal((40, d)))
    a[[3, 17]] = 0.0
    a[9] = -unit(np.ones((1, d)))[0]  # negative against every live row of B
    res, info = both_engines(monkeypatch, a, b, k)
    assert not np.isnan(res.values).any()
    assert info["fallback_rows"] >= 2
    for row in (3, 17):
        np.testing.assert_array_equal(res.indices[row], np.arange(k))
    np.testing.assert_array_equal(res.indices[9], zero_b[:k])
    np.testing.assert_array_equal(res.values[9], np.zeros(k, dtype=np.float32))
    assert_matches_reference(res, a, b, k)


@pytest.mark.parametrize("k", [30, 39])
def test_k_near_the_number_of_targets(monkeypatch, k):
    """k up to n_b - 1 in a self comparison: the sample is all of B and most of each row is
    listed; k is not a power of two (the selection loops are exact for any k)."""
    rng = np.random.default_rng(k)
    a = unit(rng.standard_normal((40, 24)))
    res, info = both_engines(monkeypatch, a, None, k)
    assert info["fallback_rows"] == 0
    assert_matches_reference(res, a, None, k)


def test_overflowing_rows_fall_back_and_stay_exact(monkeypatch):
    """B is clusters of 300 near-duplicates, with top-k scores closer than float32 resolves:
    more entries within the bf16 error of the best one than a row's list holds (CAP=256 at
    k=10), so rows fall back to float32; the answer is still float64's up to such ties."""
    rng = np.random.default_rng(3)
    centre = rng.standard_normal((4, 96))
    b = unit(np.repeat(centre, 300, axis=0) + 1e-3 * rng.standard_normal((1200, 96)))
    a = unit(centre + 1e-3 * rng.standard_normal((4, 96)))
    a = np.concatenate([a, unit(rng.standard_normal((12, 96)))])
    res, info = both_engines(monkeypatch, a, b, 10, near_ties=True)
    assert topk_triton.plan(10, 1200)[0] < 300
    assert info["fallback_rows"] >= 1
    assert_matches_reference(res, a, b, 10)


def test_moderate_clusters_are_rescored_without_fallback(monkeypatch):
    """Clusters of 40 near-duplicates: many more candidates than k, all within the list, so the
    re-score (64 slots wide here) itself carries them, exactly. Their scores differ by less
    than float32 resolves near 1, so the order inside a cluster is float64's up to 1e-6."""
    rng = np.random.default_rng(6)
    centre = rng.standard_normal((6, 64))
    b = unit(np.repeat(centre, 40, axis=0) + 2e-3 * rng.standard_normal((240, 64)))
    b = np.concatenate([b, unit(rng.standard_normal((900, 64)))])
    a = unit(centre + 2e-3 * rng.standard_normal((6, 64)))
    res, info = both_engines(monkeypatch, a, b, 10, near_ties=True)
    assert info["fallback_rows"] == 0
    assert_matches_reference(res, a, b, 10)
    assert np.all(res.indices // 40 == np.arange(6)[:, None])


def test_candidate_lists_hold_exactly_the_entries_above_threshold():
    """The fused epilogue on its own: per row, every column whose score reaches the threshold
    is counted once, CAP of them are stored with their float32 scores (the rest only
    counted: that row falls back), nothing is written past a list, and rows past the block's
    end list nothing. A holds rows 5..41 of B, so each row's own column (score ~1) is listed
    like any other; the shortlist drops it."""
    rng = np.random.default_rng(7)
    m, n, d, cap, offset = 37, 150, 48, 16, 5
    dev = torch.device(DEVICE)
    b16 = torch.from_numpy(unit(rng.standard_normal((n, d)))).to(torch.bfloat16)
    a16 = b16[offset : offset + m].clone()
    s = a16.double() @ b16.double().T  # bf16 products are exact in float64
    # row i's threshold lies halfway between its i-th and (i+1)-th best scores: i entries
    srt = s.sort(dim=1, descending=True).values
    want = torch.arange(m)
    upper = torch.cat([torch.tensor([2.0], dtype=torch.float64), srt[want[1:], want[1:] - 1]])
    assert float((upper - srt[want, want]).min()) > 1e-5  # far from float32 rounding
    thr = ((upper + srt[want, want]) / 2).float()
    tiles = SMALL if DEVICE == "cpu" else topk_triton.TILES
    count = torch.zeros(m, dtype=torch.int32, device=dev)
    val = torch.full((m, cap), -7.0, device=dev)
    idx = torch.full((m, cap), -1, dtype=torch.int32, device=dev)
    grid = (math.ceil(m / tiles.block_m) * math.ceil(n / tiles.block_n),)
    topk_triton._candidates_kernel[grid](
        a16.to(dev), b16.to(dev), thr.to(dev), val, idx, count, m, n, d, cap,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k, GROUP_M=tiles.group_m, UPCAST=topk_triton.INTERPRET,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    count, val, idx = count.cpu(), val.cpu(), idx.cpu()
    np.testing.assert_array_equal(count.numpy(), want.numpy())
    for i in range(m):
        stored = min(int(want[i]), cap)
        cols = idx[i, :stored].long()
        above = set(torch.nonzero(s[i] >= float(thr[i])).squeeze(1).tolist())
        assert len(set(cols.tolist())) == stored and set(cols.tolist()) <= above
        np.testing.assert_allclose(val[i, :stored].numpy(), s[i, cols].numpy(), atol=1e-6)
        assert torch.all(idx[i, stored:] == -1)  # nothing written past the list


def test_rescore_is_order_free_and_breaks_ties_to_lower_index():
    """The last kernel on its own: the same candidates in two different orders (as atomics
    leave them) give the same top-k, ordered by value and then index, over exact ties and
    negative scores."""
    rng = np.random.default_rng(8)
    dev = torch.device(DEVICE)
    n, d, k, cap = 60, 24, 6, 32
    b = unit(rng.standard_normal((n, d)))
    b[20:30] = b[10:20]  # exact ties: rows 10..19 duplicated at 20..29
    a = unit(rng.standard_normal((5, d)))
    a[1] = unit(b[12:13] + 0.05 * rng.standard_normal((1, d)))[0]  # nearest: the pair 12, 22
    s = a.astype(np.float64) @ b.astype(np.float64).T
    lists = [rng.choice(n, size=w, replace=False) for w in (6, 19, 32, 25, 11)]
    others = np.setdiff1d(np.arange(n), [12, 22])
    lists[1] = np.concatenate([[22, 12], rng.choice(others, size=17, replace=False)])
    outs = []
    for trial in range(2):
        sel = np.zeros((5, cap), dtype=np.int32)
        for i, lst in enumerate(lists):
            sel[i, : len(lst)] = rng.permutation(lst) if trial else lst
        vals = torch.empty((5, k), device=dev)
        inds = torch.empty((5, k), dtype=torch.int64, device=dev)
        n_sel = torch.tensor([len(x) for x in lists], dtype=torch.int32, device=dev)
        topk_triton._rescore_kernel[(3,)](
            torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev),
            torch.from_numpy(sel).to(dev), n_sel, vals, inds, 5, d, k, cap,
            W=32, ROWS=2, BLOCK_D=16,
        )  # fmt: skip
        outs.append((vals.cpu().numpy(), inds.cpu().numpy()))
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for i, lst in enumerate(lists):
        order = sorted(lst.tolist(), key=lambda j: (-s[i, j], j))
        np.testing.assert_array_equal(outs[0][1][i], order[:k])
        np.testing.assert_allclose(outs[0][0][i], s[i, order[:k]], atol=1e-6)
    np.testing.assert_array_equal(outs[0][1][1][:2], [12, 22])  # the tied pair, lower first


def test_plan_sizes():
    """Lists hold ~8 spacings of the sample per expected neighbour, in powers of two; the
    sample has at least k+1 rows and never more than B; large k goes to the torch engine."""
    for k in (1, 10, 100):
        cap, sample = topk_triton.plan(k, 46080)
        assert cap & (cap - 1) == 0 and k < sample < 46080
        expected = k * 46080 / sample  # listed entries of a random row, on average
        assert expected + 4 * math.sqrt(k) * 46080 / sample < cap
    assert topk_triton.plan(10, 20) == (256, 20)  # small B: the sample is all of it
    assert topk_triton.plan(5, 6)[1] == 6
    assert topk_triton.supports(100) and not topk_triton.supports(1000)


def test_engine_choice_off_cuda():
    """On CPU `auto` keeps the torch engine and never imports triton; forcing the Triton engine
    without CUDA or the interpreter, or naming an unknown engine, is a one-line InputError."""
    code = """
import sys
import numpy as np
import sae_backend
from sae_backend.errors import InputError
from sae_backend.geometry.topk import topk_cosine
a = np.eye(6, dtype=np.float32)
info = {}
topk_cosine(a, None, 2, device="cpu", precision="bf16", info=info)
print(info["engine"], "triton" in sys.modules)
import os
for name in ("triton", "cuda-magic"):
    os.environ["SAE_TOPK_ENGINE"] = name
    try:
        topk_cosine(a, None, 2, device="cpu", precision="bf16")
    except InputError as e:
        print(e)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SAE_TOPK_ENGINE")}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "torch False"
    assert out[1] == "the Triton top-k engine runs on CUDA (on CPU only under TRITON_INTERPRET=1)"
    assert out[2] == "SAE_TOPK_ENGINE='cuda-magic': expected auto, torch, triton"


def test_main_kernel_compiles_for_hopper_on_tensor_cores_without_spills(tmp_path):
    """The fused kernel as a GPU gets it, compiled here for sm_90 (Triton carries ptxas and
    cuobjdump): Hopper tensor-core instructions in its machine code, no register spills, and
    room for two programs per multiprocessor (registers and shared memory), so one's
    epilogue can run under the other's matmul."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "benchmarks/sass_check.py", "candidates"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for line in out:
        report = json.loads(line)
        assert report["hgmma"] > 0
        assert report["spill_instructions"] == 0 and report["stack_bytes"] == 0
        threads = 32 * report["num_warps"]
        assert 2 * report["registers"] * threads <= 65536
        assert 2 * report["shared_bytes"] <= 227 * 1024
    assert len(out) == 1
