"""One huge comparison split by rows of A, merged back into the very same result.

Why rows: the top-k of a row of A depends on that row and on all of B only, so a shard of
rows needs every target but no other rows, and merging is concatenation in row order, with
no candidates to re-rank. Each shard runs the exact blocked top-k (`compare_entry(...,
rows=)`); shards start on multiples of the pass's block size, so every block is the block an
unsharded pass scores and the merged arrays equal it bit for bit (float32 sums depend on a
block's shape, so shards cut elsewhere could differ in the last bit).

Memory of one shard task (`shard_memory`): its rows of A, all of B with the bf16 path's
copies, one score block (`$SAE_TOPK_BLOCK_MB`, default 96 MiB on CPUs, 3 GiB on GPUs) and
its outputs. The Ray executor (`sae_backend.distributed`) runs one shard per task; here they
run one after another, which bounds nothing but shows the merge is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dictionary import Dictionary
from ..types import Directions, Progress
from .compare import compare_entry
from .topk import default_block_rows, pick_device

__all__ = ["compare_in_shards", "merge_entries", "row_shards", "shard_memory"]

Entry = tuple[dict[str, np.ndarray], dict[str, Any]]


def row_shards(n_rows: int, shard_rows: int, block_rows: int) -> list[slice]:
    """Step-1 slices covering range(n_rows) in order: `shard_rows` rounded up to whole blocks
    of `block_rows`, so every shard starts on a block edge; the last may be shorter."""
    if shard_rows < 1 or block_rows < 1:
        raise ValueError(f"shard_rows and block_rows must be positive: {shard_rows}, {block_rows}")
    size = -(-shard_rows // block_rows) * block_rows
    return [slice(r0, min(n_rows, r0 + size)) for r0 in range(0, n_rows, size)]


def merge_entries(entries: Sequence[Entry]) -> Entry:
    """The shards' (arrays, meta) as one entry: each named array concatenated along its first
    axis in the order given; every shard must name the same arrays and carry the same meta."""
    if not entries:
        raise ValueError("no shards to merge")
    names, meta = list(entries[0][0]), entries[0][1]
    for arrays, other in entries[1:]:
        if list(arrays) != names or other != meta:
            raise ValueError("shards disagree on their arrays or metadata")
    merged = {name: np.concatenate([arrays[name] for arrays, _ in entries]) for name in names}
    return merged, dict(meta)


def compare_in_shards(
    a: Dictionary,
    b: Dictionary | None,
    *,
    directions: Directions,
    k: int,
    shard_rows: int,
    device: str = "auto",
    progress: Progress | None = None,
) -> Entry:
    """`compare_entry(a, b, ...)` computed shard by shard and merged: equal to it, bit for bit.
    progress(done, total) counts rows of A."""
    n_a = len(a.alive_index)
    n_b = n_a if b is None else len(b.alive_index)
    shards = row_shards(n_a, shard_rows, default_block_rows(pick_device(device).type, n_b))
    parts = []
    for s in shards:
        parts.append(compare_entry(a, b, directions=directions, k=k, device=device, rows=s))
        if progress is not None:
            progress(s.stop, n_a)
    return merge_entries(parts)


def shard_memory(
    rows: int, n_b: int, d: int, k: int, *, within: bool, device_type: str = "cpu"
) -> int:
    """Bytes a shard of `rows` rows of A against n_b targets needs at its peak, beyond the
    dictionaries themselves (on a GPU, the float32 inputs are also held once on the host):

    * targets: B as float32 (4 n_b d; within A, all of A) plus the bf16 path's copies, which
      peak at 8 n_b d while they are built and keep 2 n_b d after;
    * A's rows as float32 (4 rows d; within A they are part of the targets);
    * one score block (`default_block_rows` x n_b float32) and the re-score buffer (16 MiB
      on CPUs, 1 GiB on GPUs);
    * outputs: values float32 and indices int64, 12 rows k.
    """
    targets = 4 * n_b * d + 8 * n_b * d
    own_rows = 0 if within else 4 * rows * d
    block = 4 * default_block_rows(device_type, n_b) * n_b
    gather = 2**30 if device_type == "cuda" else 16 * 2**20
    return targets + own_rows + block + gather + 12 * rows * k
