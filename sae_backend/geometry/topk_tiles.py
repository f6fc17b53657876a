"""Top-k served from both sides of each score tile: within one set (A against itself) and
between two sets in both directions (A against B and B against A), each pair scored once.

Why: the score matrix of A against itself is symmetric, and that of B against A is the
transpose of A against B. The one-sided pass of `topk.py` scores every pair once per row that
asks for it: a within-dictionary pass (each feature's nearest other feature, the UMAP
neighbour graph) scores each pair twice, and a Similarity page that shows A -> B and B -> A
runs two passes. Here A (and B) are cut into blocks, and each tile of bf16 scores serves the
rows of both its blocks: the rows of block I from the tile, the rows of block J from its
transpose. Within one set only the tiles on and above the diagonal are scored: about half
the multiply-adds of the one-sided pass; between two sets, one pass gives both directions.

Same engine, same results. Each tile goes through the compiled selection of `_cpu_select`
(the bf16 bound of `topk.py`, its candidates and exact float32 re-scores), which returns
each row's exact top-k among that tile's columns; merging the tiles' top-k (value descending,
then index ascending) gives the row's top-k over all columns. A row's best k so far is passed
to the kernel as a floor on its k-th best score, so later tiles re-score only candidates that
could still enter it. The kernel's dot products are symmetric bit for bit (a.b and b.a are
the same float32 sum), so every value equals the one-sided pass's; rows whose candidates
overflow a tile are scored against that tile in float32, like the one-sided fallback (then
the last bit may differ from it: block shapes change float32 sums).

Layout. A tile's columns must be in `strided_layout` order for the kernel, and for its
transpose so must its rows: tiles are computed with the rows of block I in that strided order,
and results are put back in natural order. Blocks are multiples of GROUP rows (the last may be
shorter than GROUP, whose strided order is the natural one, padding last), so no block has
padding inside it. Within one set, diagonal tiles are plain one-sided blocks (self excluded),
scored first so that every row starts the other tiles with a floor.

Used on CPUs with the compiled kernel: by `topk.topk_cosine` for a whole within-set pass, and
by `compare` for a comparison whose reverse is wanted too (`pair_topk`). Shards, GPUs and the
torch selection keep the one-sided pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import _cpu_select
from .topk import (
    GROUP,
    _Bf16Bound,
    _Buffers,
    _select,
    exact_topk,
    keep_groups,
    max_pairs,
    strided_layout,
    strided_order,
)

TILE = 4096  # rows per block: bf16 tiles of 32 MB; a multiple of GROUP


def gains(n: int, within: bool) -> bool:
    """Whether tiles beat the one-sided pass for sets of n rows (the smaller set of a pair).
    Measured on a 2-core EPYC (benchmarks/bench_tiles.py, docs/benchmarks.md): within one
    set the diagonal tiles are whole one-sided blocks and the gain starts at about five
    blocks (0.91x at 12,288 rows, 1.19x at 24,576); for both directions of a pair one pass
    replaces two and gains from two blocks on (1.36x at 12,288)."""
    return n >= (5 if within else 2) * TILE


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


@dataclass
class _Side:
    """One set of rows [n, d] cut into blocks: as the rows asking (their running top-k, each
    block's rows in strided order) and as the columns answered (each block's bf16 strided
    layout)."""

    rows: torch.Tensor
    k: int
    tile: int
    parts: list[tuple[int, int]] = field(init=False)
    order: list[torch.Tensor] = field(init=False)  # per block: natural row of each position
    layouts: list[torch.Tensor] = field(init=False)
    values: torch.Tensor = field(init=False)  # [n, k] best so far, descending
    indices: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        n = self.rows.shape[0]
        self.parts = blocks(n, self.tile)
        self.order = [strided_order(hi - lo) + lo for lo, hi in self.parts]
        self.layouts = [strided_layout(self.rows[lo:hi]) for lo, hi in self.parts]
        self.values = torch.full((n, self.k), -torch.inf)
        self.indices = torch.zeros((n, self.k), dtype=torch.int64)

    def bound_against(self, other: _Side) -> torch.Tensor:
        """[n] this set's per-row bf16 error bounds against `other`'s rows (a slice of rows at
        a time: the bound's float32 temporaries of all rows would be 3x the rows' memory)."""
        bound = _Bf16Bound(other.rows, self.k)
        chunks = [self.rows[r0 : r0 + 8192] for r0 in range(0, self.rows.shape[0], 8192)]
        return torch.cat([bound._delta(c, c.to(torch.bfloat16)) for c in chunks])

    def merge(self, rows: torch.Tensor, v: torch.Tensor, i: torch.Tensor) -> None:
        """Fold a tile's exact top-k of `rows` (natural indices) into the best so far."""
        both_v = torch.cat([self.values[rows], v], 1)
        both_i = torch.cat([self.indices[rows], i], 1)
        self.values[rows], self.indices[rows] = _select(both_v, both_i, self.k)


class _Tiles:
    """Scores tiles of two sides (or of one side with itself) and folds each tile into the
    rows of both; counts the (row, tile) pieces scored in float32."""

    def __init__(self, a: _Side, b: _Side, kernel: _cpu_select.Kernel):
        self.a, self.b, self.kernel = a, b, kernel
        self.delta_a = a.bound_against(b)
        self.delta_b = self.delta_a if b is a else b.bound_against(a)
        self.spare = _Buffers(a.rows.device)
        self.overflow = 0

    def diagonal(self, x: int) -> None:
        """Block x of a set against itself: one-sided, natural order, self excluded."""
        side = self.a
        lo, hi = side.parts[x]
        s = torch.mm(side.rows[lo:hi].to(torch.bfloat16), side.layouts[x])
        self._answer(s, torch.arange(lo, hi), self.delta_a, side, side, x, self_offset=0)

    def tile(self, x: int, y: int) -> None:
        """Block x of A against block y of B, serving the rows of both."""
        a, b = self.a, self.b
        (lo_i, hi_i), (lo_j, hi_j) = a.parts[x], b.parts[y]
        lhs = a.layouts[x].T  # block x's rows in strided order, bf16 (padding last)
        shape = (lhs.shape[0], b.layouts[y].shape[1])
        s = torch.mm(lhs, b.layouts[y], out=self.spare.get("s", shape, torch.bfloat16))
        self._answer(s[: hi_i - lo_i], a.order[x], self.delta_a, a, b, y)
        # the transpose: rows of block y (strided order, padding last) against block x
        t = self.kernel.transpose(s, self.spare.get("t", shape[::-1], torch.bfloat16))
        m_j = hi_j - lo_j
        self._answer(t[:m_j], b.order[y][:m_j], self.delta_b, b, a, x)

    def _answer(
        self,
        s: torch.Tensor,
        rows: torch.Tensor,
        delta: torch.Tensor,
        asking: _Side,
        answering: _Side,
        y: int,
        self_offset: int | None = None,
    ) -> None:
        """Rows `rows` of `asking` (natural indices, in the order of the score rows `s`; `delta`
        the bounds of all its rows) against block y of `answering`, whose rows are the columns
        of `s` in strided order; folded into `asking`'s best so far."""
        lo, hi = answering.parts[y]
        b = answering.rows[lo:hi]
        ng = -(-(hi - lo) // GROUP)
        k = asking.k
        v, i, complete = self.kernel.block(
            s, asking.rows, b, n_groups=ng, group=GROUP, self_offset=self_offset, k=k,
            n_keep=keep_groups(ng, k), delta=delta[rows], max_pairs=max_pairs(k),
            floor=asking.values[rows, k - 1].contiguous(), a_index=rows,
        )  # fmt: skip
        bad = (~complete).nonzero().squeeze(1)
        if bad.numel():  # float32 against this block, as the one-sided fallback does
            self.overflow += int(bad.numel())
            own = None if self_offset is None else bad + self_offset
            v[bad], i[bad] = exact_topk(asking.rows[rows[bad]], b, k, own)
        asking.merge(rows, v, i + lo)


Result = tuple[torch.Tensor, torch.Tensor]  # values [n, k] float32, indices [n, k] int64


def within_topk(
    a: torch.Tensor,
    k: int,
    kernel: _cpu_select.Kernel,
    *,
    tile: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Result, int]:
    """Top-k of each row of `a` [n, d] (unit or zero float32 rows, on the CPU) among the other
    rows: ((values [n, k] descending, ties lower index first; indices [n, k]), how many
    (row, tile) pieces were scored in float32 because their candidates overflowed).
    `tile`: rows per block (default TILE, read at each call)."""
    n = a.shape[0]
    side = _Side(a, k, tile or TILE)
    run = _Tiles(side, side, kernel)
    work = sum((hi - lo) * (n - lo) for lo, hi in side.parts)  # pairs on and above the diagonal
    done = 0
    for x, (lo, hi) in enumerate(side.parts):
        run.diagonal(x)
        done += (hi - lo) ** 2
    _report(progress, done, work, n)
    for x, (lo, hi) in enumerate(side.parts):
        for y in range(x + 1, len(side.parts)):
            run.tile(x, y)
        done += (hi - lo) * (n - hi)
        _report(progress, done, work, n)
    return (side.values, side.indices), run.overflow


def pair_topk(
    a: torch.Tensor,
    b: torch.Tensor,
    k: int,
    kernel: _cpu_select.Kernel,
    *,
    tile: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Result, Result, int]:
    """Top-k of each row of `a` [n_a, d] among the rows of `b` [n_b, d], and of each row of `b`
    among the rows of `a`, from one pass over the scores: (A -> B, B -> A, float32 pieces),
    each result (values descending, ties lower index first; indices)."""
    side_a, side_b = _Side(a, k, tile or TILE), _Side(b, k, tile or TILE)
    run = _Tiles(side_a, side_b, kernel)
    n_a = a.shape[0]
    for x, (_lo, hi) in enumerate(side_a.parts):
        for y in range(len(side_b.parts)):
            run.tile(x, y)
        _report(progress, hi, n_a, n_a)
    return (side_a.values, side_a.indices), (side_b.values, side_b.indices), run.overflow


def _report(progress: Callable[[int, int], None] | None, done: int, work: int, n: int) -> None:
    if progress is not None:
        progress(round(n * done / max(work, 1)), n)
