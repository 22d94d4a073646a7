"""The config an epoch trains with: each schedule (schedules.py) replaced by its value then."""

from __future__ import annotations

from mtsearch.config import TrialConfig
from mtsearch.schedules import SCHEDULABLE, Schedule


def in_force(cfg: TrialConfig, epoch: int) -> TrialConfig:
    """The config epoch `epoch` trains with: each schedule replaced by its value then."""
    flat = cfg.to_flat()
    now = {key: flat[key].at(epoch) for key in SCHEDULABLE if isinstance(flat[key], Schedule)}
    return cfg.with_overrides(now, "<schedule>") if now else cfg


def changes_at(cfg: TrialConfig, epoch: int) -> dict[str, float]:
    """The scheduled keys whose value changes at `epoch` (not at epoch 1), and their new values."""
    flat = cfg.to_flat()
    return {key: flat[key].at(epoch) for key in SCHEDULABLE
            if isinstance(flat[key], Schedule) and epoch > 1 and flat[key].at(epoch) != flat[key].at(epoch - 1)}
