#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one run that fits a 15-minute lease, most important
# first (trials sharing a process, the fusion probe, the thesis trial), each step capped so the
# whole stays inside BUDGET_S seconds; what the budget does not reach is skipped and said. MPS=1
# adds packing under NVIDIA MPS (about 3 minutes, which the steps after it then lack).
# The probe (../shared/gpu/fusion_probe.py, torch only) travels only from inside the checkout:
# `mkdir -p shared/gpu && cp ../shared/gpu/fusion_probe.py shared/gpu/` first (PROBE= to override).
# The device machine has torch but no PyAV or simplejpeg: put their wheels in .whl/ first
# (python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
# manylinux_2_28_x86_64 -d .whl av simplejpeg) and carry .whl. Outputs go to $OUT (default /tmp/gpu-out); each step runs even if one before failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
PROBE=${PROBE:-shared/gpu/fusion_probe.py}
BUDGET_S=${BUDGET_S:-570}
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
python3 -c "import torch, av, simplejpeg; print('torch', torch.__version__, 'av', av.__version__, 'simplejpeg', simplejpeg.__version__)" | tee -a "$OUT/gpu.txt"

# the synthetic set and its frame caches (thesis and small geometry), written while the GPU compiles
(cd benchmarks && python3 - <<'EOF' >"$OUT/data.txt" 2>&1
import os, shutil
from pathlib import Path
from train_step import synthetic_root, trial_config
from mtsearch.train import load_clips
if not Path("/tmp/synth").is_dir():
    synthetic_root(40, "/tmp/synth-new")
    os.rename("/tmp/synth-new", "/tmp/synth")
for preset in ("thesis", "small"):
    cfg = trial_config(preset, "cls+track+dir", "bf16g", **{"data.root": "/tmp/synth",
                       "data.cache_dir": "/tmp/cache"})
    load_clips(cfg, print)
print("data ready")
EOF
) &
DATA_PID=$!

step() {  # name, cap in seconds, command...: at most the cap, never past the budget
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET_S - SECONDS))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 20 ]; then echo "=== $name: skipped, $left s of the budget left"; return; fi
  echo "=== $name (at most $limit s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "=== $name took $((SECONDS - start)) s"
}
# trials sharing a process (K slots, one CUDA stream each, steady window) against one trial alone
step shared_process 200 python3 benchmarks/shared_process.py --presets small,thesis --counts 1,2,4 \
  --epochs 5 --data /tmp/synth
# the torch-only probe: concurrent (threads + streams) and stacked (grouped-conv, HFTA-style)
# trials of the thesis step, and the batch-4K ceiling; its summary lines are in its docstring
if [ -f "$PROBE" ]; then
  step fusion_probe 300 python3 "$PROBE" --budget 230 --json "$OUT/fusion_probe.json"
else
  echo "=== fusion_probe: $PROBE is not here (copy ../shared/gpu/fusion_probe.py to shared/gpu/)"
fi
wait "$DATA_PID"; tail -1 "$OUT/data.txt"
# the thesis trial as the trainer runs it, and 4 of them sharing a process
step thesis_trial 260 python3 benchmarks/thesis_trial.py --data /tmp/synth
# how far a slot is from its run alone on the GPU (reduction order, bf16)
step side_by_side_exactness 90 python3 benchmarks/side_by_side_exactness.py --data /tmp/synth
# branches_cost with the compiled tracker
step train_step_thesis 170 python3 benchmarks/train_step.py --presets thesis \
  --masks "cls cls+track+dir" --cuda-graph --precisions bf16g --loop-masks "" --steps 15
# issue 10: trials per GPU, and what `auto` would choose
step packing_thesis 140 python3 benchmarks/packing.py --presets thesis --counts 1,2,4,8 --data /tmp/synth
step packing_small 80 python3 benchmarks/packing.py --presets small --counts 1,4,8,16 --data /tmp/synth
# MPS=1: the same with NVIDIA MPS, which lets kernels of several processes run at once
if [ "${MPS:-0}" = 1 ]; then
  if command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps CUDA_MPS_LOG_DIRECTORY=/tmp/nvidia-mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d && echo "MPS daemon started"
    step packing_mps_thesis 120 python3 benchmarks/packing.py --presets thesis --counts 1,4,8 --epochs 3 --data /tmp/synth
    step packing_mps_small 80 python3 benchmarks/packing.py --presets small --counts 1,8 --epochs 3 --data /tmp/synth
    echo quit | nvidia-cuda-mps-control
  else
    echo "=== MPS: nvidia-cuda-mps-control is not on this machine"
  fi
fi
step memory_probe 45 python3 benchmarks/memory_probe.py
# issue 8: the same step with the tracker left eager (the previous code), same machine
step train_step_eager_tracker 45 python3 benchmarks/train_step.py --presets thesis \
  --masks "cls cls+track+dir" --cuda-graph --precisions bf16g --loop-masks "" --steps 15 --eager-tracker
step gpu_check 120 python3 benchmarks/gpu_check.py
grep -h "shared_process_gain\|side_by_side_vs_alone\|concurrent_gain\|hfta_gain\|batch_ceiling\|packing_gain\|branches_cost\|thesis_trial_minutes\|end_to_end_vs_step\|memory_probe:\|gpu_check:" "$OUT"/*.txt
