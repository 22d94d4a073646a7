"""Where and how a trial computes: device choice, torch settings, autocast, seeding, loader workers."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from mtsearch.config import TrialConfig
from mtsearch.errors import InvalidInput

MAX_WORKERS = 8  # loader workers a GPU trial needs at most (thesis: data_wait 0.05 with 8)


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(None, "device", "CUDA is not available on this machine", spec)
    return torch.device(spec)


def device_label(device: torch.device) -> str:
    """`cpu` or `cuda:0 NVIDIA H200`: what a trial ran on, for trials.parquet."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by this process on CUDA, else the process's peak RSS, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def compile_wanted(cfg: TrialConfig, device: torch.device) -> bool:
    """`compile` on a GPU; unset, only for `thesis`, where about a minute of compilation buys
    1.26x per step over an hour-long trial. On the CPU compiling costs more than a trial saves."""
    if device.type != "cuda":
        return False
    return cfg.compile if cfg.compile is not None else cfg.model.preset == "thesis"


def configure_torch(device: torch.device, threads: int | None) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if threads is not None:
        torch.set_num_threads(threads)  # CPU results depend on it: pinned for reproducibility
    elif "OMP_NUM_THREADS" not in os.environ:
        # all cores this process may use (Ray sets OMP_NUM_THREADS to the trial's CPUs)
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def autocast(device: torch.device, cache: bool = True, enabled: bool = True) -> torch.autocast:
    """bf16 on CUDA; `cache=False` under CUDA graph capture (the autocast cache must not persist)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache, enabled=enabled)
    return torch.autocast("cpu", enabled=False)


def seed_everything(seed: int) -> None:
    seed = seed % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loader_workers(cfg: TrialConfig, device: torch.device) -> int:
    """DataLoader workers: `data.workers`, else none on the CPU (the step is the bottleneck), and
    on CUDA one fewer than the CPUs the trial may use (`threads`: a search pins it to
    `cpus_per_trial`), at most MAX_WORKERS; the main process keeps one CPU.
    """
    if cfg.data.workers is not None:
        return cfg.data.workers
    if device.type != "cuda":
        return 0
    cpus = cfg.threads if cfg.threads is not None else len(os.sched_getaffinity(0))
    return max(0, min(MAX_WORKERS, cpus - 1))
