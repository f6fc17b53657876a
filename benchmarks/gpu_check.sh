#!/usr/bin/env bash
# One prepared GPU session: the top-k tests on CUDA, the paper-size benchmark, a tuning sweep.
# Run on the lent GPU machine from the repo root; results land in $OUT (or ./artifacts).
set -u
OUT=${OUT:-artifacts}; mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
# packages the GPU image lacks travel as wheels in .whl/ (carry it): diskcache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=.:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
SAE_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_topk.py 2>&1 | tail -4 | tee "$OUT/tests_cuda.txt"
timeout 200 python3 benchmarks/bench_topk.py --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
timeout 150 python3 benchmarks/sweep_gpu.py 1,10,100 64 16384 2>&1 | tee "$OUT/sweep_gpu.txt"
