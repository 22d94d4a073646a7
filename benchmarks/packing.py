"""How much a GPU gains by running several trials at once: aggregate training clips/s.

N trainer processes (`mtsearch.train.fit`, not Ray: the lent GPU machine cannot carry Ray's
wheel) train the same preset at batch 4 side by side on one GPU, over the built-in-style
synthetic set, each with its share of the CPUs (threads and loader workers, as a packed search
gives them). Epoch 1 pays for compilation, cuDNN autotuning and worker start-up, at different
times in different processes; so every process waits after it for all the others (a barrier of
files), and epochs 2..E run together (no evaluation). Each reports the clips it trained in
that window over its wall time; their sum is the aggregate, and `overlap` says how much of the
timed windows coincided (1.0: all of it). N doubles from 1 while N trials fit in the GPU's memory (the
one-trial peak times N, plus 10%) and the CPUs (one each at least). On a machine without a GPU
it runs `tiny` on the CPU and says so. The last line is

    packing_gain: <best aggregate / one trial>x

    python benchmarks/packing.py                         # small and thesis on CUDA, tiny on CPU
    python benchmarks/packing.py --presets small --max-trials 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MARGIN = 1.1  # memory headroom per trial over its measured peak
BARRIER_TIMEOUT_S = 300  # a process that never gets ready does not hold the others forever


def worker(args: argparse.Namespace) -> None:
    """One trial in its own process: print a JSON line with its clips/s and peak memory."""
    from train_step import trial_config

    from mtsearch.train import fit, load_clips, peak_memory_gib

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16g" if device.type == "cuda" else "fp32"
    data = Path(args.data)
    cfg = trial_config(
        args.preset, "cls+track+dir", precision,
        **{"data.root": str(data), "data.cache_dir": str(data.parent / "cache"),
           "optim.batch_size": args.batch_size, "optim.epochs": args.epochs + 1,
           "eval.every": args.epochs + 1, "device": device.type, "threads": args.threads},
    )
    train_set = load_clips(cfg, lambda message: None)[0]
    # make_loader drops a lone last clip of a training epoch (BatchNorm cannot train on one)
    per_epoch = len(train_set) - (len(train_set) % args.batch_size == 1)
    barrier = Path(args.barrier)
    window: list[float] = []  # wall clock: the barrier's release, the end of epoch E
    waits: list[float] = []

    def after_epoch(row: dict, _: object) -> bool:
        if row["epoch"] == 1:  # wait for every process's warm-up, then start together
            (barrier / f"ready-{os.getpid()}").touch()
            deadline = time.time() + BARRIER_TIMEOUT_S
            while len(list(barrier.glob("ready-*"))) < args.trials and time.time() < deadline:
                time.sleep(0.02)
            window.append(time.time())
            return True
        waits.append(row["data_wait"] or 0.0)
        if row["epoch"] < args.epochs:
            return True
        window.append(time.time())
        return False  # stop before the evaluation the config's last epoch would run

    fit(cfg, on_epoch=after_epoch)
    start, end = window
    cps = per_epoch * (args.epochs - 1) / (end - start)
    peak = peak_memory_gib(device)  # GPU memory on CUDA, the process's peak RSS on the CPU
    print(json.dumps({"clips_per_s": cps, "data_wait": sum(waits) / len(waits), "peak_gib": peak,
                      "window": window}), flush=True)


def mps_running() -> bool:
    """Whether an NVIDIA MPS control daemon is up (its pipe exists): with it, kernels of several
    processes run on the GPU at once; without it, the processes take turns."""
    pipes = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    return (pipes / "control").exists()


def overlap(windows: list[list[float]]) -> float:
    """How much of the timed windows coincided: common span / mean span (1.0: all of it)."""
    common = min(end for _, end in windows) - max(start for start, _ in windows)
    mean = sum(end - start for start, end in windows) / len(windows)
    return max(0.0, common) / mean if mean > 0 else 0.0


def run_together(preset: str, trials: int, args: argparse.Namespace, data: Path) -> list[dict]:
    """Start `trials` workers at once; their JSON results (a failed one raises)."""
    cpus = len(os.sched_getaffinity(0))
    threads = max(1, cpus // trials)
    barrier = Path(tempfile.mkdtemp(prefix="mtsearch-packing-"))
    command = [sys.executable, __file__, "--worker", "--presets", preset, "--data", str(data),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--threads", str(threads), "--trials", str(trials), "--barrier", str(barrier)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(trials)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a {preset} trial failed:\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    shutil.rmtree(barrier, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", help="comma-separated (default: small,thesis on CUDA, tiny on CPU)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4,
                        help="epochs per trial: 1 warms up, 2..E are timed together")
    parser.add_argument("--max-trials", type=int, default=32, help="largest N tried")
    parser.add_argument("--counts", help="comma-separated trial counts (default: 1, 2, 4, ... while they fit)")
    parser.add_argument("--videos", type=int, help="synthetic videos per class (default 20; CPU 4)")
    parser.add_argument("--data", help="synthetic set to use: reused if there, else written")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
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
    where = (f"{torch.cuda.get_device_name(0)} ({total_gib:.0f} GiB), {cpus} CPUs, "
             f"MPS {'on' if mps_running() else 'off'}" if cuda
             else f"CPU only ({cpus} cores): tiny on CPU threads stands in for GPU packing")
    print(f"device: {where}; torch {torch.__version__}; batch {args.batch_size}; all branches")
    data = synthetic_root(args.videos or (20 if cuda else 4), args.data)
    gains = []
    for preset in presets:
        cfg = trial_config(preset, "cls+track+dir", "fp32",
                           **{"data.root": str(data), "data.cache_dir": str(data.parent / "cache")})
        load_clips(cfg, print)  # fill the frame cache once, before trials race for it
        one = None
        counts = [int(c) for c in args.counts.split(",")] if args.counts else None
        trials = counts.pop(0) if counts else 1
        print(f"{'preset':<7} {'trials':>6} {'aggregate c/s':>14} {'per trial':>10} {'peak GiB':>9} "
              f"{'wait':>5} {'overlap':>7}")
        while trials <= args.max_trials:
            start = time.perf_counter()
            results = run_together(preset, trials, args, data)
            aggregate = sum(r["clips_per_s"] for r in results)
            peak = max(r["peak_gib"] for r in results)
            wait = max(r["data_wait"] or 0.0 for r in results)
            one = one or aggregate / trials
            together = overlap([r["window"] for r in results])
            print(f"{preset:<7} {trials:>6} {aggregate:14.1f} {aggregate / trials:10.1f} "
                  f"{peak:9.2f} {wait:5.2f} {together:7.2f}   ({time.perf_counter() - start:.0f} s)",
                  flush=True)
            gains.append((aggregate / one, preset, trials))
            if counts is not None:
                if not counts:
                    break
                trials = counts.pop(0)
            else:
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
