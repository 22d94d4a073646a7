"""A trial's checkpoint: model, optimiser, schedule, RNG states and history in one `state.pt`,
written atomically after every epoch so a killed run resumes from its last finished epoch.

A checkpoint is read once (`read_checkpoint`) and upgraded to today's layout by `records`, then
used both to keep the run's recorded defaults and to restore the training state.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtsearch.config import EXECUTION_KEYS, TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.files import atomic_output
from mtsearch.records import (
    RECORD_VERSION,
    VERSION_KEY,
    config_from_record,
    stamped,
    upgrade_checkpoint,
)

CHECKPOINT_FILE = "state.pt"
# keys a resumed run may change: more epochs, and settings that do not change what is computed
RESUMABLE_CHANGES = frozenset({"optim.epochs", *EXECUTION_KEYS})


def save_checkpoint(
    ckpt_dir: Path,
    cfg: TrialConfig,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    history: list[dict[str, Any]],
) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {
        VERSION_KEY: RECORD_VERSION,
        "epoch": epoch,
        "config": stamped(cfg.to_dict()),
        "model": model.state_dict(),
        "optimizer": _portable_optimizer_state(optimizer),
        "scheduler": scheduler.state_dict(),
        "history": history,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    with atomic_output(ckpt_dir / CHECKPOINT_FILE) as tmp:  # fsync, then rename
        torch.save(state, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint memory-mapped on the CPU (cheap: tensors are read only when touched)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # a damaged checkpoint is a user-facing input problem
        raise InvalidInput(path, None, f"cannot read checkpoint: {exc}") from None


def recorded_config(state: dict[str, Any], path: Path) -> TrialConfig:
    """The config a checkpoint's run trained with, in today's keys."""
    return config_from_record(state["config"], path)


def checkpoint_history(ckpt_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics saved in a checkpoint folder ([] when there is none)."""
    path = Path(ckpt_dir) / CHECKPOINT_FILE
    return list(read_checkpoint(path)["history"]) if path.exists() else []


def restore(
    state: dict[str, Any],
    path: Path,
    cfg: TrialConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Put a read checkpoint's training state back; a config that changed what is computed is refused."""
    saved = recorded_config(state, path).to_flat()
    for key, value in cfg.to_flat().items():
        if key not in RESUMABLE_CHANGES and saved.get(key) != value:
            raise InvalidInput(
                path, key,
                f"differs from the checkpoint's value {saved.get(key)!r}; use another --out folder",
                value,
            )
    weight_shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    param_shapes = [tuple(p.shape) for group in optimizer.param_groups for p in group["params"]]
    state = upgrade_checkpoint(state, path, weight_shapes, param_shapes)
    model.load_state_dict(state["model"])
    _load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu() if hasattr(rng["torch"], "cpu") else rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def _portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with plain-number learning rates (loads into any Adam)."""
    state = optimizer.state_dict()
    state["param_groups"] = [
        {**group, "lr": float(group["lr"])} for group in state["param_groups"]
    ]
    return state


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load Adam's state, keeping tensor learning rates (a CUDA graph's) the same tensors."""
    rates = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, rate in zip(optimizer.param_groups, rates):
        if isinstance(rate, torch.Tensor):
            rate.fill_(float(group["lr"]))
            group["lr"] = rate
