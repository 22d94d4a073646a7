"""Training throughput per preset and branch mask, and the cost of the self-supervised branches.

One training step is the trainer's own (`mtsearch.train.build_training`): uint8 clips of the preset's
geometry normalised on the device, host-drawn randomness, forward + losses + backward + gradient
clipping + Adam (fused on CUDA), channels-last on CUDA. No data loading: that is the `loop`
column, the trainer's real loop (`fit`) over a synthetic set written for the run, data included,
for the masks named by --loop-masks. Every preset is measured with each branch mask in the same
run, so the last line compares like with like:

    branches_cost: <time per clip of cls+track+dir / time per clip of cls only>x

for the main preset (the largest one measured), from process CPU time on one CPU thread (robust
to other load on a shared machine), from wall time otherwise. On CUDA every mask is also run
under bf16 autocast and, with --cuda-graph, as a captured CUDA graph ("bf16g"); MFU is reported
against a bf16 matmul peak measured on the same GPU.

    python benchmarks/train_step.py                   # CPU: tiny and small (a few minutes)
    python benchmarks/train_step.py --presets thesis  # thesis too (default when CUDA is present)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mtsearch.config import TrialConfig
from mtsearch.model import describe
from mtsearch.presets import PRESETS, branches_label, normalize_branches
from mtsearch.train import GRAPH_WARMUP, build_training, compile_wanted

MASKS = ("cls", "cls+track", "cls+dir", "cls+track+dir")
# smallest first; the last one measured is the main preset
PRESET_ORDER = ("tiny", "small", "thesis")
NUM_CLASSES = 51


@dataclass
class Measurement:
    preset: str
    mask: str
    precision: str  # fp32 | bf16 | bf16g (bf16 in a CUDA graph)
    batch: int
    step_s: float  # wall seconds per step (median on CPU; a timed block / steps on CUDA)
    cpu_step_s: float  # process CPU seconds per step (all threads)
    macs_per_clip: int  # forward MACs per clip (describe)
    peak_gib: float | None = None  # peak GPU memory of the step
    loop_clips_per_s: float | None = None  # the trainer's loop over real data (fit)
    data_wait: float | None = None  # its fraction of time waiting for the loader

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


COMPILE = {"auto": None, "on": True, "off": False}  # --compile -> the `compile` key


def trial_config(preset: str, mask: str, precision: str, **overrides: object) -> TrialConfig:
    flat = {"model.preset": preset, "model.branches": mask, "cuda_graph": precision == "bf16g"}
    return TrialConfig.from_mapping({**flat, **overrides}).resolved()


def measure(
    preset: str,
    mask: str,
    device: torch.device,
    precision: str,
    batch: int,
    warmup: int,
    steps: int,
    compile_mode: str = "auto",
    compile_tracking: bool = True,
) -> Measurement:
    """Time `steps` trainer steps after `warmup` untimed ones, on generated uint8 clips."""
    cfg = trial_config(preset, mask, precision, **{"optim.batch_size": batch,
                                                    "compile": COMPILE[compile_mode]})
    compile_stages = compile_wanted(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    training = build_training(cfg, NUM_CLASSES, device, print, bf16=precision != "fp32",
                              compile_tracking=compile_tracking)
    model, step = training.model, training.step
    shape = (batch, cfg.data.clip_frames, cfg.crop, cfg.crop, 3)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):  # two different batches, as a loader would hand over
        clips = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
        batches.append((clips.pin_memory(), labels.pin_memory()) if device.type == "cuda" else (clips, labels))

    def run(i: int) -> None:
        clips, labels = batches[i % 2]
        step(clips, labels, model.draw(batch, gen))

    if cfg.cuda_graph:  # keep the warm-up steps and the capture out of the timed blocks
        warmup = max(warmup, GRAPH_WARMUP + 2)
    warm_start = time.perf_counter()
    for i in range(warmup):
        run(i)
    step.read()
    if compile_stages:
        print(f"  ({preset} {mask}: warm-up with compilation {time.perf_counter() - warm_start:.1f} s)")
    if device.type == "cuda":  # queued as the trainer queues them: one sync per block
        blocks = []
        for _ in range(3):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for i in range(steps):
                run(i)
            sync(device)
            blocks.append((time.perf_counter() - start_wall, time.process_time() - start_cpu))
        wall_s, cpu_s = median(blocks)
        step_s, cpu_step_s = wall_s / steps, cpu_s / steps
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        wall, cpu = [], []
        for i in range(steps):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run(i)
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
        step_s, cpu_step_s, peak = median(wall), median(cpu), None
    sums, bad = step.read()
    if bad is not None:
        raise RuntimeError(f"{preset} {mask}: non-finite loss at step {bad}")
    macs = describe(cfg, NUM_CLASSES)[-1].macs
    return Measurement(preset, mask, precision, batch, step_s, cpu_step_s, macs, peak)


def synthetic_root(videos_per_class: int, root: str | Path | None = None) -> Path:
    """A built-in-style synthetic set (6 classes) for the loop column: `root` if it already holds
    one, else written there (or in a temporary folder). Its frame cache goes beside it."""
    from mtsearch.data.synthetic import write_synthetic

    if root is not None and (Path(root) / "testTrainMulti_7030_splits").is_dir():
        return Path(root)
    target = Path(root) if root else Path(tempfile.mkdtemp(prefix="mtsearch-bench-")) / "synthetic"
    return write_synthetic(target, classes=6, videos_per_class=videos_per_class, seed=0)


def measure_loop(
    preset: str,
    mask: str,
    device: torch.device,
    precision: str,
    batch: int,
    data_root: Path,
    epochs: int = 3,
    threads: int | None = None,
    compile_mode: str = "auto",
) -> tuple[float, float, list[dict]]:
    """The trainer's loop (`fit`) over `data_root`: best training clips/s of epochs 2..E (the
    first pays for cuDNN autotuning and worker start-up), its data_wait, and every epoch's row."""
    from mtsearch.train import fit

    cfg = trial_config(
        preset, mask, precision,
        **{"data.root": str(data_root), "data.cache_dir": str(data_root.parent / "cache"),
           "optim.batch_size": batch, "optim.epochs": epochs, "eval.every": epochs,
           "device": device.type, "threads": threads, "compile": COMPILE[compile_mode]},
    )
    history = fit(cfg).history
    steady = history[1:] or history
    best = max(steady, key=lambda row: row["clips_per_s"] or 0.0)
    return best["clips_per_s"], best["data_wait"], history


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
    parser.add_argument(
        "--cuda-graph", action="store_true", help="CUDA: also measure the step as a CUDA graph"
    )
    parser.add_argument(
        "--loop-masks", default="cls+track+dir",
        help="masks whose trainer loop over real data is measured too ('' for none)",
    )
    parser.add_argument(
        "--loop-videos", type=int,
        help="synthetic videos per class for the loop (default 4 CPU, 40 CUDA)",
    )
    parser.add_argument("--data", help="synthetic set for the loop: reused if there, else written")
    parser.add_argument(
        "--compile", choices=COMPILE, default="auto",
        help="torch.compile trunk and heads (the `compile` key; auto: the trainer's rule)",
    )
    parser.add_argument(
        "--eager-tracker", action="store_true",
        help="where compiling, leave the tracker's steps eager (as before issue 8's last change)",
    )
    parser.add_argument(
        "--precisions", help="comma-separated subset of fp32,bf16,bf16g (default: all that apply)"
    )
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
    precisions = (["fp32", "bf16"] + (["bf16g"] if args.cuda_graph else [])) if cuda else ["fp32"]
    if args.precisions:
        precisions = [p for p in precisions if p in args.precisions.split(",")] or precisions
    loop_masks = {branches_label(normalize_branches(m)) for m in args.loop_masks.split()}
    loop_precision = {"bf16g" if args.cuda_graph else "bf16"} if cuda else {"fp32"}
    data_root = None
    if loop_masks:
        data_root = synthetic_root(args.loop_videos or (40 if cuda else 4), args.data)

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

    header = (
        f"{'preset':<7} {'branches':<14} {'prec':<5} {'ms/step':>9} {'clips/s':>8} "
        f"{'loop c/s':>9} {'wait':>5} {'cpu ms':>8} {'GMACs/clip':>11}"
    )
    print(header + ("  peak GiB   MFU" if peak else ""))
    results: list[Measurement] = []
    for preset in presets:
        for precision in precisions:
            for mask in masks:
                m = measure(
                    preset, mask, device, precision, args.batch_size, args.warmup, steps,
                    args.compile, not args.eager_tracker,
                )
                if data_root is not None and mask in loop_masks and precision in loop_precision:
                    threads = args.threads if not cuda else None
                    m.loop_clips_per_s, m.data_wait, _ = measure_loop(
                        preset, mask, device, precision, args.batch_size, data_root,
                        threads=threads, compile_mode=args.compile,
                    )
                results.append(m)
                loop = f"{m.loop_clips_per_s:9.2f}" if m.loop_clips_per_s else f"{'—':>9}"
                wait = f"{m.data_wait:5.2f}" if m.data_wait is not None else f"{'—':>5}"
                line = (
                    f"{m.preset:<7} {m.mask:<14} {m.precision:<5} {m.step_s * 1e3:9.1f} "
                    f"{m.clips_per_s:8.2f} {loop} {wait} {m.cpu_step_s * 1e3:8.1f} "
                    f"{m.macs_per_clip / 1e9:11.3f}"
                )
                if peak:
                    # training FLOPs per clip ~ 3 x forward (backward ~ 2x), 2 FLOPs per MAC
                    mfu = 6 * m.macs_per_clip * m.clips_per_s / peak
                    line += f"  {m.peak_gib:8.2f}  {mfu * 100:4.1f}%"
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
    main_preset = presets[-1]
    main_precision = "bf16" if "bf16" in precisions else precisions[-1]
    print(f"main preset: {main_preset} ({main_precision}); {basis} per clip vs cls only")
    print(f"branches_cost: {cost(main_preset, main_precision):.2f}x")

if __name__ == "__main__":
    main()
