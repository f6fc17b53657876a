"""GPU tuning sweep of the torch bf16 engine at paper size: group width x block rows x k, plus
a profile (the fused Triton engine has its own: sweep_triton.py).

python benchmarks/sweep_gpu.py      # needs CUDA; prints median ms of 5 runs per setting
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sae_backend.geometry.topk as topk  # noqa: E402


def main() -> None:
    os.environ["SAE_TOPK_ENGINE"] = "torch"
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(46080, 768, generator=g), dim=1).cuda()
    b = torch.nn.functional.normalize(torch.randn(46080, 768, generator=g), dim=1).cuda()
    ks = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "1,10,100").split(",")]
    groups = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "32,64,128").split(",")]
    rows_list = [
        int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "4096,8192,16384").split(",")
    ]
    for k in ks:
        for group in groups:
            for rows in rows_list:
                topk.GROUP = group
                info: dict = {}

                def run(k=k, rows=rows, info=info):
                    return topk.topk_cosine(a, b, k, precision="bf16", block_rows=rows, info=info)

                ms = triton.testing.do_bench(run, warmup=50, rep=300, return_mode="median")
                print(
                    f"k={k:3d} group={group:3d} rows={rows:5d}: {ms:7.2f} ms  "
                    f"fallback rows {info['fallback_rows']}",
                    flush=True,
                )
    topk.GROUP = 64
    from torch.profiler import ProfilerActivity, profile

    topk.topk_cosine(a, b, 10, precision="bf16", block_rows=8192)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        topk.topk_cosine(a, b, 10, precision="bf16", block_rows=8192)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
