"""Top-k within one set of directions over half the score matrix: A against itself.

Why: a within-dictionary pass (each feature's nearest other feature, the UMAP neighbour
graph) is the heaviest job of the dashboard, and its score matrix is symmetric. The one-sided
pass of `topk.py` scores every pair twice, once for each row; this one cuts A into blocks and
scores each pair of blocks once (the tiles on and above the diagonal), serving the rows of
both blocks from one bf16 tile: the rows of block I from the tile, the rows of block J from
its transpose. About half the multiply-adds, so about half the time.

Same engine, same results. Each tile goes through the compiled selection of `_cpu_select`
(the bf16 bound of `topk.py`, its candidates and exact float32 re-scores), which returns
each row's exact top-k among that tile's columns; merging the tiles' top-k (value descending,
then index ascending) gives the row's top-k over all columns. A row's best k so far is passed
to the kernel as a floor on its k-th best score, so later tiles re-score only candidates that
could still enter it. The kernel's dot products are symmetric bit for bit (a.b and b.a are
the same float32 sum), so every value equals the one-sided pass's; rows whose candidates
overflow a tile are scored against that tile in float32, like the one-sided fallback.

Layout. A tile's columns must be in `strided_layout` order for the kernel, and for its
transpose so must its rows: off-diagonal tiles are computed with the rows of block I in that
strided order, and results are put back in natural order. Blocks are multiples of GROUP rows
(the last may be shorter than GROUP, whose strided order is the natural one), so no block has
padding inside it. Diagonal tiles are plain one-sided blocks (self excluded).

Used by `topk.topk_cosine` for a whole within-set pass on a CPU with the compiled kernel
(`b=None`, no `rows` shard); shards, GPUs and the torch selection keep the one-sided pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import _cpu_select
from .topk import (
    GROUP,
    _Bf16Bound,
    _Buffers,
    _select,
    _topk_rows,
    keep_groups,
    max_pairs,
    strided_layout,
    strided_order,
)

TILE = 4096  # rows per block: bf16 tiles of 32 MB; a multiple of GROUP


def blocks(n: int, tile: int = TILE) -> list[tuple[int, int]]:
    """[start, stop) of each block: `tile` rows, then the rest as a multiple of GROUP and,
    last, fewer than GROUP rows (so no block but a short last one needs padding)."""
    assert tile % GROUP == 0
    cuts = list(range(0, n - n % tile, tile))
    rest = n % tile
    if rest >= GROUP:
        cuts.append(n - rest)
    if rest % GROUP and n - rest % GROUP > (cuts[-1] if cuts else -1):
        cuts.append(n - rest % GROUP)
    return [(lo, hi) for lo, hi in zip(cuts, [*cuts[1:], n], strict=True)]


def within_topk(
    a: torch.Tensor,
    k: int,
    kernel: _cpu_select.Kernel,
    *,
    tile: int = TILE,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Top-k of each row of `a` [n, d] (unit or zero float32 rows, on the CPU) among the other
    rows: values [n, k] float32 descending (ties: lower index first), indices [n, k], and how
    many (row, tile) pieces were scored in float32 because their candidates overflowed."""
    n, _ = a.shape
    bound = _Bf16Bound(a, k)  # B is A: the error bound's constants over all rows
    parts = blocks(n, tile)
    # per block: its rows in strided order (float32, for re-scores), their bound, the bf16
    # layout of its rows as columns, and its strided order
    order = [strided_order(hi - lo) + lo for lo, hi in parts]
    layouts = [strided_layout(a[lo:hi]) for lo, hi in parts]
    delta = bound._delta(a, a.to(torch.bfloat16))
    # A's rows block by block in strided order (float32): the rows of an off-diagonal tile
    strided = a[torch.cat(order)] if len(parts) > 1 else a
    delta_strided = delta[torch.cat(order)]
    spare = _Buffers(a.device)
    values = torch.full((n, k), -torch.inf)
    indices = torch.zeros((n, k), dtype=torch.int64)
    overflow = 0
    work = sum((hi - lo) * (n - lo) for lo, hi in parts)  # pairs in the tiles on and above it
    done = 0

    def merge(rows: torch.Tensor, v: torch.Tensor, i: torch.Tensor) -> None:
        """Fold a tile's exact top-k of `rows` (natural indices) into the running best."""
        both_v = torch.cat([values[rows], v], 1)
        both_i = torch.cat([indices[rows], i], 1)
        values[rows], indices[rows] = _select(both_v, both_i, k)

    def side(
        s: torch.Tensor,
        rows: torch.Tensor,
        ra: torch.Tensor,
        rd: torch.Tensor,
        target: tuple[int, int],
        self_offset: int | None,
    ) -> None:
        """Rows `rows` (natural indices, in the order of the score rows `s`; their float32 rows
        `ra` and bounds `rd`) against the block `target`, whose rows are the columns of `s`
        in strided order."""
        nonlocal overflow
        lo, hi = target
        b = a[lo:hi]
        ng = -(-(hi - lo) // GROUP)
        v, i, complete = kernel.block(
            s, ra, b, n_groups=ng, group=GROUP, self_offset=self_offset, k=k,
            n_keep=keep_groups(ng, k), delta=rd, max_pairs=max_pairs(k),
            floor=values[rows, k - 1].contiguous(),
        )  # fmt: skip
        bad = (~complete).nonzero().squeeze(1)
        if bad.numel():  # float32 against this block, as the one-sided fallback does
            overflow += int(bad.numel())
            exact = ra[bad] @ b.T
            if self_offset is not None:
                exact[torch.arange(len(bad)), bad + self_offset] = -torch.inf
            kk = min(k, exact.shape[1])
            v[bad], i[bad] = (-torch.inf, 0)
            v[bad, :kk], i[bad, :kk] = _topk_rows(exact, kk)
        merge(rows, v, i + lo)

    # diagonal tiles first (one-sided, self out): every row starts the off-diagonal tiles
    # with a floor, its k-th best within its own block, so they re-score fewer candidates
    for x, (lo_i, hi_i) in enumerate(parts):
        own = a[lo_i:hi_i]
        s = torch.mm(own.to(torch.bfloat16), layouts[x])
        side(s, torch.arange(lo_i, hi_i), own, delta[lo_i:hi_i], (lo_i, hi_i), self_offset=0)
        done += (hi_i - lo_i) ** 2
    if progress is not None:
        progress(round(n * done / work), n)
    for x, (lo_i, hi_i) in enumerate(parts):
        m_i = hi_i - lo_i
        a16_strided = layouts[x].T  # block I's rows in strided order, bf16
        for y in range(x + 1, len(parts)):
            lo_j, hi_j = parts[y]
            m_j = hi_j - lo_j
            s = torch.mm(
                a16_strided,
                layouts[y],
                out=spare.get("s", (m_i, layouts[y].shape[1]), torch.bfloat16),
            )
            side(s, order[x], strided[lo_i:hi_i], delta_strided[lo_i:hi_i], (lo_j, hi_j), None)
            # the transpose: rows of J (strided order, padding last) against the rows of I
            t = kernel.transpose(s, spare.get("t", (s.shape[1], m_i), torch.bfloat16))[:m_j]
            side(
                t, order[y][:m_j], strided[lo_j:hi_j], delta_strided[lo_j:hi_j], (lo_i, hi_i), None
            )
        done += (hi_i - lo_i) * (n - hi_i)
        if progress is not None:
            progress(round(n * done / work), n)
    return values, indices, overflow
