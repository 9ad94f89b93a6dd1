#!/usr/bin/env bash
# Every GPU check of issues 4 and 5 in one go (one device lease): the CUDA tests, the
# scoring benchmark at the 0.6B shape, the training throughput/MFU benchmark.
#   bash benchmarks/gpu_checks.sh [out_dir]        (logs under out_dir, default /tmp/gpu)
# The GPU image has torch/transformers but not pydantic/polars: wheels in .whl/ (if
# present) are installed to /tmp/site first (see docs/benchmarks.md, "GPU").
set -u
out=${1:-${OUT:-/tmp/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
step() {  # step NAME SECONDS CMD...: run with a time limit, log to out/NAME.log, keep going
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name: rc=$? in $((SECONDS - t0)) s"
  tail -n "${TAIL:-6}" "$out/$name.log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$out/env.log"
KOPTS='{"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2}'
step tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_train.py -k gpu
step score 200 python3 -m benchmarks.bench_scoring --gpu-shape --n 1 10 100 500 --compile --per-item-cap 8 --kernel-options "$KOPTS"
step score_shared 200 python3 -m benchmarks.bench_scoring --gpu-shape --n 100 500 --compile --per-item-cap 8 --attention shared_prefix
step score_shared_eager 150 python3 -m benchmarks.bench_scoring --gpu-shape --n 500 --per-item-cap 8 --attention shared_prefix
step train_cpt 150 python3 -m benchmarks.bench_train --stage cpt --compile --batch-size 4 --steps 12
step train_cpt_chunked_ce 150 python3 -m benchmarks.bench_train --stage cpt --compile --batch-size 4 --steps 12 --lm-loss-chunk 2048
step train_cpt_accum 150 python3 -m benchmarks.bench_train --stage cpt --compile --batch-size 4 --grad-accum 2 --steps 10 --profile "$out/prof_train.txt"
