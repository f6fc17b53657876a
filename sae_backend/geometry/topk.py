"""Exact top-k cosine neighbours between two sets of unit directions, in blocks.

No n_a x n_b matrix is ever held: rows of A are processed in blocks against all of B, so
memory is O(block_rows x n_b) whatever the sizes.

Two exact paths, chosen per device (`precision="auto"`) by what is fastest there:

* "fp32": score blocks in float32 (TF32 off) and take the top-k directly.
* "bf16": score blocks with bf16 inputs (2-4x faster on GPUs and on CPUs with bf16 units),
  then re-score in float32 every candidate that could be in the true top-k. Which ones could
  is decided by a rigorous bound on the bf16 error (below), so the result is the same as the
  float32 path's: every reported value is an exact float32 dot product, and no true top-k
  neighbour is ever missed. Rows whose candidates do not fit the fixed candidate budget fall
  back to the float32 path, so the guarantee holds for any data.

The bound. For unit-ish rows a, b with bf16 roundings a', b' (errors e_a = a - a', e_b = b - b'):
    |a.b - a'.b'| <= |a| |e_b| + |e_a| |b'|                          (Cauchy-Schwarz)
plus float32 accumulation (<= d * 2^-22 * |a'| |b'|, generous for tensor cores) and the final
rounding of the score to bf16 (<= 2^-8 |score| relative). With the per-row |e_a| and the
largest |e_b| this gives, per row i, a bound delta_i + u |s~| on every score's error. If t is
the k-th largest approximate score of the row, the true k-th largest is >= t - u|t| - delta_i,
so any true top-k neighbour j has s~_j + u|s~_j| >= t - u|t| - 2 delta_i: these are the
candidates. Candidates are found without sorting whole rows: rows are cut into groups of
`GROUP` columns, the best groups by their maximum are kept, and only their entries compete.

Two engines run the bf16 path with the same bound, tie rule and result: `_Bf16Scorer` (torch
operations on a bf16 score block) and, on CUDA when `triton` is installed, the fused kernels of
`topk_triton.py`, which never write the score block to memory. `SAE_TOPK_ENGINE=torch|triton`
forces one (default `auto`, settings.TOPK_ENGINE).

On CPUs `_Bf16Scorer`'s selection, re-scoring and final top-k run in a compiled kernel
(`_cpu_select`, built once per machine) when a C++ compiler is there: one pass over each
score row while it is in cache instead of ~10 torch passes, with the same arithmetic, so the
same candidates, the same fallback rows and bit for bit the same values and indices.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from .. import settings
from ..activity import exclusive
from ..errors import InputError
from ..types import TopkEngine
from . import _cpu_select

GROUP = 64  # columns per group when shortlisting candidates from a bf16 score block
_U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
SMALL_PAIRS = 2**24  # below this many pairs "auto" takes the float32 path
_U_ACC = 2.0**-22  # float32 accumulation, with margin for tensor-core accumulation order


class TopK(NamedTuple):
    """Nearest neighbours of each row of A among the rows of B.

    values:  [n_a, k] float32 cosines, descending (ties: lower index first).
    indices: [n_a, k] int64 row indices into B.
    """

    values: np.ndarray
    indices: np.ndarray


def pick_device(device: str = "auto") -> torch.device:
    """CUDA when present, then MPS, else CPU (or exactly what `device` names; an InputError
    for a name torch does not know or a device this machine lacks)."""
    if device != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise InputError(f"device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
        mps = getattr(torch.backends, "mps", None)
        present = {
            "cpu": True,
            "cuda": torch.cuda.is_available()
            and (dev.index is None or dev.index < torch.cuda.device_count()),
            "mps": mps is not None and mps.is_available(),
        }
        if not present.get(dev.type, False):
            raise InputError(f"device {device!r} is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_PRECISION_CHOICE: dict[str, str] = {}


def auto_precision(n_a: int, n_b: int, device: torch.device) -> str:
    """The path precision="auto" takes for an n_a x n_b pass: float32 for small passes (fast
    enough, and no timing of the hardware), else `pick_precision(device)`."""
    return "fp32" if n_a * n_b < SMALL_PAIRS else pick_precision(device)


def pick_precision(device: torch.device) -> str:
    """The fastest exact path for this device: "bf16" (candidates + re-score) or "fp32".

    GPUs with tensor cores always gain from bf16; on CPUs it depends on the hardware
    (bf16 units or not), so time one small product of each kind once per process.
    `$SAE_TOPK_PRECISION` (bf16 or fp32) overrides it: the two paths' values can differ in
    the last float32 bit, and processes that must agree bit for bit (a Ray run's tasks)
    cannot rely on a timing.
    """
    forced = settings.TOPK_PRECISION.get()
    if forced != "auto":
        return forced
    key = str(device)
    if key not in _PRECISION_CHOICE:
        if device.type == "cuda":
            choice = "bf16"
        elif device.type == "cpu":
            choice = "bf16" if _cpu_bf16_speedup() > 2.0 else "fp32"
        else:
            choice = "fp32"
        _PRECISION_CHOICE[key] = choice
    return _PRECISION_CHOICE[key]


def _cpu_bf16_speedup() -> float:
    """How many times faster a bf16 matmul is than fp32 here (best of a few short runs)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 768, generator=g)
    b = torch.randn(768, 4096, generator=g)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            x @ y
            best = min(best, time.perf_counter() - t0)
        timings[dtype] = best
    return timings[torch.float32] / timings[torch.bfloat16]


def topk_cosine(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor | None = None,
    k: int = 1,
    *,
    device: str = "auto",
    precision: str = "auto",
    block_rows: int | None = None,
    rows: slice | None = None,
    progress: Callable[[int, int], None] | None = None,
    info: dict | None = None,
) -> TopK:
    """Top-k cosine neighbours of each row of `a` [n_a, d] among the rows of `b` [n_b, d].

    Rows must already be unit norm or zero (Dictionary rows are). `b=None` compares `a` with
    itself and excludes each row's own index. Values are float32 dot products, equal to a
    float64 reference within ~1e-6; ties are broken towards the lower index.
    `precision` is "auto", "bf16" or "fp32"; `info`, if given, receives what was done
    (path, device, rows that fell back to fp32).
    `rows` (a step-1 slice) computes only those rows of `a`, still against all of `b` (of
    `a` itself when b is None): one shard of the pass, results [len(rows), k]. The path
    ("auto") is chosen from the whole pass's size, and rows are scored in blocks of
    `block_rows` counted from row 0, so shards starting at multiples of `block_rows` give
    the very bits of the unsharded pass (block shapes change the last bit of float32 sums).
    """
    self_mode = b is None
    dev = pick_device(device)
    ta = _to_device(a, dev)
    tb = ta if b is None else _to_device(b, dev)
    if ta.ndim != 2 or tb.ndim != 2 or ta.shape[1] != tb.shape[1]:
        raise ValueError(f"shapes {tuple(ta.shape)} and {tuple(tb.shape)} do not share d")
    n_a, n_b = ta.shape[0], tb.shape[0]
    limit = n_b - 1 if self_mode else n_b
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} must be between 1 and {limit} (the number of targets)")
    if precision == "auto":
        precision = auto_precision(n_a, n_b, dev)
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', not {precision!r}")

    bm = block_rows or default_block_rows(dev.type, n_b)
    start, stop, step = (rows or slice(None)).indices(n_a)
    if step != 1:
        raise ValueError(f"rows must be a slice with step 1, got {rows}")
    m = max(0, stop - start)
    label = f"top-{k} of {m:,} x {n_b:,} on {dev}"
    tiles = tiles_kernel(precision, dev, n_a, within=True) if self_mode and m == n_a else None
    if tiles is not None:
        from .topk_tiles import TILE, within_topk

        with exclusive(str(dev), label, m * n_b):
            (v, i), fallback_rows = within_topk(ta, k, tiles, progress=progress)
        if info is not None:
            info.update(path=precision, device=str(dev), block_rows=TILE, engine="torch",
                        order="tiles", fallback_rows=fallback_rows)  # fmt: skip
        return TopK(v.numpy(), i.numpy())
    values = torch.empty((m, k), dtype=torch.float32)
    indices = torch.empty((m, k), dtype=torch.int64)
    run = _bf16_engine(tb, k) if precision == "bf16" else None
    fallback_rows = 0
    with exclusive(str(dev), label, m * n_b), _no_tf32():
        for r0 in range(start - start % bm, stop, bm):  # blocks counted from row 0
            lo, r1 = max(start, r0), min(stop, r0 + bm)
            self_offset = lo if self_mode else None
            if run is None:
                own = None if self_offset is None else torch.arange(lo, r1, device=dev)
                v, i = exact_topk(ta[lo:r1], tb, k, own)
            else:
                v, i, n_fb = run.block(ta[lo:r1], self_offset)
                fallback_rows += n_fb
            values[lo - start : r1 - start] = v.cpu()
            indices[lo - start : r1 - start] = i.cpu()
            if progress is not None:
                progress(r1 - start, m)
    if info is not None:
        info.update(path=precision, device=str(dev), block_rows=bm, fallback_rows=fallback_rows)
        info.update(engine=run.engine if run is not None else "torch", order="rows")
    return TopK(values.numpy(), indices.numpy())


def tiles_kernel(
    precision: str, dev: torch.device, n: int, within: bool
) -> _cpu_select.Kernel | None:
    """The compiled kernel when a whole pass with two sides (`within` one set of n rows, or
    both directions between two of at least n rows) takes `topk_tiles`: bf16 on a CPU, sets
    large enough for the tiles to gain (`topk_tiles.gains`), the torch engine and
    $SAE_TOPK_ORDER=tiles; else None (the one-sided pass, as for shards and GPUs)."""
    from .topk_tiles import gains

    if not (precision == "bf16" and dev.type == "cpu" and gains(n, within)):
        return None
    if settings.TOPK_ORDER.get() != "tiles" or settings.TOPK_ENGINE.get() == "triton":
        return None
    return _cpu_select.kernel()


def _to_device(x: np.ndarray | torch.Tensor, dev: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:  # no copy: a dictionary's rows are read-only arrays, and nothing here writes to them
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            t = torch.from_numpy(np.asarray(x))
    return t.to(device=dev, dtype=torch.float32).contiguous()


def default_block_rows(device_type: str, n_b: int) -> int:
    """Rows per block: float32-sized score blocks of ~96 MB on CPU, ~3 GB on a GPU (where
    bf16 blocks of ~16k rows ran fastest on an H100; see docs/benchmarks.md), or
    `$SAE_TOPK_BLOCK_MB` on any device. Public because row shards align to it."""
    mb = settings.TOPK_BLOCK_MB.get()
    budget = mb * 2**20 if mb is not None else 3 * 2**30 if device_type == "cuda" else 96 * 2**20
    rows = budget // max(1, 4 * n_b)
    return int(max(64, min(16384, rows)))


class _no_tf32:
    """Keep CUDA matmuls exact for our bounds while inside: float32 in true float32 (no TF32)
    and bf16 products accumulated in float32 (no reduced-precision split-K reductions)."""

    def __enter__(self):
        m = torch.backends.cuda.matmul
        self.saved = (m.allow_tf32, m.allow_bf16_reduced_precision_reduction)
        m.allow_tf32 = False
        m.allow_bf16_reduced_precision_reduction = False

    def __exit__(self, *exc):
        m = torch.backends.cuda.matmul
        m.allow_tf32, m.allow_bf16_reduced_precision_reduction = self.saved


def _select(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of candidate (value, index) pairs per row: value descending, then index ascending."""
    order = torch.argsort(idx, dim=1, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)[:, :k]
    return vals.gather(1, order), idx.gather(1, order)


def _topk_rows(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of a score block: value descending, then index ascending.

    torch.topk picks arbitrary members of a tie, so take a few spare and order them; rows
    whose k-th value ties past the spare (a zero row of A ties everywhere) are sorted whole.
    """
    kk = min(s.shape[1], k + 8)
    v, i = torch.topk(s, kk, dim=1)
    if kk < s.shape[1]:
        spill = (v[:, k - 1] == v[:, -1]).nonzero().squeeze(1)
        if spill.numel():
            v[spill], i[spill] = (
                x[:, :kk] for x in torch.sort(s[spill], dim=1, descending=True, stable=True)
            )
    return _select(v, i, k)


def exact_topk(
    a: torch.Tensor, b: torch.Tensor, k: int, own: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 top-k of rows `a` [m, d] against all of `b` [n_b, d]: the float32 path's blocks
    and every bf16 engine's fallback. `own` [m], if given: the column of each row's own index
    (excluded). Where `b` has fewer than k rows, the missing places are (-inf, 0)."""
    s = a @ b.T
    if own is not None:
        s[torch.arange(a.shape[0], device=a.device), own] = -torch.inf
    kk = min(k, s.shape[1])
    v, i = _topk_rows(s, kk)
    if kk < k:
        v = torch.cat([v, v.new_full((a.shape[0], k - kk), -torch.inf)], 1)
        i = torch.cat([i, i.new_zeros((a.shape[0], k - kk))], 1)
    return v, i


# re-score gather buffer, in float32 elements: small on CPU (cache-friendly), large on GPUs
# (few launches); 16 MB and 1 GB
_GATHER_FLOATS = {"cpu": 4 * 2**20, "cuda": 2**28}


class _Buffers:
    """Reused scratch tensors: fresh large allocations per block cost page faults on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = int(np.prod(shape))
        buf = self.flat.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.flat[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


def _threshold(t: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """[m] candidate threshold tau: with k approximate scores >= t in a row, every true top-k
    neighbour j has approximate score >= tau (module docstring); -1e-6 covers this arithmetic.
    topk_triton's `_tau` is the same formula inside a kernel."""
    y = t - _U_BF16 * t.abs() - 2 * delta
    return torch.where(y >= 0, y / (1 + _U_BF16), y / (1 - _U_BF16)) - 1e-6


class _Bf16Bound:
    """What both bf16 engines share: B, k, the per-B constants of the error bound (module
    docstring), the per-row delta and the exact float32 fallback for rows that overflow."""

    engine = "torch"

    def __init__(self, b: torch.Tensor, k: int):
        n_b, d = b.shape
        self.b, self.k, self.n_b = b, k, n_b
        # largest rounding error and norm over B's rows; on CPUs a slice at a time (row norms
        # do not depend on the slicing; float32 copies of all of B would double its memory)
        err, norm = [], []
        step = 8192 if b.device.type == "cpu" else max(1, n_b)
        for r0 in range(0, n_b, step):
            b16f = b[r0 : r0 + step].to(torch.bfloat16).float()
            err.append((b[r0 : r0 + step] - b16f).norm(dim=1).max())
            norm.append(b16f.norm(dim=1).max())
        self.err_b_max = float(torch.stack(err).max()) if err else 0.0
        self.norm_b16_max = float(torch.stack(norm).max()) if norm else 0.0
        self.gamma = d * _U_ACC

    def block(
        self, a: torch.Tensor, self_offset: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Top-k of rows `a` [m, d]; returns values, indices [m, k] and the fallback count."""
        raise NotImplementedError

    def _delta(self, a: torch.Tensor, a16: torch.Tensor) -> torch.Tensor:
        """[m] bound on |a.b - a'.b'| plus accumulation error, for every b in B."""
        a16f = a16.float()
        err_a = (a - a16f).norm(dim=1)
        bound = (
            a.norm(dim=1) * self.err_b_max
            + err_a * self.norm_b16_max
            + self.gamma * a16f.norm(dim=1) * self.norm_b16_max
        )
        return bound * (1 + 1e-4) + 1e-7

    def _exact_rows(
        self, a: torch.Tensor, self_rows: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 top-k of the rows whose candidates overflowed; self_rows = their own indices."""
        return exact_topk(a, self.b, self.k, self_rows)


def _triton_scorer(b: torch.Tensor, k: int) -> _Bf16Bound:
    from . import topk_triton  # imported only here: never on the CPU path or at import time

    return topk_triton.TritonScorer(b, k)


def _triton_fits(b: torch.Tensor, k: int) -> bool:
    """Whether `auto` takes the Triton engine: CUDA, triton installed, k within its budget."""
    if b.device.type != "cuda" or importlib.util.find_spec("triton") is None:
        return False
    from . import topk_triton

    return topk_triton.supports(k)


def _bf16_engine(b: torch.Tensor, k: int) -> _Bf16Bound:
    """The bf16 engine for this B: $SAE_TOPK_ENGINE (`auto`, `torch` or `triton`)."""
    name: TopkEngine = settings.TOPK_ENGINE.get()
    if name == "auto":
        name = "triton" if _triton_fits(b, k) else "torch"
    return _BF16_ENGINES[name](b, k)


def keep_groups(n_groups: int, k: int) -> int:
    """Groups kept per row of a bf16 block (random data needs ~2k + 10); rows needing more
    fall back to float32."""
    return min(n_groups, max(k, -(-5 * k // 2) + 24))


def max_pairs(k: int) -> int:
    """Candidates re-scored per row before the row falls back to float32."""
    return 4 * k + 64


def strided_layout(b: torch.Tensor) -> torch.Tensor:
    """B's rows [n_b, d] as bf16 columns [d, n_groups * GROUP] in the strided layout.

    Group j holds B rows j*GROUP .. j*GROUP+GROUP-1, and member r of group j sits in score
    column r*n_groups + j, so group maxima reduce over an outer axis (contiguous, fast)
    instead of 64-wide inner runs; the last group is padded with zero rows. Built a slice of
    groups at a time: no whole bf16 copy of B beside it."""
    n_b, d = b.shape
    n_groups = -(-n_b // GROUP)
    out = torch.zeros((d, n_groups * GROUP), dtype=torch.bfloat16, device=b.device)
    layout = out.view(d, GROUP, n_groups)  # [coordinate, member r, group j]
    step = max(1, 8192 // GROUP)
    for j0 in range(0, n_groups, step):
        j1 = min(n_groups, j0 + step)
        b16 = b[j0 * GROUP : min(n_b, j1 * GROUP)].to(torch.bfloat16)
        if b16.shape[0] < (j1 - j0) * GROUP:  # the last group's padding: zero rows
            b16 = torch.cat([b16, b16.new_zeros((j1 - j0) * GROUP - b16.shape[0], d)])
        layout[:, :, j0:j1] = b16.view(j1 - j0, GROUP, d).permute(2, 1, 0)
    return out


def strided_order(n: int) -> torch.Tensor:
    """[n_groups * GROUP] the B row (0..n-1) behind each column of `strided_layout` of n rows;
    for n below GROUP (one group) the first n entries, the identity (padding left out)."""
    n_groups = -(-n // GROUP)
    col = torch.arange(n_groups * GROUP)
    order = (col % n_groups) * GROUP + col // n_groups
    return order[:n] if n_groups == 1 else order


class _Bf16Scorer(_Bf16Bound):
    """bf16 shortlisting + float32 re-scoring against a fixed B (see the module docstring)."""

    def __init__(self, b: torch.Tensor, k: int):
        super().__init__(b, k)
        n_b, d = b.shape
        self.n_groups = -(-n_b // GROUP)
        self.pad = self.n_groups * GROUP - n_b
        self.b16_t = strided_layout(b)
        self.n_keep_groups = keep_groups(self.n_groups, k)
        self.max_pairs = max_pairs(k)
        # first re-score table's width (random data needs ~2k + 3 candidates). On CPUs the
        # second table for long rows saves gather traffic; on GPUs its extra launches and
        # syncs cost more than padding one table (H100: 26.5 vs 23.2 ms, k=10)
        self.cap = 2 * k + 8 if b.device.type == "cpu" else 2**62
        self.buf = _Buffers(b.device)
        # on CPUs the selection runs compiled when it can be built (same results, faster)
        self.kernel = _cpu_select.kernel() if b.device.type == "cpu" else None

    def block(
        self, a: torch.Tensor, self_offset: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Top-k of rows `a` [m, d]; returns values, indices [m, k] and the fallback count."""
        if self.kernel is not None:
            return self._block_compiled(a, self_offset, self.kernel)
        k, m, dev = self.k, a.shape[0], a.device
        a16 = a.to(torch.bfloat16)
        s = torch.mm(a16, self.b16_t, out=self.buf.get("s", (m, self.b16_t.shape[1]), a16.dtype))
        groups = s.view(m, GROUP, self.n_groups)  # [m, member r, group j] = score vs B[j*GROUP + r]
        if self.pad:
            groups[:, GROUP - self.pad :, -1] = -torch.inf
        if self_offset is not None:
            own = torch.arange(self_offset, self_offset + m, device=dev)
            groups[torch.arange(m, device=dev), own % GROUP, own // GROUP] = -torch.inf
        gval, gidx = torch.topk(groups.amax(dim=1), self.n_keep_groups, dim=1)
        index = gidx.unsqueeze(1).expand(m, GROUP, self.n_keep_groups)
        kept = torch.gather(groups, 2, index)  # [m, GROUP, groups kept]
        # k scores are >= t (the maxima of the k best groups, or with fewer groups than k the
        # k best scores), so the true k-th best score is >= t - u|t| - delta: every true
        # top-k neighbour scores >= tau here
        if k <= self.n_keep_groups:
            t = gval[:, k - 1].float()
        else:
            t = torch.topk(kept.reshape(m, -1), k, dim=1).values[:, k - 1].float()
        tau = _threshold(t, self._delta(a, a16))
        complete = gval[:, -1].float() < tau if self.n_keep_groups < self.n_groups else None
        del s, groups
        mask = kept >= tau[:, None, None]
        counts = mask.sum(dim=(1, 2))
        ok = counts <= self.max_pairs
        complete = ok if complete is None else complete & ok
        mask &= complete[:, None, None]
        # pack each row's candidates to the left of a table and re-score them exactly in
        # float32: the first `cap` of every row, then the rest of the few longer rows in a
        # second table, so padding stays small
        counts = torch.where(complete, counts, 0)
        width = max(int(counts.max()) if m else 0, k)
        rows, off, gpos = mask.nonzero(as_tuple=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(rows.numel(), device=dev) - starts[rows]
        cols = gidx[rows, gpos] * GROUP + off
        cap = min(width, self.cap)
        first = slot < cap
        v, i = self._rescore_table(a, rows[first], slot[first], cols[first], cap)
        if width > cap:
            big = (counts > cap).nonzero().squeeze(1)
            rest = ~first
            local = torch.searchsorted(big, rows[rest])
            vb, ib = self._rescore_table(a[big], local, slot[rest] - cap, cols[rest], width - cap)
            v[big], i[big] = _select(torch.cat([v[big], vb], 1), torch.cat([i[big], ib], 1), k)
        bad = (~complete).nonzero().squeeze(1)
        if bad.numel():
            off_rows = None if self_offset is None else bad + self_offset
            v[bad], i[bad] = self._exact_rows(a[bad], off_rows)
        return v, i, int(bad.numel())

    def _block_compiled(
        self, a: torch.Tensor, self_offset: int | None, kernel: _cpu_select.Kernel
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """`block` with the selection and the re-scoring compiled (`_cpu_select`): the same
        candidates, re-scores bit for bit and rows sent to the fallback, so the same results."""
        a16 = a.to(torch.bfloat16)
        s = torch.mm(a16, self.b16_t, out=self.buf.get("s", (a.shape[0], self.b16_t.shape[1]), a16.dtype))
        v, i, complete = kernel.block(
            s, a, self.b, n_groups=self.n_groups, group=GROUP, self_offset=self_offset, k=self.k,
            n_keep=self.n_keep_groups, delta=self._delta(a, a16), max_pairs=self.max_pairs,
        )  # fmt: skip
        bad = (~complete).nonzero().squeeze(1)
        if bad.numel():
            off_rows = None if self_offset is None else bad + self_offset
            v[bad], i[bad] = self._exact_rows(a[bad], off_rows)
        return v, i, int(bad.numel())

    def _rescore_table(
        self,
        a: torch.Tensor,
        rows: torch.Tensor,
        slot: torch.Tensor,
        cols: torch.Tensor,
        width: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of candidates (row, slot) -> B index `cols` of rows `a` [m, d], re-scored exactly."""
        m = a.shape[0]
        idx = torch.zeros((m, width), dtype=torch.int64, device=a.device)
        idx[rows, slot] = cols
        filled = torch.zeros((m, width), dtype=torch.bool, device=a.device)
        filled[rows, slot] = True
        vals = torch.where(filled, self._rescore(a, idx), -torch.inf)
        if width < self.k:  # rows with fewer candidates than k: pad (they hold >= k overall)
            pad = self.k - width
            vals = torch.cat([vals, vals.new_full((m, pad), -torch.inf)], 1)
            idx = torch.cat([idx, idx.new_zeros((m, pad))], 1)
        return _select(vals, idx, self.k)

    def _rescore(self, a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """[m, w] exact float32 a_i . b_idx[i, j], gathering B rows a chunk of rows at a time."""
        m, w = idx.shape
        d = a.shape[1]
        out = torch.empty((m, w), dtype=torch.float32, device=a.device)
        step = max(1, _GATHER_FLOATS.get(a.device.type, 2**24) // (w * d))
        for r0 in range(0, m, step):
            r1 = min(m, r0 + step)
            rows = self.buf.get("gather", ((r1 - r0) * w, d), torch.float32)
            torch.index_select(self.b, 0, idx[r0:r1].reshape(-1), out=rows)
            torch.bmm(rows.view(r1 - r0, w, d), a[r0:r1].unsqueeze(2), out=out[r0:r1].unsqueeze(2))
        return out


_BF16_ENGINES: dict[TopkEngine, Callable[[torch.Tensor, int], _Bf16Bound]] = {
    "torch": _Bf16Scorer,
    "triton": _triton_scorer,
}
