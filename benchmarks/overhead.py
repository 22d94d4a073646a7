"""Orchestration overhead: the same tiny trials (a) in a plain loop over `fit` and (b) through `mtsearch`.

(b) is the real command (`python -m mtsearch ablate GRID --quiet`, scheduler off, one trial at a
time, one CPU per trial), so it pays for everything a user pays for: Python start-up, Ray start,
Tune's trial actors, per-epoch reports and checkpoints, Optuna-free grid bookkeeping and the
Parquet store. (a) calls the trainer in this process with one torch thread, the same configs and
the same out-dir checkpointing. The frame cache is warmed first so neither side pays for decoding.
On a shared machine, load from other processes moves wall times around: the two are run in
alternating rounds and the fastest round of each is compared.

    python benchmarks/overhead.py [--trials 4] [--epochs 2] [--rounds 2]

Last line: `orchestration_overhead: <b/a>x`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from mtsearch.space import enumerated_points, space_from_mapping
    from mtsearch.train import fit

    weights = [round(5.0 * (i + 1), 1) for i in range(args.trials)]
    grid = {
        "name": "overhead",
        "base": {"model.preset": "tiny", "optim.epochs": args.epochs, "eval.every": args.epochs, "device": "cpu"},
        "search": {"max_concurrent": 1},
        "scheduler": {"type": "none"},
        "resources": {"cpus_per_trial": 1},
        "grid": {"loss.w_track": weights},
    }
    spec = space_from_mapping(grid, "overhead.yaml", "grid")
    configs = [spec.trial_config(p) for p in enumerated_points(spec)]
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="mtsearch-overhead-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        fit(configs[0].with_overrides({"optim.epochs": 1}), None)  # warm the frame cache (not timed)
        print(f"warm-up (cache fill): {time.perf_counter() - t0:.1f} s", flush=True)

        grid_file = tmp_path / "overhead.yaml"
        grid_file.write_text(spec.to_yaml())
        loop_times: list[float] = []
        tune_times: list[float] = []
        for round_index in range(args.rounds):
            t0 = time.perf_counter()
            for i, cfg in enumerate(configs):
                fit(cfg, tmp_path / f"loop{round_index}" / str(i), resume=False)
            loop_times.append(time.perf_counter() - t0)
            print(f"round {round_index + 1} (a) plain loop over fit: {len(configs)} trials x {args.epochs} "
                  f"epochs in {loop_times[-1]:.1f} s", flush=True)

            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "mtsearch", "ablate", str(grid_file), "--quiet",
                                   "--trials-dir", str(tmp_path / f"trials{round_index}")],
                                  capture_output=True, text=True)
            tune_times.append(time.perf_counter() - t0)
            if done.returncode != 0:
                sys.stderr.write(done.stdout + done.stderr)
                return 1
            print(f"round {round_index + 1} (b) mtsearch ablate (Ray Tune, scheduler off): "
                  f"{tune_times[-1]:.1f} s", flush=True)
        loop_s, tune_s = min(loop_times), min(tune_times)
    print(f"orchestration_overhead: {tune_s / loop_s:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
