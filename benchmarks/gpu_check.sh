#!/usr/bin/env bash
# The one prepared GPU check (issue 14), sized for one device call of at most 5 minutes on an
# H200: the top-k tests on CUDA (both engines), the paper-size benchmark (naive / TF32 top-10 /
# fp32, TF32 and bf16 matmul floors / the torch bf16 engine / the fused Triton engine, each
# checked against float64), then a tile sweep and profile of the Triton engine. Each stage runs
# under its own timeout, so a failure or hang in one still leaves the others' output.
#
# Run from the repo root on the GPU machine; results land in $OUT (or ./artifacts). Python
# packages the GPU image lacks travel as wheels in .whl/ (carry it); prepare them here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl diskcache==5.6.3
# (diskcache is pure Python; the image has torch, triton, numpy, scipy, tqdm and pytest).
set -u
OUT=${OUT:-artifacts}; mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=.:/tmp/site
fi

stage() {  # stage NAME SECONDS COMMAND...: run it under a timeout, output to the log and $OUT
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  cat "$OUT/$name.txt"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s$([ $rc -eq 124 ] && echo ' (timed out)')"
}

stage gpu 15 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__, torch.cuda.get_device_name())"'
stage tests_cuda 70 env SAE_TEST_DEVICE=cuda python3 -m pytest -q --tb=short -p no:cacheprovider \
  tests/test_topk.py tests/test_topk_triton.py
stage bench 150 python3 benchmarks/bench_topk.py --json "$OUT/bench_gpu.json" --timeout 45
stage sweep 55 python3 benchmarks/sweep_triton.py
