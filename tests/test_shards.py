"""Row shards of one comparison (geometry/shards.py, topk_cosine(rows=...)): merged, they are
the unsharded result bit for bit, on both scoring paths, within A and across, and they equal
float64 references on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.geometry.compare import compare
from sae_backend.geometry.shards import compare_in_shards, merge_entries, row_shards
from sae_backend.geometry.topk import topk_cosine
from tests.factories import unit_rows


def unit(m: np.ndarray) -> np.ndarray:
    return unit_rows(m)[0].astype(np.float32)


def test_row_shards_are_whole_blocks_covering_every_row():
    shards = row_shards(1000, 150, 64)  # 150 rows round up to 3 blocks of 64
    assert [(s.start, s.stop) for s in shards] == [(0, 192), (192, 384), (384, 576),
                                                   (576, 768), (768, 960), (960, 1000)]  # fmt: skip
    assert row_shards(10, 100, 64) == [slice(0, 10)]
    assert row_shards(0, 100, 64) == []
    with pytest.raises(ValueError):
        row_shards(10, 0, 64)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("within", [False, True])
def test_aligned_shards_merge_into_the_unsharded_pass_bit_for_bit(precision, within):
    """A [700, 48] with near-duplicates of B's rows planted: shards of two 64-row blocks,
    concatenated, are the same bits as one pass; every row also equals float64."""
    rng = np.random.default_rng(4)
    b = unit(rng.standard_normal((650, 48)))
    a = unit(np.concatenate([b[:400] + 0.05 * rng.standard_normal((400, 48)),
                             rng.standard_normal((300, 48))]))  # fmt: skip
    other = None if within else b
    whole = topk_cosine(a, other, 3, device="cpu", precision=precision, block_rows=64)
    parts = [
        topk_cosine(a, other, 3, device="cpu", precision=precision, block_rows=64, rows=s)
        for s in row_shards(len(a), 128, 64)
    ]
    np.testing.assert_array_equal(np.concatenate([p.values for p in parts]), whole.values)
    np.testing.assert_array_equal(np.concatenate([p.indices for p in parts]), whole.indices)

    s64 = a.astype(np.float64) @ (a if within else b).astype(np.float64).T
    if within:
        np.fill_diagonal(s64, -np.inf)
    order = np.argsort(-s64, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(whole.indices, order)
    np.testing.assert_allclose(whole.values, np.take_along_axis(s64, order, 1), atol=1e-6)
    if not within:  # the planted partners
        np.testing.assert_array_equal(whole.indices[:400, 0], np.arange(400))


def test_a_shard_off_the_block_grid_still_gives_its_rows():
    """rows=100:300 (not on a block edge): the same neighbours, values within float32."""
    rng = np.random.default_rng(5)
    a, b = unit(rng.standard_normal((500, 32))), unit(rng.standard_normal((450, 32)))
    whole = topk_cosine(a, b, 2, device="cpu", precision="fp32", block_rows=64)
    part = topk_cosine(a, b, 2, device="cpu", precision="fp32", block_rows=64, rows=slice(100, 300))
    np.testing.assert_array_equal(part.indices, whole.indices[100:300])
    np.testing.assert_allclose(part.values, whole.values[100:300], atol=1e-6)
    with pytest.raises(ValueError, match="step 1"):
        topk_cosine(a, b, 2, device="cpu", rows=slice(0, 100, 2))


@pytest.fixture()
def big_pair(monkeypatch):
    """A [4200, 32] (some dead), B a noisy permuted copy of 3000 of A's rows plus 1300 others:
    4200 x 4300 pairs, past the size from which precision="auto" may take the bf16 path, while
    a shard of 500 rows is not; blocks of 64 rows (SAE_TOPK_BLOCK_MB=1)."""
    monkeypatch.setenv("SAE_TOPK_BLOCK_MB", "1")
    rng = np.random.default_rng(6)
    dec_a = rng.standard_normal((4200, 32))
    dec_a[[7, 99, 1234]] = 0.0  # dead: not compared
    perm = rng.permutation(3000)
    dec_b = np.concatenate([dec_a[perm] + 0.1 * rng.standard_normal((3000, 32)),
                            rng.standard_normal((1300, 32))])  # fmt: skip
    a = Dictionary.from_raw(RawSAE(dec_a), source="a", format="test")
    b = Dictionary.from_raw(RawSAE(dec_b), source="b", format="test")
    return a, b, dec_a, dec_b, perm


@pytest.mark.parametrize("within", [False, True])
def test_compare_in_shards_is_the_cached_comparison(big_pair, within):
    a, b, dec_a, dec_b, perm = big_pair
    other = None if within else b
    whole = compare(a, other, k=2, device="cpu", cache=False)
    arrays, meta = compare_in_shards(a, other, directions="decoder", k=2, shard_rows=500,
                                     device="cpu")  # fmt: skip
    assert meta == {}
    np.testing.assert_array_equal(arrays["values"], whole.values)
    np.testing.assert_array_equal(arrays["indices"], whole.indices)
    ia = a.alive_index
    if not within:  # A's row perm[j] was copied to B's row j
        where = np.full(4200, -1)
        where[perm] = np.arange(3000)
        copied = where[ia] >= 0
        np.testing.assert_array_equal(whole.nearest[copied], where[ia][copied])
        s64 = unit_rows(dec_a)[0][ia] @ unit_rows(dec_b)[0].T
        np.testing.assert_allclose(whole.max_cos, s64.max(1), atol=1e-6)


def test_merge_entries_refuses_shards_that_disagree():
    one = ({"values": np.zeros((2, 1), np.float32)}, {})
    with pytest.raises(ValueError, match="disagree"):
        merge_entries([one, ({"other": np.zeros((2, 1), np.float32)}, {})])
    with pytest.raises(ValueError, match="no shards"):
        merge_entries([])


@pytest.mark.parametrize("path", ["fp32", "bf16"])
def test_a_fixed_precision_overrides_the_per_process_timing(path, monkeypatch):
    """SAE_TOPK_PRECISION fixes the path "auto" takes for large passes (on CPUs it is
    otherwise a timing per process, and the two paths may differ in the last bit); small
    passes stay float32."""
    monkeypatch.setenv("SAE_TOPK_PRECISION", path)
    rng = np.random.default_rng(7)
    a, b = unit(rng.standard_normal((4200, 16))), unit(rng.standard_normal((4100, 16)))
    info: dict = {}
    fixed = topk_cosine(a, b, 1, device="cpu", info=info)
    assert info["path"] == path  # 4200 x 4100 pairs: past the small-pass size
    np.testing.assert_array_equal(
        fixed.values, topk_cosine(a, b, 1, device="cpu", precision=path).values
    )
    topk_cosine(a[:100], b[:100], 1, device="cpu", info=info)
    assert info["path"] == "fp32"
