"""What fused trials buy: aggregate training clips/s of K trials in one process (train/fused.py)
against one trial alone, per preset and K, measured in the same run.

Each K runs in a fresh process (so its peak memory is its own): K slots of one preset at batch 4,
differing in seed, learning rate and loss weights, train over the built-in-style synthetic set
with `fit_fused`, sharing the machine's cores (`--cores`, default all of them; one trial alone
gets them all). Epoch 1 pays for start-up (and cuDNN autotuning, compilation), so the timed
window is epochs 2..E of every slot, without evaluation. Per K it prints per-slot clips/s,
aggregate clips/s and peak memory (GPU: the allocator's peak; CPU: the process's peak RSS).
The last line is

    fusion_gain: <best aggregate / aggregate at K = 1>x

    python benchmarks/fusion.py                       # tiny on the CPU; small and thesis on CUDA
    python benchmarks/fusion.py --presets small --counts 1,4,8 --epochs 3
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
    """K fused slots in this process: print one JSON line with the timed window's figures."""
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
    clips, seconds = timed_fused_epochs(cfgs, per_epoch, device, cores=args.cores)
    print(json.dumps({"count": len(cfgs), "clips": clips, "seconds": seconds,
                      "aggregate": clips / seconds, "peak_gib": peak_memory_gib(device)}))


def timed_fused_epochs(cfgs: list, per_epoch: int, device: torch.device,
                       cores: int | None = None) -> tuple[int, float]:
    """Train `cfgs` fused (`fit_fused`, no checkpoints); (training clips, seconds) of every slot's
    epochs 2..E, which lie between the first end of an epoch 1 and the last end of an epoch."""
    from mtsearch.train.fused import fit_fused

    ends: list[list[float]] = [[] for _ in cfgs]

    def after_epoch(k: int):
        def on_epoch(row: dict, _: object) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ends[k].append(time.perf_counter())
        return on_epoch

    results = fit_fused(cfgs, [None] * len(cfgs), on_epoch=[after_epoch(k) for k in range(len(cfgs))],
                        cores=cores)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    clips = sum(len(slot) - 1 for slot in ends) * per_epoch
    return clips, max(slot[-1] for slot in ends) - min(slot[0] for slot in ends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=None, help="default: tiny on the CPU, small,thesis on CUDA")
    parser.add_argument("--counts", default="1,2,4,8", help="slots per process (K)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per slot; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--data", default=None, help="a synthetic set (written if missing)")
    parser.add_argument("--videos-per-class", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from train_step import synthetic_root

    cuda = torch.cuda.is_available()
    presets = (args.presets or ("small,thesis" if cuda else "tiny")).split(",")
    per_class = args.videos_per_class or (40 if cuda else 8)
    data = synthetic_root(per_class, args.data)
    counts = [int(c) for c in args.counts.split(",")]
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu'}, {args.cores} cores, "
          f"batch {args.batch_size}, epochs 2..{args.epochs} timed, data {data}")
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
            print(f"{preset:>6} K={count}: per-slot {row['aggregate'] / count:7.1f} clips/s  "
                  f"aggregate {row['aggregate']:7.1f} clips/s  ({gain:4.2f}x K=1)  "
                  f"peak {row['peak_gib']:.2f} GiB")
    print(f"fusion_gain: {max(gains):.2f}x" if gains else "fusion_gain: n/a")


if __name__ == "__main__":
    main()
