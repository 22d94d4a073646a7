"""Evaluation's compute ceiling: the eval-mode forward pass alone on generated clips, no loader.

    python benchmarks/eval_forward.py --preset thesis --batch-sizes 16,64 [--compile]

Prints clips/s per eval batch size; compared with thesis_trial.py's evaluation figure it says
whether evaluation waits for data or for the network.
"""

from __future__ import annotations

import argparse
import time

import torch
from train_step import COMPILE, NUM_CLASSES, trial_config

from mtsearch.data.clips import normalise_batch
from mtsearch.model.multibranch import StepDraws
from mtsearch.train import build_training, compile_wanted, configure_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="thesis")
    parser.add_argument("--branches", default="cls+track+dir")
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", choices=COMPILE, default="auto",
                        help="torch.compile trunk and heads (auto: the trainer's rule)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    configure_torch(device, None)
    cfg = trial_config(args.preset, args.branches, "bf16", compile=COMPILE[args.compile])
    compiled = compile_wanted(cfg, device)
    model = build_training(cfg, NUM_CLASSES, device, print).model.eval()
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        shape = (batch, cfg.data.clip_frames, cfg.crop, cfg.crop, 3)
        clips = torch.randint(0, 256, shape, dtype=torch.uint8).to(device)
        draws = StepDraws(reverse=(torch.arange(batch, device=device) % 2).bool())

        def forward(clips: torch.Tensor = clips, draws: StepDraws = draws) -> None:
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
                model(normalise_batch(clips), track=False, draws=draws)

        start = time.perf_counter()
        for _ in range(3):
            forward()
        if cuda:
            torch.cuda.synchronize()
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            forward()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        print(f"{args.preset} eval forward batch {batch}: {batch / seconds:8.1f} clips/s "
              f"({seconds * 1e3:.1f} ms; warm-up {warm:.1f} s){' compiled' if compiled else ''}",
              flush=True)


if __name__ == "__main__":
    main()
