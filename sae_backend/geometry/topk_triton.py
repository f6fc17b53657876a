"""The exact bf16 top-k path as fused Triton kernels: no n_a x n_b score matrix in memory.

Same answer, bound and tie rule as `topk._Bf16Scorer` (the bound is in topk.py's docstring):
every reported value is a float32 dot product, no true top-k neighbour is missed, ties go to
the lower index, and rows whose candidates overflow fall back to float32. Used on CUDA only;
on CPU tensors the kernels run only under `TRITON_INTERPRET=1` (the tests).

Per block of A rows:

1. Sample threshold (torch): bf16 scores against S strided rows of B (S ~ n_b/8). The k-th
   best sample score t_s gives thr = tau(t_s) (topk._threshold): the true k-th best over all
   of B is at least the sample's, so no true top-k neighbour scores below thr.
2. `_candidates_kernel`: bf16 tensor-core tiles of A . B^T with float32 accumulators. The
   epilogue appends every (score, column) >= thr to its row's list (CAP slots, a counter per
   row taken atomically) and writes nothing else. Random rows collect about k n_b / S entries.
3. `_shortlist_kernel`: per row, t = the k-th best listed score (the k-th best over all of B:
   every score >= t_s >= thr is listed) and the final tau(t); the entries >= tau are packed.
4. `_rescore_kernel`: float32 dot products of the packed entries with gathered B rows, then the
   top k by (value descending, index ascending) through sortable int64 keys.

Rows whose list overflowed CAP take `_exact_rows` (float32 over all of B), as in the torch
engine. Candidate order in a list depends on the atomics, so every later step is order-free.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..errors import InputError
from .topk import _U_BF16, _Bf16Bound, _Buffers, _threshold


def _interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (TRITON_INTERPRET, read by triton when
    each kernel below is defined; older triton has no `knobs`)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRET = _interpreting()

MAX_CAP = 4096  # longest candidate list per row; k whose list would be longer take torch
SPARE = 32  # list slots for entries within the bound's margin of the k-th best


class Tiles(NamedTuple):
    """Launch shape of `_candidates_kernel`: a BLOCK_M x BLOCK_N score tile per program, K in
    steps of BLOCK_K, programs ordered in bands of GROUP_M row tiles (L2 reuse of B)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


# Hopper (H100/H200): a 128 x 128 bf16 tile per warpgroup (wgmma m64n128k16, HGMMA in the
# machine code), a 3-deep pipeline of 64-wide K steps (96 KB of shared memory), ~213
# registers and no spills (benchmarks/sass_check.py): two programs fit on a multiprocessor,
# so one's epilogue runs under the other's matmul. benchmarks/gpu_check.sh times others.
TILES = Tiles(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=4, num_stages=3)
# elements per program in the per-row kernels: registers on a GPU; fewer programs (and so
# fewer Python-level steps) under the interpreter
ROW_TILE = 1 << 16 if INTERPRET else 4096


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def plan(k: int, n_b: int) -> tuple[int, int]:
    """(CAP, S): list slots per row and sample size for top-k among n_b rows.

    The listed entries of a random row are those above the k-th best of S random ones:
    ~k n_b / S of them, Gamma-distributed; k + 4 sqrt(k) + 6 of n_b / S spacings is exceeded
    in fewer than ~1e-4 rows (those fall back). CAP is a power of two for the sorts, and S
    fills it: S = n_b / R with R the spacings CAP holds after SPARE.
    """
    need = k + 4 * math.sqrt(k) + 6
    cap = _next_pow2(int(8 * need))
    ratio = (cap - SPARE) / need
    sample = min(n_b, max(k + 1, math.ceil(n_b / ratio)))
    if 2 * sample > n_b:  # a sample of most of B costs more than it saves
        sample = n_b
    return cap, sample


def supports(k: int) -> bool:
    """Whether this engine takes top-`k` (longer lists than MAX_CAP go to the torch engine)."""
    return plan(k, 1 << 30)[0] <= MAX_CAP


@triton.jit
def _tau(t, delta, U: tl.constexpr):
    """topk._threshold inside a kernel (same formula)."""
    y = t - U * tl.abs(t) - 2 * delta
    return tl.where(y >= 0, y / (1 + U), y / (1 - U)) - 1e-6


@triton.jit
def _order(x):
    """float32 -> int32 whose signed order is the float order (-0.0 just below +0.0)."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _unorder(o):
    """The inverse of `_order` (int32 -> float32)."""
    return (o ^ ((o >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _candidates_kernel(
    a_ptr,  # [M, D] bf16, D a multiple of BLOCK_K (zero-padded)
    b_ptr,  # [N, D] bf16
    thr_ptr,  # [M] fp32 list threshold per row
    cand_val_ptr,  # [M, CAP] fp32 listed scores (out)
    cand_idx_ptr,  # [M, CAP] int32 listed columns (out)
    count_ptr,  # [M] int32 entries >= thr per row, zeroed by the caller (may exceed CAP)
    M,
    N,
    D,
    CAP,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter only: its bf16 dot multiplies raw bits
):
    """One score tile: bf16 tensor-core products, float32 accumulators, and an epilogue that
    lists the entries >= their row's threshold. The tile itself is never stored. In a self
    comparison a row's own column is listed too (its score ~1 always passes); the shortlist
    drops it, which keeps the per-element work here to one comparison."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # bands of GROUP_M row tiles walk B together, so B tiles are reused from L2
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # rows past the end load a valid row again (no masks in the main loop); the epilogue
    # drops them
    a_rows = (rm % M).to(tl.int64)
    b_rows = (rn % N).to(tl.int64)
    a_ptrs = a_ptr + a_rows[:, None] * D + rk[None, :]
    b_ptrs = b_ptr + b_rows[None, :] * D + rk[:, None]  # [BLOCK_K, BLOCK_N] view of B^T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, tl.cdiv(D, BLOCK_K)):
        a = tl.load(a_ptrs)
        b = tl.load(b_ptrs)
        if UPCAST:
            a = a.to(tl.float32)  # exact: a bf16 product fits a float32
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    thr = tl.load(thr_ptr + rm, mask=rm < M, other=float("inf"))
    hit = (acc >= thr[:, None]) & (rn < N)[None, :]
    # Hits are rare (~k n_b / S per row in all, a fraction of one per row per tile), so no
    # ranking of the whole tile: one atomic per row reserves its hits' slots, then each round
    # takes every row's best remaining hit (lowest column among equals) until the row with
    # the most hits is done: row-wise maxima on the accumulators' own layout, no spills.
    cand = tl.where(hit, acc, float("-inf"))
    n_hit = tl.sum(hit.to(tl.int32), axis=1)
    base = tl.atomic_add(count_ptr + rm, n_hit, mask=n_hit > 0, sem="relaxed")
    row_off = rm * CAP  # int32: the caller keeps M * CAP < 2**31
    cols = tl.arange(0, BLOCK_N)
    for j in range(tl.max(n_hit, axis=0)):
        v, c = tl.max(cand, axis=1, return_indices=True, return_indices_tie_break_left=True)
        cand = tl.where(cols[None, :] == c[:, None], float("-inf"), cand)
        keep = (j < n_hit) & (base + j < CAP)
        tl.store(cand_val_ptr + row_off + base + j, v, mask=keep)
        tl.store(cand_idx_ptr + row_off + base + j, pid_n * BLOCK_N + c, mask=keep)


@triton.jit
def _shortlist_kernel(
    cand_val_ptr,  # [M, CAP] fp32
    cand_idx_ptr,  # [M, CAP] int32
    count_ptr,  # [M] int32
    delta_ptr,  # [M] fp32 bound per row (topk._Bf16Bound._delta)
    sel_idx_ptr,  # [M, CAP] int32 packed entries >= tau (out)
    n_sel_ptr,  # [M] int32 (out)
    M,
    K,
    self_offset,  # global row index of row 0 when A is B (SELF): its own column is dropped
    SELF: tl.constexpr,
    CAP: tl.constexpr,
    U: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Per row: t = k-th best listed score, tau(t), and the listed entries >= tau, packed.
    Rows that overflowed CAP (or, impossibly, listed fewer than K) select nothing."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    slots = tl.arange(0, CAP)
    count = tl.load(count_ptr + rows, mask=rows < M, other=0)
    live = (slots[None, :] < count[:, None]) & (count <= CAP)[:, None]
    offs = rows.to(tl.int64)[:, None] * CAP + slots[None, :]
    idx = tl.load(cand_idx_ptr + offs, mask=live, other=0)
    if SELF:
        live = live & (idx != (rows + self_offset)[:, None])
    live = live & (tl.sum(live.to(tl.int32), axis=1) >= K)[:, None]
    vals = tl.load(cand_val_ptr + offs, mask=live, other=float("-inf"))
    # t = the K-th largest value: bisect its order key (32 halvings of the int32 range, each a
    # count; sorting networks would cost more here, and crawl under the interpreter)
    keys = tl.where(live, _order(vals).to(tl.int64), -(1 << 40))
    lo = tl.full((ROWS,), -(1 << 31), tl.int64)  # count(keys >= lo) >= K
    hi = tl.full((ROWS,), 1 << 31, tl.int64)  # count(keys >= hi) < K
    for _ in range(32):
        mid = (lo + hi) >> 1
        enough = tl.sum((keys >= mid[:, None]).to(tl.int32), axis=1) >= K
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid)
    t = _unorder(lo.to(tl.int32))
    delta = tl.load(delta_ptr + rows, mask=rows < M, other=0.0)
    tau = _tau(t, delta, U)
    sel = live & (vals >= tau[:, None])
    sel_i = sel.to(tl.int32)
    pos = tl.cumsum(sel_i, axis=1) - 1
    tl.store(sel_idx_ptr + rows.to(tl.int64)[:, None] * CAP + pos, idx, mask=sel)
    tl.store(n_sel_ptr + rows, tl.sum(sel_i, axis=1), mask=rows < M)


@triton.jit
def _rescore_kernel(
    a_ptr,  # [M, D] fp32
    b_ptr,  # [N, D] fp32
    sel_idx_ptr,  # [M, CAP] int32
    n_sel_ptr,  # [M] int32
    out_val_ptr,  # [M, K] fp32 (out)
    out_idx_ptr,  # [M, K] int64 (out)
    M,
    D,
    K,
    CAP,
    W: tl.constexpr,  # power of two >= every row's n_sel
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Float32 dot products of each row's packed entries, then its top K by value descending,
    index ascending: keys (value order, then 2^31-1-index) are unique, so K rounds of "take
    the largest key" give the tie rule exactly."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    slots = tl.arange(0, W)
    n_sel = tl.load(n_sel_ptr + rows, mask=rows < M, other=0)
    live = slots[None, :] < n_sel[:, None]  # [ROWS, W]
    idx = tl.load(
        sel_idx_ptr + rows.to(tl.int64)[:, None] * CAP + slots[None, :], mask=live, other=0
    )
    a_rows = rows.to(tl.int64) * D
    b_rows = idx.to(tl.int64) * D
    acc = tl.zeros((ROWS, W), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        in_d = dd < D
        a = tl.load(
            a_ptr + a_rows[:, None] + dd[None, :],
            mask=(rows < M)[:, None] & in_d[None, :],
            other=0.0,
        )
        b = tl.load(
            b_ptr + b_rows[:, :, None] + dd[None, None, :],
            mask=live[:, :, None] & in_d[None, None, :],
            other=0.0,
        )
        acc += tl.sum(b * a[:, None, :], axis=2)
    acc = acc + 0.0  # -0.0 -> +0.0, so equal values make equal keys
    key = (_order(acc).to(tl.int64) << 31) | (0x7FFFFFFF - idx).to(tl.int64)
    key = tl.where(live, key, -(1 << 62) - 1)  # below every real key
    out = rows.to(tl.int64) * K
    for j in range(K):
        best = tl.max(key, axis=1)
        key = tl.where(key == best[:, None], -(1 << 62) - 1, key)
        val = _unorder((best >> 31).to(tl.int32))
        tl.store(out_val_ptr + out + j, val, mask=rows < M)
        tl.store(out_idx_ptr + out + j, 0x7FFFFFFF - (best & 0x7FFFFFFF), mask=rows < M)


class TritonScorer(_Bf16Bound):
    """The fused engine against a fixed B; `block` has `_Bf16Scorer.block`'s contract."""

    engine = "triton"

    def __init__(self, b: torch.Tensor, k: int, tiles: Tiles | None = None):
        if b.device.type != "cuda" and not INTERPRET:
            raise InputError(
                "the Triton top-k engine runs on CUDA (on CPU only under TRITON_INTERPRET=1)"
            )
        if not supports(k):
            raise InputError(f"k={k} is beyond the Triton top-k engine; use SAE_TOPK_ENGINE=torch")
        super().__init__(b, k)
        self.tiles = tiles or TILES
        n_b, d = b.shape
        self.cap, self.n_sample = plan(k, n_b)
        self.d_pad = -(-d // self.tiles.block_k) * self.tiles.block_k
        self.b16 = _pad_cols(b.to(torch.bfloat16), self.d_pad)
        sample = torch.arange(self.n_sample, device=b.device) * n_b // self.n_sample
        self.b16_sample_t = self.b16[sample].T  # [d_pad, S]
        # sample_pos[j] = column of B row j in the sample scores, or -1
        self.sample_pos = torch.full((n_b,), -1, dtype=torch.int64, device=b.device)
        self.sample_pos[sample] = torch.arange(self.n_sample, device=b.device)
        self.buf = _Buffers(b.device)

    def block(
        self, a: torch.Tensor, self_offset: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Top-k of rows `a` [m, d]; returns values, indices [m, k] and the fallback count."""
        step = (2**31 - 1) // self.cap  # list offsets are int32 inside the kernels
        if a.shape[0] <= step:
            return self._block(a, self_offset)
        parts = [
            self._block(a[r0 : r0 + step], None if self_offset is None else self_offset + r0)
            for r0 in range(0, a.shape[0], step)
        ]
        values, indices, n_bad = zip(*parts, strict=True)
        return torch.cat(values), torch.cat(indices), sum(n_bad)

    def _block(
        self, a: torch.Tensor, self_offset: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        k, m, dev, cap = self.k, a.shape[0], a.device, self.cap
        a = a.contiguous()
        a16 = a.to(torch.bfloat16)
        delta = self._delta(a, a16).contiguous()
        a16 = _pad_cols(a16, self.d_pad)
        thr = _threshold(self._sample_kth(a16, self_offset), delta).contiguous()

        count = torch.zeros(m, dtype=torch.int32, device=dev)
        cand_val = self.buf.get("cand_val", (m, cap), torch.float32)
        cand_idx = self.buf.get("cand_idx", (m, cap), torch.int32)
        t = self.tiles
        grid = (triton.cdiv(m, t.block_m) * triton.cdiv(self.n_b, t.block_n),)
        _candidates_kernel[grid](
            a16, self.b16, thr, cand_val, cand_idx, count, m, self.n_b, self.d_pad, cap,
            BLOCK_M=t.block_m, BLOCK_N=t.block_n,
            BLOCK_K=t.block_k, GROUP_M=t.group_m, UPCAST=INTERPRET,
            num_warps=t.num_warps, num_stages=t.num_stages,
        )  # fmt: skip

        sel_idx = self.buf.get("sel_idx", (m, cap), torch.int32)
        n_sel = torch.empty(m, dtype=torch.int32, device=dev)
        rows = max(1, ROW_TILE // cap)
        _shortlist_kernel[(triton.cdiv(m, rows),)](
            cand_val, cand_idx, count, delta, sel_idx, n_sel, m, k, self_offset or 0,
            SELF=self_offset is not None, CAP=cap, U=_U_BF16, ROWS=rows, num_warps=4,
        )  # fmt: skip

        bad = (n_sel < k).nonzero().squeeze(1)  # lists that overflowed select nothing
        n_sel[bad] = 0
        width = _next_pow2(int(n_sel.max()))
        block_d = max(16, min(128, _next_pow2(self.b.shape[1]), ROW_TILE // width))
        rows = max(1, ROW_TILE // (width * block_d))
        values = torch.empty((m, k), dtype=torch.float32, device=dev)
        indices = torch.empty((m, k), dtype=torch.int64, device=dev)
        _rescore_kernel[(triton.cdiv(m, rows),)](
            a, self.b, sel_idx, n_sel, values, indices, m, a.shape[1], k, cap,
            W=width, ROWS=rows, BLOCK_D=block_d,
            num_warps=4 if width <= 64 else 8,
        )  # fmt: skip
        if bad.numel():
            own = None if self_offset is None else bad + self_offset
            values[bad], indices[bad] = self._exact_rows(a[bad], own)
        return values, indices, int(bad.numel())

    def _sample_kth(self, a16: torch.Tensor, self_offset: int | None) -> torch.Tensor:
        """[m] k-th best bf16 score of each row against the sample of B (own row excluded)."""
        m = a16.shape[0]
        s = self.buf.get("sample", (m, self.n_sample), torch.bfloat16)
        torch.mm(a16, self.b16_sample_t, out=s)
        if self_offset is not None:
            rows = torch.arange(m, device=a16.device)
            pos = self.sample_pos[rows + self_offset]
            col = pos.clamp(min=0)
            s[rows, col] = torch.where(pos >= 0, -torch.inf, s[rows, col])
        return torch.topk(s, self.k, dim=1).values[:, -1].float()


def _pad_cols(x: torch.Tensor, width: int) -> torch.Tensor:
    """x [n, d] with zero columns up to `width` (zeros change no dot product), contiguous."""
    return F.pad(x, (0, width - x.shape[1])).contiguous()
