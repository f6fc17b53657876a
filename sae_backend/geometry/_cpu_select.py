"""The compiled selection step of topk.py's bf16 path on CPUs (`_cpu_select.cpp`).

Why compiled: after each bf16 score block, the torch path's selection (group maxima, a top-k
of them, gathers, masks, nonzero) makes about ten passes over a block too large for any
cache and costs as much as the matmul itself. The C++ kernel makes one pass per row while
it is in cache, with the same float32 arithmetic, so it keeps the same candidates and sends
the same rows to the exact fallback: results are identical (tests/test_cpu_select.py).

Why a plain `g++` call and ctypes rather than torch's extension loader: no torch headers (a
torch extension takes a minute to compile), no second OpenMP runtime beside torch's (the
kernel uses std::thread), and loading takes milliseconds.

The build happens once per machine, at first use, into `<SAE_CACHE_DIR or ~/.cache>/
sae_kernels/<digest>/`; the digest covers the source, the compiler, the flags and the CPU
(`-march=native`), so a shared home folder never loads a build made for another CPU.
Concurrent first uses build once (a lock file); the CLI builds it quietly in the background
while dictionaries load (`kernel(quiet=True)`). Without a compiler, or with `SAE_CPU_KERNEL=off`,
`kernel()` is None and topk.py keeps its torch selection: same results, slower.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import settings

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_cpu_select.cpp")
ABI_VERSION = 3  # sae_select_abi_version() of a build this module can call
_FLAGS = ("-O3", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-pthread")
_NATIVE = ("-march=native",)  # tried first; without it if the compiler refuses

_lock = threading.Lock()
_compiling = threading.Event()  # set while this process compiles
_loaded: Kernel | None = None
_failed: str | None = None


class Kernel:
    """The loaded library, with typed wrappers taking contiguous CPU tensors."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.lib, self.path = lib, path
        p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.sae_candidates.argtypes = [p, i64, i64, i64, i64, i64, i64, i64, p, i64, p, p, p, p,
                                       c_int]  # fmt: skip
        lib.sae_candidates.restype = None
        lib.sae_top_pairs.argtypes = [p, p, i64, i64, p, i64, p, p, c_int]
        lib.sae_top_pairs.restype = None
        lib.sae_block.argtypes = [p, p, p, p, i64, i64, i64, i64, i64, i64, i64, i64, p, i64, p,
                                  p, p, p, c_int]  # fmt: skip
        lib.sae_block.restype = None
        lib.sae_dots.argtypes = [p, p, i64, p, p, i64, p]
        lib.sae_dots.restype = None
        lib.sae_transpose16.argtypes = [p, i64, i64, p, c_int]
        lib.sae_transpose16.restype = None

    def transpose(self, scores: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """A contiguous transposed copy of a contiguous 2-D bf16 CPU tensor [rows, cols], into
        `out` [cols, rows] when given (a reused buffer saves the page faults of a new one)."""
        import torch

        if scores.dtype != torch.bfloat16 or scores.ndim != 2 or not scores.is_contiguous():
            raise ValueError("expected a contiguous 2-D bf16 tensor")
        rows, cols = scores.shape
        if out is None:
            out = torch.empty((cols, rows), dtype=torch.bfloat16)
        elif out.shape != (cols, rows) or out.dtype != torch.bfloat16 or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous bf16 tensor of shape ({cols}, {rows})")
        self.lib.sae_transpose16(scores.data_ptr(), rows, cols, out.data_ptr(),
                                 torch.get_num_threads())  # fmt: skip
        return out

    def block(
        self,
        scores: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        *,
        n_groups: int,
        group: int,
        self_offset: int | None,
        k: int,
        n_keep: int,
        delta: torch.Tensor,
        max_pairs: int,
        floor: torch.Tensor | None = None,
        a_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block of topk.py's bf16 path after its matmul: rows `a` [m, d] (float32) with
        their strided bf16 scores [m, group * n_groups] against `b` [n_b, d] (float32).
        `floor` [m] float32, if given: values each row's k-th best exact score is known to
        reach (from targets outside `b`); candidates below what it allows are skipped.
        `a_index` [m] int64, if given: score row i belongs to row a_index[i] of `a` (any
        number of rows), so rows in another order need no reordered copy of `a`.

        Returns values [m, k], indices [m, k] and complete [m] bool; rows that are not
        complete hold padding and need topk.py's exact fallback. With a floor, a row may
        have fewer than k candidates here: its missing places are (-inf, 0).
        """
        import torch

        m, d = (scores.shape[0], a.shape[1]) if a_index is not None else a.shape
        tensors = [(scores, torch.bfloat16), (a, torch.float32), (b, torch.float32),
                   (delta, torch.float32)] + ([] if floor is None else [(floor, torch.float32)])  # fmt: skip
        if a_index is not None:
            tensors.append((a_index, torch.int64))
            if a_index.shape != (m,) or (m and not 0 <= int(a_index.min()) <= int(a_index.max()) < a.shape[0]):
                raise ValueError(f"a_index must be [{m}] rows of a")
        for t, dtype in tensors:
            if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError(f"expected a contiguous CPU {dtype} tensor, got {t.dtype}")
        if scores.shape != (m, group * n_groups) or b.shape[1] != d or delta.shape != (m,):
            raise ValueError("scores, a, b and delta do not fit together")
        if floor is not None and floor.shape != (m,):
            raise ValueError(f"floor must have shape ({m},), got {tuple(floor.shape)}")
        values = torch.empty((m, k), dtype=torch.float32)
        indices = torch.empty((m, k), dtype=torch.int64)
        complete = torch.empty(m, dtype=torch.uint8)
        self.lib.sae_block(
            scores.data_ptr(), a.data_ptr(), None if a_index is None else a_index.data_ptr(),
            b.data_ptr(), m, d, n_groups, group, b.shape[0],
            -1 if self_offset is None else self_offset, k, n_keep, delta.data_ptr(), max_pairs,
            None if floor is None else floor.data_ptr(), values.data_ptr(), indices.data_ptr(),
            complete.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return values, indices, complete.bool()

    def dots(self, x: torch.Tensor, y: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """[n] float32 dot products x[pairs[q, 0]] . y[pairs[q, 1]], in the kernel's order."""
        import torch

        x, y = x.float().contiguous(), y.float().contiguous()
        pi = pairs[:, 0].to(torch.int64).contiguous()
        pj = pairs[:, 1].to(torch.int64).contiguous()
        out = torch.empty(len(pairs), dtype=torch.float32)
        self.lib.sae_dots(x.data_ptr(), y.data_ptr(), x.shape[1], pi.data_ptr(), pj.data_ptr(),
                          len(pairs), out.data_ptr())  # fmt: skip
        return out

    def candidates(
        self,
        scores: torch.Tensor,
        *,
        n_groups: int,
        group: int,
        n_b: int,
        self_offset: int | None,
        k: int,
        n_keep: int,
        delta: torch.Tensor,
        max_pairs: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidates of each row of a strided bf16 score block [m, group * n_groups].

        Returns cand [m, max_pairs] int64 (the first counts[i] of row i are its candidate B
        indices, ascending), counts [m] int64, complete [m] bool (false: the row needs the
        exact fallback) and tau [m] float32 (the threshold, for tests).
        """
        import torch

        m = scores.shape[0]
        assert scores.dtype == torch.bfloat16 and scores.is_contiguous()
        assert scores.shape[1] == group * n_groups and delta.dtype == torch.float32
        delta = delta.contiguous()
        cand = torch.empty((m, max_pairs), dtype=torch.int64)
        counts = torch.empty(m, dtype=torch.int64)
        complete = torch.empty(m, dtype=torch.uint8)
        tau = torch.empty(m, dtype=torch.float32)
        self.lib.sae_candidates(
            scores.data_ptr(), m, n_groups, group, n_b, -1 if self_offset is None else self_offset,
            k, n_keep, delta.data_ptr(), max_pairs, cand.data_ptr(), counts.data_ptr(),
            complete.data_ptr(), tau.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return cand, counts, complete.bool(), tau

    def top_pairs(
        self, vals: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of each row's first counts[i] (value, index) pairs of vals/idx [m, w]:
        value descending, then index ascending (topk.py's `_select`); padded with (-inf, 0)."""
        import torch

        m, w = vals.shape
        vals = vals.to(torch.float32).contiguous()
        idx = idx.to(torch.int64).contiguous()
        counts = counts.to(torch.int64).contiguous()
        out_v = torch.empty((m, k), dtype=torch.float32)
        out_i = torch.empty((m, k), dtype=torch.int64)
        self.lib.sae_top_pairs(
            vals.data_ptr(), idx.data_ptr(), m, w, counts.data_ptr(), k, out_v.data_ptr(),
            out_i.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return out_v, out_i


def kernel(quiet: bool = False) -> Kernel | None:
    """The kernel, built on first use (once per machine); None when it cannot be had.

    A build takes a few seconds once: it says so on stderr when the caller waits for it,
    unless `quiet` (the CLI builds quietly in the background while dictionaries load; a
    computation that then has to wait for that build says so instead)."""
    global _loaded, _failed
    if _loaded is not None:
        return _loaded
    if settings.CPU_KERNEL.get() == "off":
        return None
    if not _lock.acquire(blocking=False):
        if _compiling.is_set() and not quiet:
            print("waiting for the one-time build of the CPU top-k kernel...", file=sys.stderr)
        _lock.acquire()
    try:
        if _loaded is None and _failed is None:
            try:
                _loaded = _load(_build(quiet))
            except (OSError, subprocess.SubprocessError, KernelUnavailable) as e:
                _failed = str(e)
                _log.warning(
                    "CPU selection kernel unavailable (%s); using the torch selection "
                    "(same results, slower)", _failed,
                )  # fmt: skip
    finally:
        _lock.release()
    return _loaded


def is_built() -> bool:
    """Whether a build for this machine is already on disk (then loading takes milliseconds)."""
    try:
        return (_build_dir() / _LIB).is_file()
    except KernelUnavailable:
        return False


class KernelUnavailable(Exception):
    """No compiler, a failed compile, or a library that does not load."""


_LIB = "libsae_select.so"


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    raise KernelUnavailable("no C++ compiler found (g++, c++, clang++ or $CXX)")


def _build_dir() -> Path:
    """<base>/sae_kernels/<digest of source, compiler, flags, CPU, python platform>."""
    cxx = _compiler()
    try:
        version = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"{cxx} --version failed: {e}") from None
    h = hashlib.blake2b(digest_size=12)
    for part in (SOURCE.read_bytes(), version.encode(), repr(_FLAGS + _NATIVE).encode(),
                 _cpu_identity().encode(), platform.platform().encode()):  # fmt: skip
        h.update(part)
        h.update(b"\0")
    return settings.base_dir() / "sae_kernels" / h.hexdigest()


def _cpu_identity() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))


def _build(quiet: bool = False) -> Path:
    """The library for this machine, compiled now if no build is on disk."""
    folder = _build_dir()
    lib = folder / _LIB
    if lib.is_file():
        return lib
    settings.make_private_dir(folder)
    fd = settings.open_lock_file(folder / ".build.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if lib.is_file():  # another process built it while we waited
            return lib
        _compiling.set()
        try:
            _compile(_compiler(), lib, quiet)
        finally:
            _compiling.clear()
        return lib
    finally:
        os.close(fd)


def _compile(cxx: str, lib: Path, quiet: bool = False) -> None:
    """Compile SOURCE into `lib` (atomically), natively optimised if the compiler can."""
    if not quiet:
        print(f"compiling the CPU top-k kernel once for this machine ({cxx})...", file=sys.stderr)
    t0 = time.perf_counter()
    error = "failed"
    for flags in (_NATIVE + _FLAGS, _FLAGS):
        tmp = Path(tempfile.mkstemp(dir=lib.parent, prefix=".build.", suffix=".so")[1])
        try:
            done = subprocess.run(
                [cxx, *flags, str(SOURCE), "-o", str(tmp)],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if done.returncode == 0:
                os.replace(tmp, lib)
                _log.info("built %s in %.1f s", lib, time.perf_counter() - t0)
                return
            error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        finally:
            tmp.unlink(missing_ok=True)
    raise KernelUnavailable(f"{cxx} failed: {error}")


def _load(path: Path) -> Kernel:
    try:
        lib = ctypes.CDLL(str(path))
        version = lib.sae_select_abi_version()
    except (OSError, AttributeError) as e:
        raise KernelUnavailable(f"{path} does not load: {e}") from None
    if version != ABI_VERSION:
        raise KernelUnavailable(f"{path} has ABI {version}, expected {ABI_VERSION}")
    found = Kernel(lib, path)
    _check_dots(found)
    return found


def _check_dots(found: Kernel) -> None:
    """The kernel's re-scores must be bit for bit torch's (topk.py's `_rescore`: bmm of
    gathered rows), or the two paths would not give identical results: check on random rows
    of a few widths and depths before use."""
    import torch

    g = torch.Generator().manual_seed(0)
    for d in (1, 7, 64, 768, 1000):
        x = torch.nn.functional.normalize(torch.randn(40, d, generator=g), dim=1)
        y = torch.nn.functional.normalize(torch.randn(6, d, generator=g), dim=1)
        idx = torch.randint(0, 40, (6, 7), generator=g)
        want = torch.bmm(x[idx.reshape(-1)].view(6, 7, d), y.unsqueeze(2)).squeeze(2)
        pairs = torch.stack([idx.reshape(-1), torch.arange(6).repeat_interleave(7)], 1)
        got = found.dots(x, y, pairs).view(6, 7)
        if not torch.equal(got, want):
            raise KernelUnavailable(
                "its float32 dot products differ from torch.bmm's on this machine"
            )
