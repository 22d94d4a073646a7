"""What `resources.gpus_per_trial: auto` chooses on this machine, and how long its probe takes.

For each preset at the given batch, all branches, the driver's own memory probe
(`mtsearch.search.packing.measure_step_memory`: the trainer's step, warm-up and CUDA graph capture
included, then one evaluation batch) runs in a fresh process, as the Ray task does, and
`mtsearch.search.packing.plan` turns its peak into trials per GPU for this machine's CPUs. Compare the
peaks with those `benchmarks/packing.py` measures in real trials. On a machine without a GPU the
probe reports the process's peak RSS against the machine's memory, and says so. The last line is

    memory_probe: <label>: <peak> GiB -> <N> trials per <GPU>

    python benchmarks/memory_probe.py                      # tiny, small, thesis (tiny on CPU)
    python benchmarks/memory_probe.py --presets thesis --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import torch


def probe_once(preset: str, batch: int) -> None:
    """In a fresh process: print the probe's JSON line."""
    from train_step import trial_config

    from mtsearch.search.packing import measure_step_memory

    cuda = torch.cuda.is_available()
    cfg = trial_config(preset, "cls+track+dir", "bf16g" if cuda else "fp32",
                       **{"optim.batch_size": batch})
    start = time.perf_counter()
    probe = measure_step_memory(cfg, None if cuda else "cpu")
    assert probe is not None
    print(json.dumps({**asdict(probe), "seconds": time.perf_counter() - start}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", help="comma-separated (default: tiny,small,thesis; tiny on CPU)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cpus-per-trial", type=float, default=2, help="as spaces/thesis-hmdb51.yaml")
    parser.add_argument("--max-trials-per-gpu", type=int, default=8, help="the key's default")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        probe_once(args.worker, args.batch_size)
        return

    from train_step import trial_config

    from mtsearch.search.packing import MemoryProbe, plan, shape_label

    cuda = torch.cuda.is_available()
    presets = (args.presets or ("tiny,small,thesis" if cuda else "tiny")).split(",")
    cpus = len(os.sched_getaffinity(0))
    where = (f"{torch.cuda.get_device_name(0)}, {cpus} CPUs" if cuda
             else f"CPU only ({cpus} cores): the probe reports peak RSS against the machine's memory")
    print(f"device: {where}; torch {torch.__version__}; batch {args.batch_size}; all branches; "
          f"cpus_per_trial {args.cpus_per_trial:g}, max_trials_per_gpu {args.max_trials_per_gpu}")
    last = ""
    for preset in presets:
        command = [sys.executable, __file__, "--worker", preset, "--batch-size", str(args.batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{preset}: the probe failed:\n{done.stderr[-2000:]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = row.pop("seconds")
        probe = MemoryProbe(**row)
        label = shape_label(trial_config(preset, "cls+track+dir", "fp32",
                                         **{"optim.batch_size": args.batch_size}))
        packing = plan(probe, label, cpus, args.cpus_per_trial, args.max_trials_per_gpu)
        last = packing.message()
        print(f"{last}   (share {packing.share:g}; probe {seconds:.1f} s)", flush=True)
    print(f"memory_probe: {last}")


if __name__ == "__main__":
    main()
