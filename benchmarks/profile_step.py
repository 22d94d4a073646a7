"""Where a training step's time goes: torch.profiler over the trainer's own step.

Prints the operators (CPU) and kernels (CUDA) that cost the most over a few profiled steps, and
how many kernels one step launches, for one preset, batch and branch mask. Works on the CPU too
(operator counts and times), which is how a change is checked before a GPU is lent.

    python benchmarks/profile_step.py --preset tiny --batch-size 32            # eager step
    python benchmarks/profile_step.py --preset thesis --cuda-graph --top 25     # graph replay
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from train_step import COMPILE, NUM_CLASSES, trial_config

from mtsearch.train import GRAPH_WARMUP, build_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--branches", default="cls+track+dir")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--cuda-graph", action="store_true", help="profile graph replays")
    parser.add_argument("--compile", choices=COMPILE, default="auto",
                        help="torch.compile trunk and heads (auto: the trainer's rule)")
    parser.add_argument("--top", type=int, default=20, help="rows of the table")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = ("bf16g" if args.cuda_graph else "bf16") if cuda else "fp32"
    if cuda:
        torch.backends.cudnn.benchmark = True
    cfg = trial_config(args.preset, args.branches, precision, **{
        "optim.batch_size": args.batch_size, "compile": COMPILE[args.compile]})
    torch.manual_seed(0)
    training = build_training(cfg, NUM_CLASSES, device, print, bf16=precision != "fp32")
    model, step = training.model, training.step
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch_size, cfg.data.clip_frames, cfg.crop, cfg.crop, 3)
    clips = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=gen)
    if cuda:
        clips, labels = clips.pin_memory(), labels.pin_memory()
    for _ in range(GRAPH_WARMUP + 2):
        step(clips, labels, model.draw(args.batch_size, gen))
    step.read()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step(clips, labels, model.draw(args.batch_size, gen))
        step.read()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"{args.preset} {args.branches} batch {args.batch_size} {precision}, {args.steps} steps")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=60))
    events = prof.events()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1e3 / args.steps
        print(f"kernels per step: {len(kernels) / args.steps:.0f}; GPU busy {busy:.2f} ms/step")
    ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    print(f"operators per step: {len(ops) / args.steps:.0f}")


if __name__ == "__main__":
    main()
