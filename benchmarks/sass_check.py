"""Compile the Triton top-k kernels for Hopper (sm_90) without a GPU, and read their machine code.

    python benchmarks/sass_check.py              # the Hopper tiles; one JSON line per kernel
    python benchmarks/sass_check.py candidates   # the fused score-tile kernel only

Triton's wheel carries ptxas and cuobjdump, so this runs on any machine (CPU only). Per kernel
it prints registers, stack bytes, spill instructions (LDL/STL), shared memory and the number
of Hopper tensor-core instructions (HGMMA): what decides whether the fused kernel can run at
matmul speed, checkable before a GPU is lent. tests/test_topk_triton.py asserts the main
kernel's line. Needs compiled kernels: run it without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sae_backend.geometry import topk_triton as tt  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _compile(fn, signature: dict, constants: dict, aligned: list[str], options: dict) -> dict:
    """Compile one kernel for sm_90; its resource use and instruction counts."""
    full = {name: signature.get(name, "constexpr") for name in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    kernel = triton.compile(
        ASTSource(fn, full, constexprs=constants, attrs=attrs), target=HOPPER, options=options
    )
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run(
            [BIN / "cuobjdump", "--dump-resource-usage", cubin],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sass = subprocess.run(
            [BIN / "cuobjdump", "--dump-sass", cubin], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", usage))
    return {
        "kernel": fn.__name__,
        "registers": int(fields["REG"]),
        "stack_bytes": int(fields["STACK"]),
        "spill_instructions": len(re.findall(r"\b(?:LDL|STL)\b", sass)),
        "shared_bytes": kernel.metadata.shared,
        "hgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "num_warps": options["num_warps"],
    }


def candidates_report(tiles: tt.Tiles = tt.TILES) -> dict:
    """The fused score-tile kernel as `TritonScorer.block` launches it on a GPU."""
    ptrs = ["a_ptr", "b_ptr", "thr_ptr", "cand_val_ptr", "cand_idx_ptr", "count_ptr"]
    signature = dict(zip(ptrs, ["*bf16", "*bf16", "*fp32", "*fp32", "*i32", "*i32"], strict=True))
    signature.update(M="i32", N="i32", D="i32", CAP="i32")
    constants = dict(
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        GROUP_M=tiles.group_m,
        UPCAST=False,
    )
    options = dict(num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    return _compile(tt._candidates_kernel, signature, constants, [*ptrs, "D", "CAP"], options)


def shortlist_report(cap: int = 256, self_mode: bool = True) -> dict:
    ptrs = ["cand_val_ptr", "cand_idx_ptr", "count_ptr", "delta_ptr", "sel_idx_ptr", "n_sel_ptr"]
    signature = dict(zip(ptrs, ["*fp32", "*i32", "*i32", "*fp32", "*i32", "*i32"], strict=True))
    signature.update(M="i32", K="i32", self_offset="i32")
    constants = dict(SELF=self_mode, CAP=cap, U=tt._U_BF16, ROWS=max(1, 4096 // cap))
    return _compile(tt._shortlist_kernel, signature, constants, ptrs, dict(num_warps=4))


def rescore_report(width: int = 32, d: int = 768) -> dict:
    ptrs = ["a_ptr", "b_ptr", "sel_idx_ptr", "n_sel_ptr", "out_val_ptr", "out_idx_ptr"]
    signature = dict(zip(ptrs, ["*fp32", "*fp32", "*i32", "*i32", "*fp32", "*i64"], strict=True))
    signature.update(M="i32", D="i32", K="i32", CAP="i32")
    block_d = max(16, min(128, 1 << (d - 1).bit_length(), 4096 // width))
    constants = dict(W=width, ROWS=max(1, 4096 // (width * block_d)), BLOCK_D=block_d)
    options = dict(num_warps=4 if width <= 64 else 8)
    return _compile(tt._rescore_kernel, signature, constants, [*ptrs, "D", "CAP"], options)


REPORTS = {
    "candidates": lambda: [candidates_report()],
    "shortlist": lambda: [shortlist_report()],
    "rescore": lambda: [rescore_report()],
}


def main() -> None:
    for name in sys.argv[1:] or list(REPORTS):
        for report in REPORTS[name]():
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
