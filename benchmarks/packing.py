"""How much a GPU gains by running several trials at once: aggregate training clips/s.

N trainer processes (`mtsearch.train.fit`, not Ray: the lent GPU machine cannot carry Ray's
wheel) train the same preset at batch 4 side by side on one GPU, over the built-in-style
synthetic set. Each reports its best training clips/s of epochs 2..E (epoch 1 pays for cuDNN
autotuning); their sum is the aggregate. N doubles from 1 while N trials fit in the GPU's memory
(the one-trial peak times N, plus 10%) and the CPUs (one each at least). On a machine without a
GPU it runs `tiny` on the CPU and says so. The last line is

    packing_gain: <best aggregate / one trial>x

    python benchmarks/packing.py                         # small and thesis on CUDA, tiny on CPU
    python benchmarks/packing.py --presets small --max-trials 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

MARGIN = 1.1  # memory headroom per trial over its measured peak


def worker(args: argparse.Namespace) -> None:
    """One trial in its own process: print a JSON line with its clips/s and peak memory."""
    from train_step import measure_loop

    from mtsearch.train import peak_memory_gib

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16g" if device.type == "cuda" else "fp32"
    cps, wait, history = measure_loop(
        args.preset, "cls+track+dir", device, precision, args.batch_size, Path(args.data),
        epochs=args.epochs, threads=args.threads,
    )
    peak = peak_memory_gib(device)  # GPU memory on CUDA, the process's peak RSS on the CPU
    print(json.dumps({"clips_per_s": cps, "data_wait": wait, "peak_gib": peak}), flush=True)


def run_together(preset: str, trials: int, args: argparse.Namespace, data: Path) -> list[dict]:
    """Start `trials` workers at once; their JSON results (a failed one raises)."""
    cpus = len(os.sched_getaffinity(0))
    threads = max(1, cpus // trials)
    command = [sys.executable, __file__, "--worker", "--presets", preset, "--data", str(data),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--threads", str(threads)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(trials)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a {preset} trial failed:\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", help="comma-separated (default: small,thesis on CUDA, tiny on CPU)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (best of 2..E)")
    parser.add_argument("--max-trials", type=int, default=32, help="largest N tried")
    parser.add_argument("--videos", type=int, help="synthetic videos per class (default 20; CPU 4)")
    parser.add_argument("--data", help="synthetic set to use: reused if there, else written")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.preset = args.presets
        worker(args)
        return

    from train_step import synthetic_root, trial_config

    from mtsearch.train import load_clips

    cuda = torch.cuda.is_available()
    presets = (args.presets or ("small,thesis" if cuda else "tiny")).split(",")
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None
    cpus = len(os.sched_getaffinity(0))
    where = (f"{torch.cuda.get_device_name(0)} ({total_gib:.0f} GiB), {cpus} CPUs" if cuda
             else f"CPU only ({cpus} cores): tiny on CPU threads stands in for GPU packing")
    print(f"device: {where}; torch {torch.__version__}; batch {args.batch_size}; all branches")
    data = synthetic_root(args.videos or (20 if cuda else 4), args.data)
    gains = []
    for preset in presets:
        cfg = trial_config(preset, "cls+track+dir", "fp32",
                           **{"data.root": str(data), "data.cache_dir": str(data.parent / "cache")})
        load_clips(cfg, print)  # fill the frame cache once, before trials race for it
        one = None
        trials = 1
        print(f"{'preset':<7} {'trials':>6} {'aggregate c/s':>14} {'per trial':>10} {'peak GiB':>9} {'wait':>5}")
        while trials <= args.max_trials:
            start = time.perf_counter()
            results = run_together(preset, trials, args, data)
            aggregate = sum(r["clips_per_s"] for r in results)
            peak = max(r["peak_gib"] for r in results)
            wait = max(r["data_wait"] or 0.0 for r in results)
            one = one or aggregate
            print(f"{preset:<7} {trials:>6} {aggregate:14.1f} {aggregate / trials:10.1f} "
                  f"{peak:9.2f} {wait:5.2f}   ({time.perf_counter() - start:.0f} s)", flush=True)
            gains.append((aggregate / one, preset, trials))
            trials *= 2
            fits_memory = total_gib is None or trials * peak * MARGIN <= total_gib
            if not fits_memory or trials > cpus:
                break
        best_here = max(g for g in gains if g[1] == preset)
        print(f"{preset}: {best_here[0]:.2f}x with {best_here[2]} trials")
    best, preset, trials = max(gains)
    print(f"best: {preset} with {trials} trials per {'GPU' if cuda else 'CPU'}")
    print(f"packing_gain: {best:.2f}x")


if __name__ == "__main__":
    main()
