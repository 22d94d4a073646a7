"""What sharing a process buys: aggregate training clips/s of K trials side by side in one
process (`resources.trials_per_process`, train/slots.py) against one trial alone, per preset and K,
measured in the same run. This is concurrent execution (each trial its own kernels, on a GPU its
own CUDA stream), not stacked kernels.

Each K runs in a fresh process (so its peak memory is its own): K slots of one preset at batch 4,
differing in seed, learning rate and loss weights, train over the built-in-style synthetic set
with `fit_side_by_side`, sharing the machine's cores (`--cores`, default all of them; one trial
alone gets them all). Only the steady state is timed: the window from the last slot's end of
epoch 2 to the first slot's end of epoch E-1, in which every slot is in an ordinary epoch
(epochs 1 and 2 hold the warm-up lock in turn for compilation, cuDNN autotuning and graph
capture; epoch E evaluates). Each slot's clips in the window are read from its epoch ends
(linear within an epoch). Per K it prints per-slot and aggregate clips/s and the peak memory
(GPU: the allocator's peak; CPU: the process's peak RSS). The last line is

    shared_process_gain: <best aggregate / aggregate at K = 1>x

    python benchmarks/shared_process.py                       # tiny on the CPU; small and thesis on CUDA
    python benchmarks/shared_process.py --presets small --counts 1,4,8 --epochs 6
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


def worker(args: argparse.Namespace) -> None:
    """K slots side by side in this process: print one JSON line with the steady window's figures."""
    from train_step import trial_config

    from mtsearch.train import load_clips, peak_memory_gib

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16g" if device.type == "cuda" else "fp32"
    data = Path(args.data)
    cfgs = [
        trial_config(
            args.preset, "cls+track+dir", precision,
            **{"data.root": str(data), "data.cache_dir": str(data.parent / "cache"),
               "optim.batch_size": args.batch_size, "optim.epochs": args.epochs,
               "eval.every": args.epochs + 1, "device": device.type, "threads": args.cores,
               "seed": k, "loss.w_track": 0.25 * (1 + k), "loss.w_dir": 1 + k / 4,
               "optim.lr": 1e-3 / (1 + k / 8)},
        )
        for k in range(args.count)
    ]
    cfgs = [cfg.with_overrides({"eval.every": 10_000}, "<bench>") for cfg in cfgs]
    train_set = load_clips(cfgs[0], lambda message: None)[0]  # fills the frame cache
    per_epoch = len(train_set) - (len(train_set) % args.batch_size == 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.set_num_threads(args.cores)
    clips, seconds = timed_shared_epochs(cfgs, per_epoch, device, cores=args.cores)
    print(json.dumps({"count": len(cfgs), "per_slot": [c / seconds for c in clips], "seconds": seconds,
                      "aggregate": sum(clips) / seconds, "peak_gib": peak_memory_gib(device)}))


def timed_shared_epochs(cfgs: list, per_epoch: int, device: torch.device,
                        cores: int | None = None) -> tuple[list[float], float]:
    """Train `cfgs` side by side (`fit_side_by_side`, no checkpoints); (each slot's training clips
    in the steady window, the window's seconds): from the last slot's end of epoch 2 to the first
    slot's end of epoch E-1. An epoch's end is when its row is handed over, which follows a host
    read of the slot's own losses, so no device-wide synchronisation stalls the others."""
    from mtsearch.train.side_by_side import fit_side_by_side

    epochs = cfgs[0].optim.epochs
    if epochs < 5:
        raise ValueError("the steady window needs at least 5 epochs")
    ends: list[list[float]] = [[] for _ in cfgs]

    def after_epoch(k: int):
        def on_epoch(row: dict, _: object) -> None:
            ends[k].append(time.perf_counter())
        return on_epoch

    results = fit_side_by_side(cfgs, [None] * len(cfgs), on_epoch=[after_epoch(k) for k in range(len(cfgs))],
                               cores=cores)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    start = max(slot[1] for slot in ends)  # every slot has ended its epoch 2
    stop = min(slot[epochs - 2] for slot in ends)  # no slot has ended its epoch E-1 yet
    if stop <= start:
        raise RuntimeError(f"the slots drifted {start - stop:.1f} s apart: no window in which all are "
                           "in ordinary epochs; train more epochs")
    return [_clips_done(slot, stop, per_epoch) - _clips_done(slot, start, per_epoch) for slot in ends], stop - start


def _clips_done(ends: list[float], at: float, per_epoch: int) -> float:
    """A slot's training clips done at time `at`, from its epoch ends (linear within an epoch)."""
    for epoch in range(1, len(ends)):
        if ends[epoch - 1] <= at <= ends[epoch]:
            return per_epoch * (epoch + (at - ends[epoch - 1]) / (ends[epoch] - ends[epoch - 1]))
    raise ValueError("outside the slot's epochs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=None, help="default: tiny on the CPU, small,thesis on CUDA")
    parser.add_argument("--counts", default=None, help="trials per process (K); default 1,2,4,8 (CPU: 1,2,4)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per slot (at least 5): the steady "
                        "window runs from the last slot's end of epoch 2 to the first's end of epoch E-1")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--data", default=None, help="a synthetic set (written if missing)")
    parser.add_argument("--videos-per-class", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 5:
        parser.error("--epochs: at least 5 (epochs 1-2 warm up, epoch E evaluates)")
    if args.worker:
        worker(args)
        return

    from train_step import synthetic_root

    cuda = torch.cuda.is_available()
    presets = (args.presets or ("small,thesis" if cuda else "tiny")).split(",")
    per_class = args.videos_per_class or (40 if cuda else 8)
    data = synthetic_root(per_class, args.data)
    counts = [int(c) for c in (args.counts or ("1,2,4,8" if cuda else "1,2,4")).split(",")]
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu'}, {args.cores} cores, "
          f"batch {args.batch_size}, {args.epochs} epochs, timed from the last end of epoch 2 to the "
          f"first end of epoch {args.epochs - 1}, data {data}")
    gains = []
    for preset in presets:
        base = None
        for count in counts:
            command = [sys.executable, __file__, "--worker", "--preset", preset, "--count", str(count),
                       "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                       "--cores", str(args.cores), "--data", str(data)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{preset} K={count}: failed ({tail})")
                break
            row = json.loads(done.stdout.strip().splitlines()[-1])
            base = base or row["aggregate"]
            gain = row["aggregate"] / base
            gains.append(gain)
            slots = " ".join(f"{rate:.1f}" for rate in row["per_slot"])
            print(f"{preset:>6} K={count}: aggregate {row['aggregate']:7.1f} clips/s ({gain:4.2f}x K=1) "
                  f"over {row['seconds']:.1f} s  per slot [{slots}]  peak {row['peak_gib']:.2f} GiB")
    print(f"shared_process_gain: {max(gains):.2f}x" if gains else "shared_process_gain: n/a")


if __name__ == "__main__":
    main()
