"""Benchmark: max-cos / top-k between two paper-size dictionaries, ours vs the naive method.

    python benchmarks/bench_topk.py                 # 46,080 x 768 vs 46,080 x 768, auto device
    python benchmarks/bench_topk.py --n 12288       # smaller, for a quick look

Every method runs in the same invocation on the same random unit directions (fixed seed):
  naive      the e2e paper script's way: the full n x n cosine matrix (8.5 GB at this size),
             copied to the host, max taken there (one timed run on a GPU: it takes seconds)
  mm_fp32    a plain blocked float32 matmul of the same size, no selection (a floor)
  mm_tf32    the same with TF32 (GPUs only; the floor of a TF32 top-k)
  mm_bf16    the same in bf16 (the floor of the bf16 path)
  tf32_top10 chunked TF32 matmul + torch.topk(10): fast on GPUs, not exact (a baseline)
  ours_torch_k10  topk_cosine k=10 through the torch bf16 engine (SAE_TOPK_ENGINE=torch)
  ours_k10   topk_cosine k=10, auto: on CUDA with triton the fused Triton engine, else torch
  ours_k1    the same with k=1 (max cos + argmax)
  ours_fp32  topk_cosine k=10 forced onto the float32 path
Each method runs in its own subprocess (its own peak RSS on CPU, its own peak GPU memory and a
fresh CUDA context on a GPU, so one crash cannot take the others down). Every method that
returns neighbours is checked against a float64 reference: all rows on a GPU, a random subset
on CPU. Prints one line per method, then a table with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_backend.geometry.topk import TopK, pick_device, topk_cosine  # noqa: E402

METHODS = [
    "naive",
    "mm_fp32",
    "mm_tf32",
    "mm_bf16",
    "tf32_top10",
    "ours_torch_k10",
    "ours_k10",
    "ours_k1",
    "ours_fp32",
]
GPU_ONLY = {"mm_tf32"}


def make_data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    return a, b


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_method(
    name: str, a: torch.Tensor, b: torch.Tensor, dev: torch.device, reps: int = 5
) -> dict:
    """Time one method (on a GPU: the median of `reps` runs after a warm-up); returns the
    timing and what it found (a TopK, or None for the matmul floors)."""
    out: dict = {"method": name}
    ad, bd = a.to(dev), b.to(dev)
    block = 8192 if dev.type == "cuda" else 1024

    def naive():
        torch.backends.cuda.matmul.allow_tf32 = False
        s = (ad @ bd.T).cpu()  # the full matrix on the host, as the paper's script does
        v, i = s.max(dim=1)
        return TopK(v[:, None].numpy(), i[:, None].numpy())

    def mm(dtype, tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x, y = ad.to(dtype), bd.to(dtype)
        buf = torch.empty(block, y.shape[0], dtype=dtype, device=dev)
        for r0 in range(0, x.shape[0], block):
            r1 = min(x.shape[0], r0 + block)
            torch.mm(x[r0:r1], y.T, out=buf[: r1 - r0])
        torch.backends.cuda.matmul.allow_tf32 = False
        return None

    def tf32_top10():
        """Plain chunked top-10 in TF32: fast on GPUs but not exact (a baseline only)."""
        torch.backends.cuda.matmul.allow_tf32 = True
        vals, idx = [], []
        for r0 in range(0, ad.shape[0], block):
            v, i = torch.topk(ad[r0 : r0 + block] @ bd.T, 10, dim=1)
            vals.append(v)
            idx.append(i)
        torch.backends.cuda.matmul.allow_tf32 = False
        return torch.cat(vals), torch.cat(idx)

    def ours(k, precision, engine="auto"):
        os.environ["SAE_TOPK_ENGINE"] = engine
        info: dict = {}
        res = topk_cosine(ad, bd, k, device=str(dev), precision=precision, info=info)
        out["info"] = info
        return res

    fn = {
        "naive": naive,
        "mm_fp32": lambda: mm(torch.float32),
        "mm_tf32": lambda: mm(torch.float32, tf32=True),
        "mm_bf16": lambda: mm(torch.bfloat16),
        "tf32_top10": tf32_top10,
        "ours_torch_k10": lambda: ours(10, "auto", engine="torch"),
        "ours_k10": lambda: ours(10, "auto"),
        "ours_k1": lambda: ours(1, "auto"),
        "ours_fp32": lambda: ours(10, "fp32"),
    }[name]
    with torch.no_grad():
        torch.backends.cuda.matmul.allow_tf32 = False
        if dev.type == "cuda":
            if name == "naive":  # seconds per run: warm up the GPU with a small product only
                (ad[:1024] @ bd.T).cpu()
            else:
                fn()  # warm-up: kernels (Triton compiles here), handles, allocator
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(1 if name == "naive" else reps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                result = fn()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            out["time_s"] = float(np.median(times))
            out["times_s"] = times
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            t0 = time.perf_counter()
            result = fn()
            out["time_s"] = time.perf_counter() - t0
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if isinstance(result, tuple) and isinstance(result[0], torch.Tensor):  # tf32_top10's
        result = TopK(result[0].float().cpu().numpy(), result[1].cpu().numpy())
    out["result"] = result
    return out


def check_exact(res, a: torch.Tensor, b: torch.Tensor, dev: torch.device, rows: np.ndarray) -> dict:
    """Compare values/argmax/top-k sets with a float64 reference on the given rows.

    "Up to exact ties": a reported set that differs from float64's only by members whose
    float64 cosine equals the k-th best one's (duplicated targets) counts as equal.
    """
    k = res.values.shape[1]
    b64 = b.to(dev, torch.float64)
    max_err, argmax_same, argmax_tie, sets_same, sets_tied = 0.0, 0, 0, 0, 0
    for r0 in range(0, len(rows), 512):
        sel = rows[r0 : r0 + 512]
        s = a[sel].to(dev, torch.float64) @ b64.T
        ref_v, ref_i = torch.topk(s, k, dim=1)
        got_v = torch.from_numpy(res.values[sel]).to(dev, torch.float64)
        got_i = torch.from_numpy(res.indices[sel]).to(dev)
        max_err = max(max_err, float((got_v - ref_v).abs().max()))
        same = got_i[:, 0] == ref_i[:, 0]
        argmax_same += int(same.sum())
        # a differing argmax is acceptable only for a tie within float32 resolution
        gap = ref_v[:, 0] - s.gather(1, got_i[:, :1]).squeeze(1)
        argmax_tie += int((~same & (gap <= 1e-6)).sum())
        same_set = (got_i.sort(1).values == ref_i.sort(1).values).all(1)
        sets_same += int(same_set.sum())
        distinct = (got_i.sort(1).values.diff(dim=1) != 0).all(1)
        tied = (s.gather(1, got_i) >= ref_v[:, -1:]).all(1) & distinct
        sets_tied += int((same_set | tied).sum())
    n = len(rows)
    return {
        "rows_checked": n,
        "max_abs_err": max_err,
        "argmax_equal": argmax_same / n,
        "argmax_differs_beyond_tie": n - argmax_same - argmax_tie,
        "topk_sets_equal": sets_same / n,
        "topk_sets_equal_up_to_ties": sets_tied / n,
    }


def single(args) -> None:
    """Subprocess mode: one method, print one JSON line."""
    dev = pick_device(args.device)
    a, b = make_data(args.n, args.d)
    out = run_method(args.single, a, b, dev, reps=args.reps)
    result = out.pop("result")
    if result is not None:
        rng = np.random.default_rng(1)
        n_check = args.n if dev.type == "cuda" else min(args.n, args.check_rows)
        rows = np.sort(rng.choice(args.n, n_check, replace=False))
        out["check"] = check_exact(result, a, b, dev, rows)
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=46080)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--device", default="auto")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--check-rows", type=int, default=2048, help="rows checked vs float64 on CPU")
    p.add_argument("--reps", type=int, default=5, help="timed runs per method on a GPU")
    p.add_argument("--timeout", type=float, default=600, help="seconds per method")
    p.add_argument("--json", help="write all results here")
    p.add_argument("--single", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.single:
        return single(args)
    dev = pick_device(args.device)
    print(
        f"device {dev}: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, n={args.n}, d={args.d}"
    )
    results = []
    methods = [m for m in args.methods.split(",") if dev.type == "cuda" or m not in GPU_ONLY]
    for m in methods:
        cmd = [
            sys.executable,
            __file__,
            "--single",
            m,
            "--n",
            str(args.n),
            "--d",
            str(args.d),
            "--device",
            args.device,
            "--check-rows",
            str(args.check_rows),
            "--reps",
            str(args.reps),
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=os.environ, timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            print(f"{m}: no result within {args.timeout:.0f} s", flush=True)
            continue
        if proc.returncode != 0:
            print(f"{m}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        mem = f"peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""
        print(
            f"{m:10s} {r['time_s'] * 1e3:10.1f} ms   peak RSS {r['peak_rss_mb']:7.0f} MB  {mem}"
            f"  {r.get('info', '')}  {r.get('check', '')}",
            flush=True,
        )
    base = {r["method"]: r["time_s"] for r in results}
    if "naive" in base:
        print(
            "speed-up vs naive: "
            + ", ".join(f"{m} {base['naive'] / t:.1f}x" for m, t in base.items() if m != "naive")
        )
    if "mm_bf16" in base:
        print(
            "time / bf16 matmul floor: "
            + ", ".join(
                f"{m} {t / base['mm_bf16']:.2f}" for m, t in base.items() if m.startswith("ours")
            )
        )
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def print_table(results: list[dict]) -> None:
    """The docs/benchmarks.md table: time, ratios, memory and exactness per method."""
    base = {r["method"]: r["time_s"] for r in results}
    print(
        "\n| method | time | vs naive | vs mm_bf16 | peak memory | max abs err | argmax = fp64 "
        "| top-k sets = fp64 | up to exact ties | info |\n|" + "---|" * 10
    )
    for r in results:
        c = r.get("check", {})
        mem = r.get("peak_gpu_mb", r["peak_rss_mb"])
        cells = [
            r["method"],
            f"{r['time_s'] * 1e3:,.1f} ms",
            f"{base['naive'] / r['time_s']:.0f}x" if "naive" in base else "",
            f"{r['time_s'] / base['mm_bf16']:.2f}" if "mm_bf16" in base else "",
            f"{mem:,.0f} MB",
            f"{c['max_abs_err']:.1e}" if c else "",
            f"{c['argmax_equal']:.2%}" if c else "",
            f"{c['topk_sets_equal']:.2%}" if c else "",
            f"{c['topk_sets_equal_up_to_ties']:.2%}" if c else "",
            " ".join(f"{k}={v}" for k, v in r.get("info", {}).items() if k != "device"),
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
