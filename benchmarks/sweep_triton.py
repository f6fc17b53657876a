"""The fused Triton top-k engine at paper size: time per tile shape, then where the time goes.

    python benchmarks/sweep_triton.py        # needs CUDA and triton; ~1 minute on an H200

Per tile shape of `_candidates_kernel`: the median time of topk_cosine(k=10) by
triton.testing.do_bench (the first call compiles), its fallback rows, and whether its indices
equal the first shape's (they must: the tiles change the work split, not the answer). Then
the default shape with all rows in one block, and a torch.profiler table of one call (CUDA
time per kernel: the sample product and its top-k, the fused kernel, shortlist, re-score).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_backend.geometry import topk_triton  # noqa: E402
from sae_backend.geometry.topk import topk_cosine  # noqa: E402

Tiles = topk_triton.Tiles
SHAPES = [
    topk_triton.TILES,
    Tiles(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=8, num_stages=3),
    Tiles(block_m=128, block_n=256, block_k=64, group_m=8, num_warps=8, num_stages=3),
    Tiles(block_m=64, block_n=128, block_k=64, group_m=8, num_warps=4, num_stages=4),
    Tiles(block_m=128, block_n=64, block_k=64, group_m=8, num_warps=4, num_stages=4),
]


def main() -> None:
    os.environ["SAE_TOPK_ENGINE"] = "triton"
    g = torch.Generator(device="cuda").manual_seed(0)
    n, d, k = 46080, 768, 10
    a = torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1)
    print(f"{torch.cuda.get_device_name()}: top-{k} of {n:,} x {n:,}, d={d}", flush=True)
    first = None
    for tiles in SHAPES:
        topk_triton.TILES = tiles
        info: dict = {}
        try:
            res = topk_cosine(a, b, k, precision="bf16", info=info)  # compiles
            ms = triton.testing.do_bench(
                lambda: topk_cosine(a, b, k, precision="bf16"), warmup=25, rep=100
            )
        except Exception as e:  # one shape that does not build must not hide the others
            print(f"{tiles}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        first = res if first is None else first
        same = bool((res.indices == first.indices).all())
        print(
            f"{tiles}: {ms:6.2f} ms  fallback rows {info['fallback_rows']}  "
            f"indices as the first shape's: {same}",
            flush=True,
        )
    topk_triton.TILES = SHAPES[0]
    ms = triton.testing.do_bench(
        lambda: topk_cosine(a, b, k, precision="bf16", block_rows=n), warmup=10, rep=100
    )
    print(f"default shape, all {n:,} rows in one block: {ms:6.2f} ms", flush=True)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        topk_cosine(a, b, k, precision="bf16")
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14), flush=True)


if __name__ == "__main__":
    main()
