"""Benchmark: two-sided tiles (geometry/topk_tiles.py) against the one-sided pass, same run.

    python benchmarks/bench_tiles.py                  # 46,080 x 768, k = 1 and 15
    python benchmarks/bench_tiles.py --n 12288 --k 1  # smaller, for a quick look

Random unit rows (seeds 0 and 1). Each step is its own process, so its peak RSS is its own
(bench_compare_cli's launcher); only the pass is timed, not the start-up or the data:

  within rows   topk_cosine(A, None, k) with SAE_TOPK_ORDER=rows: every row against all
  within tiles  the same with SAE_TOPK_ORDER=tiles: each pair scored once
  both rows     topk_cosine(A, B, k) then topk_cosine(B, A, k): two one-sided passes
  both tiles    topk_tiles.pair_topk(A, B, k): both directions from one pass

Prints rows / tiles for each (the speed-up) and checks that both orders give identical
values and indices, and a random subset of rows against float64.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compare_cli import GIB, run  # noqa: E402

STEP = """
import json, os, sys, time
import numpy as np
import torch
from sae_backend.geometry import _cpu_select, topk, topk_tiles
n, d, k, what, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def unit(seed):
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
a, b = unit(0), unit(1)
kernel = _cpu_select.kernel()
info = {}
t0 = time.perf_counter()
if what == "within":
    res = [topk.topk_cosine(a, None, k, precision="bf16", info=info)]
elif os.environ["SAE_TOPK_ORDER"] == "rows":
    res = [topk.topk_cosine(a, b, k, precision="bf16", info=info),
           topk.topk_cosine(b, a, k, precision="bf16")]
else:
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    (va, ia), (vb, ib), _ = topk_tiles.pair_topk(ta, tb, k, kernel)
    res = [topk.TopK(va.numpy(), ia.numpy()), topk.TopK(vb.numpy(), ib.numpy())]
    info["order"] = "tiles"
seconds = time.perf_counter() - t0
np.savez(out, **{f"v{j}": r.values for j, r in enumerate(res)},
         **{f"i{j}": r.indices for j, r in enumerate(res)})
print(json.dumps({"compute_s": seconds, "order": info.get("order")}))
"""


def check_float64(n: int, d: int, k: int, got: dict, what: str, rows: int = 256) -> float:
    """Largest |value - float64| over random rows; asserts the neighbours are float64's."""
    def unit(seed: int) -> np.ndarray:
        x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    a, b = unit(0), unit(1)
    pairs = [(a, None)] if what == "within" else [(a, b), (b, a)]
    pick = np.random.default_rng(2).choice(n, rows, replace=False)
    worst = 0.0
    for j, (x, y) in enumerate(pairs):
        s = x[pick].astype(np.float64) @ (x if y is None else y).astype(np.float64).T
        if y is None:
            s[np.arange(rows), pick] = -np.inf
        best = -np.sort(-s, axis=1)[:, :k]
        worst = max(worst, float(np.abs(got[f"v{j}"][pick] - best).max()))
        chosen = np.take_along_axis(s, got[f"i{j}"][pick], 1)
        assert np.all(chosen >= best[:, -1:] - 1e-6), "a reported neighbour is not a float64 top-k"
    return worst


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=46080)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--k", default="1,15", help="comma-separated k values")
    p.add_argument("--what", default="within,both")
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(x) for x in args.k.split(",")):
            for what in args.what.split(","):
                got = {}
                for order in ("rows", "tiles"):
                    out = Path(tmp) / f"{what}-{order}-{k}.npz"
                    r = run([sys.executable, "-c", STEP, str(args.n), str(args.d), str(k), what,
                             str(out)], {**env, "SAE_TOPK_ORDER": order})  # fmt: skip
                    got[order] = (r, dict(np.load(out)))
                    print(f"{what:6} k={k:<3} {order:5}: {r['compute_s']:7.2f} s, peak RSS "
                          f"{r['peak_rss'] / GIB:.2f} GiB", flush=True)  # fmt: skip
                (r_rows, rows), (r_tiles, tiles) = got["rows"], got["tiles"]
                identical = all(np.array_equal(rows[x], tiles[x]) for x in rows)
                err = check_float64(args.n, args.d, k, tiles, what)
                print(json.dumps({
                    "what": what, "k": k, "rows_s": round(r_rows["compute_s"], 2),
                    "tiles_s": round(r_tiles["compute_s"], 2),
                    "speedup": round(r_rows["compute_s"] / r_tiles["compute_s"], 2),
                    "identical": identical, "max_abs_err_vs_float64": err,
                }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
