"""GPU-only checks of the fast training path (issue 8); CI has no GPU, so run this on one.

1. No host sync inside a training step: eager steps under `torch.cuda.set_sync_debug_mode`.
2. A CUDA-graph step trains like the eager one: same batches and draws, running losses compared.
3. A tensor learning rate follows ReduceLROnPlateau on this torch version.
4. A compiled (`compile: true`) graph step trains like the plain eager one, a short batch included.

    python benchmarks/gpu_check.py        # prints one line per check; exit 1 if one fails
"""

from __future__ import annotations

import sys
import warnings

import torch

from mtsearch.config import TrialConfig
from mtsearch.model import MultiBranchNet
from mtsearch.train import TrainStep, build_training, step_lr_scheduler


def build(
    preset: str, graph: bool, device: torch.device, compiled: bool = False
) -> tuple[MultiBranchNet, TrainStep]:
    cfg = TrialConfig.from_mapping({"model.preset": preset, "cuda_graph": graph,
                                    "compile": compiled}).resolved()
    torch.manual_seed(0)
    training = build_training(cfg, 51, device, print)
    return training.model, training.step


def batches(cfg_preset: str, count: int, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg = TrialConfig.from_mapping({"model.preset": cfg_preset}).resolved()
    gen = torch.Generator().manual_seed(1)
    shape = (batch, cfg.data.clip_frames, cfg.crop, cfg.crop, 3)
    return [
        (torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).pin_memory(),
         torch.randint(0, 51, (batch,), generator=gen).pin_memory())
        for _ in range(count)
    ]


def check_no_sync(preset: str, device: torch.device) -> bool:
    model, step = build(preset, False, device)
    data = batches(preset, 4)
    gen = torch.Generator().manual_seed(0)
    for x, y in data[:2]:  # first steps allocate Adam's state and autotune cuDNN
        step(x, y, model.draw(4, gen))
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for x, y in data[2:]:
                step(x, y, model.draw(4, gen))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # the first message only says the debug mode is a prototype: count the synchronizing calls
    syncs = [str(w.message).splitlines()[0] for w in caught
             if "called a synchronizing" in str(w.message)]
    print(f"no-sync {preset}: {len(syncs)} synchronizing calls in 2 steps"
          + (f" (first: {syncs[0]})" if syncs else ""))
    return not syncs


def check_graph_parity(
    preset: str, device: torch.device, steps: int = 8, compiled: bool = False
) -> bool:
    """Eager vs graph (compiled too if asked) over the same batches, one of them short (an
    epoch's last: run eagerly)."""
    data = batches(preset, steps)
    data.insert(6, tuple(t[:3] for t in batches(preset, 1)[0]))
    sums = []
    for graph in (False, True):
        model, step = build(preset, graph, device, compiled=graph and compiled)
        gen = torch.Generator().manual_seed(0)
        for x, y in data:
            step(x, y, model.draw(len(y), gen))
        values, bad = step.read()
        sums.append((values, bad, step.graph is not None))
    (eager, bad_e, _), (graphed, bad_g, captured) = sums
    rel = abs(graphed["loss"] - eager["loss"]) / max(abs(eager["loss"]), 1e-9)
    ok = captured and bad_e is None and bad_g is None and rel < 0.02
    print(f"graph{' compiled' if compiled else ''} {preset}: captured={captured}, summed loss eager {eager['loss']:.4f} "
          f"graph {graphed['loss']:.4f} (rel diff {rel:.2e}; bf16 and cuDNN autotuning differ a little)")
    return ok


def check_tensor_lr(device: torch.device) -> bool:
    model, step = build("tiny", True, device)
    optimizer = step.optimizer
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
    rate = optimizer.param_groups[0]["lr"]
    for loss in (1.0, 2.0, 3.0):
        step_lr_scheduler(scheduler, optimizer, loss)
    after = optimizer.param_groups[0]["lr"]
    ok = after is rate and float(after) < 2e-4 * 0.2
    print(f"tensor lr: same tensor={after is rate}, value {float(after):.2e} after two plateaus")
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check")
        return 0
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    results = [check_no_sync(p, device) for p in ("tiny", "thesis")]
    results += [check_graph_parity(p, device) for p in ("tiny", "thesis")]
    results.append(check_tensor_lr(device))
    results.append(check_graph_parity("tiny", device, compiled=True))
    print("gpu_check:", "all passed" if all(results) else "FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
