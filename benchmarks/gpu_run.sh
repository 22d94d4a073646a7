#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one run (about 11 minutes on a fresh H100/H200: the first torch.compile takes ~90 s).
# The device machine has torch but no PyAV: put its wheel in .whl/ first (python3 -m pip download
# --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl av)
# and carry .whl. Outputs go to $OUT (default /tmp/gpu-out); each step runs even if one before failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 MTSEARCH_CACHE=/tmp/mtsearch-cache
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, av; print('torch', torch.__version__, 'av', av.__version__)" | tee -a "$OUT/gpu.txt"

step() {  # name, command...
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "=== $name took $((SECONDS - start)) s"
}
# most important first: a lease that runs out still returns the thesis figures
step thesis_trial timeout 400 python3 benchmarks/thesis_trial.py --data /tmp/synth
step train_step_b4 timeout 150 python3 benchmarks/train_step.py --presets tiny,thesis \
  --masks "cls cls+track+dir" --cuda-graph --precisions bf16g --loop-masks "" --steps 15
step train_step_b32 timeout 60 python3 benchmarks/train_step.py --presets tiny \
  --batch-size 32 --masks "cls cls+track+dir" --cuda-graph --precisions bf16,bf16g --loop-masks "" --steps 10
step gpu_check timeout 200 python3 benchmarks/gpu_check.py
# issue 10: trials per GPU (about 5 minutes more; run it alone if the lease is short)
[ "${PACKING:-0}" = 1 ] && step packing timeout 420 python3 benchmarks/packing.py --data /tmp/synth
grep -h "packing_gain\|branches_cost\|thesis_trial_minutes\|end_to_end_vs_step\|gpu_check:" "$OUT"/*.txt
