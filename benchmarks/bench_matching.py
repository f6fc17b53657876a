"""Benchmark: a certified one-to-one matching against a plain `compare` of the same pair.

    python benchmarks/bench_matching.py                     # 46,080 x 768 (the e2e paper), CPU
    python benchmarks/bench_matching.py --n 8192            # a quick look
    python benchmarks/bench_matching.py --gpu               # 131,072 x 131,072 x 4,096 on CUDA
                                                            # (Paulo & Belrose's size)

Data: A = random unit rows; B = half of A's rows permuted with noise (cosine ~0.95 to their
partner: "shared" features) and half fresh random rows, shuffled (seed 0). Three methods, each
in its own subprocess so its peak RSS is its own (on CUDA also the peak GPU memory):

  compare        what `python -m sae_backend compare A B -o x.csv` computes: top-1 of every
                 feature of A among B (k=1, no cache)
  match          `match(A, B)` from nothing: its own top-32 pass, the solver, the certificate
  compare_match  what `compare A B --match` computes: one top-32 pass serving both the table
                 and the matching's candidates, then the matching

Prints each time, peak memory, the certificate (certified, rounds, bound - objective), where
the matching spent its time, and the ratios to `compare` measured in the same run. The issue's
target: the certified matching costs at most 3x a plain compare, and its memory stays within
compare's plus the candidate graph.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ["compare", "match", "compare_match"]


def make_pair(n: int, d: int, seed: int = 0):
    """Two Dictionaries [n, d] with planted shared structure (see the module docstring)."""
    import torch

    from sae_backend.dictionary import Dictionary, RawSAE

    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    half = n // 2
    perm = torch.randperm(n, generator=g)[:half]
    b[:half] = torch.nn.functional.normalize(
        a[perm] + 0.015 * torch.randn(half, d, generator=g), dim=1
    )
    b = b[torch.randperm(n, generator=g)]
    da = Dictionary.from_raw(RawSAE(a.numpy()), source="bench/a", format="matrix")
    db = Dictionary.from_raw(RawSAE(b.numpy()), source="bench/b", format="matrix")
    return da, db


def warm_up(device: str) -> None:
    """Compile the numba kernels and time the engine's path choice outside the timings."""
    from sae_backend.geometry.compare import compare, match

    da, db = make_pair(600, 32, seed=1)
    compare(da, db, k=1, device=device, cache=False)
    match(da, db, dense_limit=0, device=device, cache=False)


def run_one(method: str, n: int, d: int, device: str) -> dict:
    import torch

    from sae_backend.geometry.compare import compare, match
    from sae_backend.geometry.matching import K_CANDIDATES

    warm_up(device)
    da, db = make_pair(n, d)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    info: dict = {}
    t0 = time.perf_counter()
    out: dict = {"method": method}
    if method == "compare":
        compare(da, db, k=1, device=device, cache=False)
    elif method == "match":
        m = match(da, db, device=device, cache=False, info=info)
    else:
        res = compare(da, db, k=K_CANDIDATES, device=device, cache=False)
        m = match(da, db, device=device, cache=False, forward=res, info=info)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["seconds"] = time.perf_counter() - t0
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method != "compare":
        out.update(
            certified=m.certified, rounds=m.rounds, objective=m.total, bound=m.bound,
            gap=m.bound - m.total, tolerance=m.tolerance, n_candidates=m.n_candidates,
            mean=m.mean, info=info,
        )  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=46080)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu", action="store_true", help="131,072 x 4,096 on cuda")
    p.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)  # the child's job
    args = p.parse_args()
    if args.gpu:
        args.n, args.d, args.device = 131072, 4096, "cuda"
    if args.only:
        print(json.dumps(run_one(args.only, args.n, args.d, args.device), default=float))
        return
    print(f"{args.n:,} x {args.d} vs {args.n:,} x {args.d} on {args.device}", flush=True)
    rows = []
    # a private cache folder: its device lock is then this run's alone (the shared one would
    # make the timings wait for other processes' heavy work on the same machine)
    scratch = tempfile.mkdtemp(prefix="bench_matching_")
    env = {**os.environ, "SAE_CACHE_DIR": scratch}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--only", method, "--n", str(args.n), "--d",
               str(args.d), "--device", args.device]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            print(f"{method}: failed\n{proc.stderr[-3000:]}")
            return
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1], default=float), flush=True)
    base = rows[0]["seconds"]
    print("\n| method | time | vs compare | peak RSS | certified | rounds | bound - objective |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cert = "" if r["method"] == "compare" else r["certified"]
        rounds = "" if r["method"] == "compare" else r["rounds"]
        gap = "" if r["method"] == "compare" else f"{r['gap']:.2e} (tol {r['tolerance']:.1e})"
        gpu = f", GPU {r['gpu_peak_mb']:,.0f} MB" if "gpu_peak_mb" in r else ""
        print(
            f"| {r['method']} | {r['seconds']:.1f} s | {r['seconds'] / base:.2f}x | "
            f"{r['rss_mb']:,.0f} MB{gpu} | {cert} | {rounds} | {gap} |"
        )
    m = rows[1]
    graph_mb = m["n_candidates"] * 16 * 3 / 2**20  # keys + cosines, and the solver's CSR copy
    print(f"\ncandidate graph: {m['n_candidates']:,} pairs (~{graph_mb:,.0f} MB with the CSR copy)")
    print("where match spent its time:", json.dumps(m["info"], default=float))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
