"""Top-k from both sides of each tile (geometry/topk_tiles): within one set over half the
score matrix, and between two sets in both directions at once, against float64 and against
the one-sided pass.

Small tiles make small inputs cover many tiles: diagonal and off-diagonal ones, blocks that
are multiples of GROUP and a last one shorter than GROUP, k larger than a tile. The data has
planted structure: exact duplicates (ties, lowest index first), near-duplicate pairs that
must find each other across blocks, and zero rows (they tie with everything: the float32
fallback).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_backend.errors import InputError
from sae_backend.geometry import _cpu_select, topk_tiles
from sae_backend.geometry.topk import GROUP, TopK, strided_layout, strided_order, topk_cosine
from sae_backend.geometry.topk_tiles import blocks, pair_topk, within_topk
from tests.test_cpu_select import needs_compiler
from tests.test_topk import assert_matches_reference, unit

pytestmark = needs_compiler


@pytest.fixture()
def kernel() -> _cpu_select.Kernel:
    found = _cpu_select.kernel()
    assert found is not None, f"the kernel did not build or load: {_cpu_select._failed}"
    return found


def planted(n: int, d: int, seed: int) -> np.ndarray:
    """Random unit rows with near-duplicate pairs far apart (different blocks), exact
    duplicates and two zero rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    for i in range(0, n // 2, 7):  # row n-1-i is a slightly moved copy of row i
        x[n - 1 - i] = x[i] + 0.05 * rng.standard_normal(d)
    x[3] = x[n // 2]  # an exact duplicate: a tie at cosine 1
    x = unit(x)
    x[[5, n // 3]] = 0.0
    return x


def result(a: np.ndarray, k: int, kernel: _cpu_select.Kernel, tile: int):
    (v, i), _ = within_topk(torch.from_numpy(a), k, kernel, tile=tile)
    return TopK(v.numpy(), i.numpy())


@pytest.mark.parametrize(
    "n, k, tile",
    [(1000, 1, 128), (1000, 7, 192), (777, 3, 64), (300, 40, 64), (130, 100, 64), (65, 5, 64)],
)
def test_matches_float64_on_planted_structure(n, k, tile, kernel):
    a = planted(n, 40, seed=n + k)
    res = result(a, k, kernel, tile)
    assert res.values.shape == (n, k) and res.values.dtype == np.float32
    assert_matches_reference(res, a, None, k)
    live = np.linalg.norm(a, axis=1) > 0
    for i in range(0, n // 2, 7):  # planted pairs find each other, wherever their blocks are
        if live[i] and live[n - 1 - i] and i != 3:
            assert res.indices[i, 0] == n - 1 - i and res.indices[n - 1 - i, 0] == i
    # the exact duplicate: cosine 1 (within float32), each the other's nearest
    assert res.indices[3, 0] == n // 2 and res.indices[n // 2, 0] == 3


def test_ties_come_out_lowest_index_first(kernel):
    base = unit(np.random.default_rng(0).standard_normal((40, 24)))
    a = np.concatenate([base, base, base])  # every row has two exact copies
    res = result(a, 2, kernel, tile=64)
    n = len(base)
    for i in range(3 * n):
        copies = sorted({i % n, i % n + n, i % n + 2 * n} - {i})
        assert res.indices[i].tolist() == copies, i
    # zero rows tie at cosine 0 with every other row: the lowest indices win
    z = unit(np.random.default_rng(1).standard_normal((150, 16)))
    z[[0, 70, 149]] = 0.0
    res = result(z, 4, kernel, tile=64)
    for i in (0, 70, 149):
        assert res.values[i].tolist() == [0.0] * 4
        assert res.indices[i].tolist() == [j for j in range(5) if j != i][:4]


@pytest.mark.parametrize("n, k", [(3000, 1), (2700, 6)])
def test_identical_to_the_one_sided_pass(n, k, monkeypatch):
    """Both orders re-score with the kernel's dot products, which are symmetric bit for bit:
    on data without fallback rows the two passes agree in every bit."""
    a = unit(np.random.default_rng(n).standard_normal((n, 64)))
    monkeypatch.setattr(topk_tiles, "TILE", 512)
    got: dict[str, tuple] = {}
    for order in ("tiles", "rows"):
        monkeypatch.setenv("SAE_TOPK_ORDER", order)
        info: dict = {}
        res = topk_cosine(a, None, k, device="cpu", precision="bf16", info=info)
        assert info["order"] == order and info["fallback_rows"] == 0
        got[order] = res
    np.testing.assert_array_equal(got["tiles"].indices, got["rows"].indices)
    np.testing.assert_array_equal(got["tiles"].values, got["rows"].values)
    assert_matches_reference(got["tiles"], a, None, k)


def test_which_passes_take_half(monkeypatch):
    a = unit(np.random.default_rng(2).standard_normal((700, 32)))
    monkeypatch.setattr(topk_tiles, "TILE", 128)

    def order(**kw) -> str:
        info: dict = {}
        topk_cosine(a, kw.pop("b", None), 2, device="cpu", info=info, **kw)
        return info["order"]

    assert order(precision="bf16") == "tiles"
    monkeypatch.setattr(topk_tiles, "TILE", 256)  # 700 rows: under five blocks, no gain
    assert order(precision="bf16") == "rows"
    monkeypatch.setattr(topk_tiles, "TILE", 128)
    assert order(precision="fp32") == "rows"
    assert order(precision="bf16", rows=slice(0, 256)) == "rows"  # a shard
    assert order(precision="bf16", b=a) == "rows"  # across two sets
    monkeypatch.setenv("SAE_TOPK_ORDER", "rows")
    assert order(precision="bf16") == "rows"
    monkeypatch.setenv("SAE_TOPK_ORDER", "half")
    with pytest.raises(InputError, match="SAE_TOPK_ORDER"):
        order(precision="bf16")
    monkeypatch.setenv("SAE_TOPK_ORDER", "tiles")
    monkeypatch.setattr(_cpu_select, "kernel", lambda: None)  # no compiler: one-sided
    assert order(precision="bf16") == "rows"


@pytest.mark.parametrize("n", [1, 63, 64, 65, 4095, 4096, 4097, 10_000, 46_080])
def test_blocks_cover_without_inner_padding(n):
    parts = blocks(n, 4096)
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(parts, parts[1:], strict=False))
    sizes = [hi - lo for lo, hi in parts]
    assert all(s % GROUP == 0 for s in sizes[:-1]) and (sizes[-1] % GROUP == 0 or sizes[-1] < GROUP)


@pytest.mark.parametrize("n", [1, 30, 64, 192])
def test_strided_order_names_the_row_behind_each_column(n):
    b = torch.randn(n, 8)
    layout = strided_layout(b)
    order = strided_order(n)
    assert sorted(order.tolist()) == list(range(n))
    torch.testing.assert_close(
        layout[:, : len(order)].T, b[order].to(torch.bfloat16), rtol=0, atol=0
    )


def test_floor_skips_only_what_cannot_enter(kernel):
    """With the true k-th best as the floor the kernel's top-k is unchanged; with a floor above
    every score nothing is re-scored and each row is complete and empty."""
    from sae_backend.geometry.topk import _Bf16Bound, max_pairs

    rng = np.random.default_rng(3)
    a = torch.from_numpy(unit(rng.standard_normal((96, 32))))
    b = torch.from_numpy(unit(rng.standard_normal((300, 32))))
    k = 3
    s = torch.mm(a.to(torch.bfloat16), strided_layout(b))
    delta = _Bf16Bound(b, k)._delta(a, a.to(torch.bfloat16))
    ng = -(-300 // GROUP)
    kw = dict(n_groups=ng, group=GROUP, self_offset=None, k=k, n_keep=ng, delta=delta,
              max_pairs=max_pairs(k))  # fmt: skip
    v0, i0, c0 = kernel.block(s, a, b, **kw)
    assert bool(c0.all())
    v1, i1, c1 = kernel.block(s, a, b, floor=v0[:, k - 1].contiguous(), **kw)
    assert bool(c1.all()) and torch.equal(v1, v0) and torch.equal(i1, i0)
    v2, _, c2 = kernel.block(s, a, b, floor=torch.full((96,), 2.0), **kw)
    assert bool(c2.all()) and bool(torch.isinf(v2).all())


@pytest.mark.parametrize("shape", [(1, 1), (37, 130), (64, 64), (200, 65)])
def test_transpose_is_torchs(shape, kernel):
    s = torch.randn(*shape).to(torch.bfloat16)
    assert torch.equal(kernel.transpose(s), s.T.contiguous())
    out = torch.empty(shape[::-1], dtype=torch.bfloat16)
    assert kernel.transpose(s, out).data_ptr() == out.data_ptr() and torch.equal(out, s.T)


@pytest.mark.parametrize(
    "n_a, n_b, k, tile", [(700, 1000, 1, 128), (300, 257, 6, 64), (64, 65, 3, 64), (90, 40, 30, 64)]
)
def test_pair_gives_both_directions_as_two_one_sided_passes(n_a, n_b, k, tile, kernel):
    rng = np.random.default_rng(n_a + n_b)
    a = unit(rng.standard_normal((n_a, 48)))
    b = unit(rng.standard_normal((n_b, 48)))
    m = min(n_a, n_b) // 2  # planted: b[j] is a slightly moved copy of a[2j]
    b[:m] = unit(a[: 2 * m : 2] + 0.05 * rng.standard_normal((m, 48)))
    b[m] = a[1]  # an exact copy: cosine 1
    a[7] = 0.0  # a zero row: ties at 0 with every row of B
    (va, ia), (vb, ib), _ = pair_topk(
        torch.from_numpy(a), torch.from_numpy(b), k, kernel, tile=tile
    )
    forward, backward = TopK(va.numpy(), ia.numpy()), TopK(vb.numpy(), ib.numpy())
    assert_matches_reference(forward, a, b, k)
    assert_matches_reference(backward, b, a, k)
    assert ib[:m, 0].tolist() == list(range(0, 2 * m, 2)) and ib[m, 0] == 1
    assert forward.values[7].tolist() == [0.0] * k and forward.indices[7].tolist() == list(range(k))
    for x, y, got in ((a, b, forward), (b, a, backward)):  # the one-sided pass, bit for bit
        one = topk_cosine(x, y, k, device="cpu", precision="bf16")
        live = np.linalg.norm(x, axis=1) > 0  # the zero row falls back in both: last bits
        np.testing.assert_array_equal(got.indices, one.indices)
        np.testing.assert_array_equal(got.values[live], one.values[live])


def test_a_index_reads_rows_in_place_of_a_reordered_copy(kernel):
    from sae_backend.geometry.topk import _Bf16Bound, max_pairs

    rng = np.random.default_rng(4)
    a = torch.from_numpy(unit(rng.standard_normal((200, 32))))
    b = torch.from_numpy(unit(rng.standard_normal((256, 32))))
    pick = torch.from_numpy(rng.permutation(200)[:96])  # 96 rows of a, in another order
    s = torch.mm(a[pick].to(torch.bfloat16), strided_layout(b))
    delta = _Bf16Bound(b, 2)._delta(a[pick], a[pick].to(torch.bfloat16))
    kw = dict(n_groups=4, group=GROUP, self_offset=None, k=2, n_keep=4, delta=delta,
              max_pairs=max_pairs(2))  # fmt: skip
    copied = kernel.block(s, a[pick].contiguous(), b, **kw)
    indexed = kernel.block(s, a, b, a_index=pick.contiguous(), **kw)
    for x, y in zip(copied, indexed, strict=True):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="a_index"):
        kernel.block(s, a, b, a_index=torch.full((96,), 500), **kw)
