"""Training throughput per preset and branch mask, and the cost of the self-supervised branches.

One training step = forward + compute_losses + backward + gradient clipping + Adam step, on
generated tensors of the preset's geometry (no data loading). Every preset is measured with each
branch mask in the same run, so the last line compares like with like:

    branches_cost: <time per clip of cls+track+dir / time per clip of cls only>x

for the main preset (the largest one measured), from process CPU time on one CPU thread (robust
to other load on a shared machine), from wall time otherwise. On CUDA every mask is also run
under bf16 autocast, and MFU is reported against a bf16 matmul peak measured on the same GPU.

    python benchmarks/train_step.py                   # CPU: tiny and small (under ~2 minutes)
    python benchmarks/train_step.py --presets thesis  # thesis too (default when CUDA is present)
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import torch

from mtsearch.config import PRESETS, TrialConfig, branches_label, normalize_branches
from mtsearch.model import MultiBranchNet, compute_losses, describe

MASKS = ("cls", "cls+track", "cls+dir", "cls+track+dir")
# smallest first; the last one measured is the main preset
PRESET_ORDER = ("tiny", "small", "thesis")
NUM_CLASSES = 51


@dataclass
class Measurement:
    preset: str
    mask: str
    precision: str  # fp32 | bf16
    batch: int
    step_s: float  # median wall seconds per step
    cpu_step_s: float  # median process CPU seconds per step (all threads)
    macs_per_clip: int  # forward MACs per clip (describe)

    @property
    def clips_per_s(self) -> float:
        return self.batch / self.step_s

    @property
    def s_per_clip(self) -> float:
        return self.step_s / self.batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def measure(
    preset: str,
    mask: str,
    device: torch.device,
    precision: str,
    batch: int,
    warmup: int,
    steps: int,
) -> Measurement:
    """Median time of `steps` training steps after `warmup` untimed ones."""
    cfg = TrialConfig.from_mapping({"model.preset": preset, "model.branches": mask}).resolved()
    torch.manual_seed(0)
    model = MultiBranchNet(cfg, NUM_CLASSES).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
    )
    clips = torch.randn(batch, 3, cfg.data.clip_frames, cfg.crop, cfg.crop, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    wall, cpu = [], []
    for i in range(warmup + steps):
        sync(device)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        with autocast:
            out = model(clips, generator=generator)
            loss = compute_losses(out, labels, cfg)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
    macs = describe(cfg, NUM_CLASSES)[-1].macs
    return Measurement(preset, mask, precision, batch, median(wall), median(cpu), macs)


def bf16_matmul_peak(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """Measured dense bf16 matmul FLOP/s on this GPU (the MFU denominator)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--presets", help="comma-separated (default: tiny,small; plus thesis on CUDA)"
    )
    parser.add_argument(
        "--masks", default=" ".join(MASKS), help="space-separated branch masks (default: all four)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="clips per step (thesis: 4)")
    parser.add_argument(
        "--steps", type=int, help="timed steps per measurement (default 4 CPU, 20 CUDA)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: one trial per core)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
    presets = (args.presets or ("tiny,small,thesis" if cuda else "tiny,small")).split(",")
    for name in presets:
        if name not in PRESETS:
            parser.error(f"unknown preset {name!r} (one of {', '.join(PRESETS)})")
    presets = sorted(set(presets), key=PRESET_ORDER.index)
    masks = [branches_label(normalize_branches(m)) for m in args.masks.split()]
    if "cls" not in masks or "cls+track+dir" not in masks:
        masks = sorted(set(masks) | {"cls", "cls+track+dir"}, key=lambda m: (m.count("+"), m))
    steps = args.steps or (20 if cuda else 4)
    precisions = ["fp32", "bf16"] if cuda else ["fp32"]

    where = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"CPU, {args.threads} thread(s), {os.cpu_count()} cores"
    )
    print(
        f"device: {where}; torch {torch.__version__}; batch {args.batch_size}; "
        f"{steps} timed steps after {args.warmup} warm-up; median per step"
    )
    peak = bf16_matmul_peak(device) if cuda else None
    if peak is not None:
        print(f"bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s (measured, 8192^3)")

    header = f"{'preset':<7} {'branches':<14} {'prec':<5} {'ms/step':>9} {'clips/s':>8} {'cpu ms':>8} {'GMACs/clip':>11}"
    print(header + ("  MFU" if peak else ""))
    results: list[Measurement] = []
    for preset in presets:
        for precision in precisions:
            for mask in masks:
                m = measure(preset, mask, device, precision, args.batch_size, args.warmup, steps)
                results.append(m)
                line = (
                    f"{m.preset:<7} {m.mask:<14} {m.precision:<5} {m.step_s * 1e3:9.1f} "
                    f"{m.clips_per_s:8.2f} {m.cpu_step_s * 1e3:8.1f} {m.macs_per_clip / 1e9:11.3f}"
                )
                if peak:
                    # training FLOPs per clip ~ 3 x forward (backward ~ 2x), 2 FLOPs per MAC
                    mfu = 6 * m.macs_per_clip * m.clips_per_s / peak
                    line += f"  {mfu * 100:4.1f}%"
                print(line, flush=True)

    # one CPU thread: process CPU time is the compute and ignores other load on a shared machine
    use_cpu_time = not cuda and args.threads == 1
    basis = "process CPU time" if use_cpu_time else "wall time"

    def cost(preset: str, precision: str) -> float:
        """Time per clip of cls+track+dir over cls only, same preset and precision."""
        by_mask = {m.mask: m for m in results if (m.preset, m.precision) == (preset, precision)}
        full, cls_only = by_mask["cls+track+dir"], by_mask["cls"]
        if use_cpu_time:
            return full.cpu_step_s / full.batch / (cls_only.cpu_step_s / cls_only.batch)
        return full.s_per_clip / cls_only.s_per_clip

    for preset in presets:
        for precision in precisions:
            print(f"cost of track+dir, {preset} {precision}: {cost(preset, precision):.2f}x")
    main_preset, main_precision = presets[-1], precisions[-1]
    print(f"main preset: {main_preset} ({main_precision}); {basis} per clip vs cls only")
    print(f"branches_cost: {cost(main_preset, main_precision):.2f}x")

if __name__ == "__main__":
    main()
