#!/usr/bin/env bash
# Where the GPU step's time goes (issue 8's open targets): kernel tables, branch-by-branch step
# times, torch.compile of the trunk stages and heads, and evaluation's compute ceiling.
# Same setup as gpu_run.sh (carry .whl); outputs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MTSEARCH_CACHE=/tmp/mtsearch-cache
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
step() {  # name, command...
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" > "$OUT/$name.txt" 2>&1
  tail -n "${TAIL:-12}" "$OUT/$name.txt"
  echo "=== $name took $((SECONDS - start)) s"
}
cd benchmarks
step masks timeout 120 python3 train_step.py --presets thesis --masks "cls cls+dir cls+track cls+track+dir" \
  --precisions bf16g --cuda-graph --loop-masks "" --steps 15
step prof_thesis_eager timeout 60 python3 profile_step.py --preset thesis --top 40
step prof_tiny32_eager timeout 45 python3 profile_step.py --preset tiny --batch-size 32 --top 25
step prof_tiny32_graph timeout 45 python3 profile_step.py --preset tiny --batch-size 32 --cuda-graph --top 25
step eval_fwd timeout 60 python3 eval_forward.py --preset thesis --batch-sizes 16,64
step compiled timeout 260 python3 train_step.py --presets thesis --masks "cls+track+dir" \
  --precisions bf16g --cuda-graph --loop-masks "" --steps 15 --compile
step eval_fwd_compiled timeout 100 python3 eval_forward.py --preset thesis --batch-sizes 16 --compile
