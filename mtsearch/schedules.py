"""Values that change during training: piecewise-constant schedules of the loss weights and the
optimiser's learning rate and weight decay.

`loss.w_track: {schedule: [[1, 25.0], [21, 37.5], [41, 30.0]]}` means 25 from epoch 1, 37.5 from
epoch 21 and 30 from epoch 41 on. A constant stays a constant. The keys are those that change no
tensor's shape, so a run can change them between epochs (what population-based training does,
and what `train` replays from its lineage). `train/in_force.py` gives the config an epoch trains
with: every schedule replaced by its value at that epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# the keys that may hold a schedule, and whether 0 is a valid value in force (a weight of 0 turns
# its term off, but a schedule's entries must be positive: a zero segment is a branch switched off
# mid-run, which is an ablation, not a schedule; weight decay may be 0)
SCHEDULABLE: dict[str, str] = {
    "loss.w_track": "positive",
    "loss.w_dir": "positive",
    "optim.lr": "positive",
    "optim.weight_decay": "non-negative",
}
SCHEDULE_KEY = "schedule"


@dataclass(frozen=True)
class Schedule:
    """(first epoch, value) pairs, epochs increasing from 1: the value from each epoch on."""

    steps: tuple[tuple[int, float], ...]

    def at(self, epoch: int) -> float:
        value = self.steps[0][1]
        for start, step_value in self.steps:
            if start > epoch:
                break
            value = step_value
        return value

    def starts(self) -> list[int]:
        """The epochs at which a new value comes into force (the first is 1)."""
        return [start for start, _ in self.steps]

    def to_plain(self) -> dict[str, list[list[float]]]:
        return {SCHEDULE_KEY: [[start, value] for start, value in self.steps]}

    def __str__(self) -> str:
        return ", ".join(f"{value:g} from epoch {start}" for start, value in self.steps)


def is_schedule(raw: Any) -> bool:
    return isinstance(raw, Schedule) or (isinstance(raw, Mapping) and SCHEDULE_KEY in raw)


def parse_schedule(raw: Any, key: str) -> Schedule:
    """A `{schedule: [[epoch, value], ...]}` mapping (or a Schedule) as a Schedule; ValueError names
    the bad entry (epochs from 1, increasing; values positive, or >= 0 for weight decay)."""
    if isinstance(raw, Schedule):
        return raw
    if set(raw) != {SCHEDULE_KEY}:
        extra = sorted(str(k) for k in raw if k != SCHEDULE_KEY)
        raise ValueError(f"a schedule is {{schedule: [[epoch, value], ...]}}; unexpected {', '.join(extra)}")
    entries = raw[SCHEDULE_KEY]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ValueError("schedule: expected a non-empty list of [epoch, value] pairs")
    rule = SCHEDULABLE[key]
    steps: list[tuple[int, float]] = []
    for index, entry in enumerate(entries, start=1):
        where = f"schedule entry {index}"
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"{where}: expected [epoch, value], got {entry!r}")
        epoch, value = entry
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or float(epoch) != int(epoch):
            raise ValueError(f"{where}: the epoch must be a whole number, got {epoch!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: the value must be a finite number, got {value!r}")
        epoch, value = int(epoch), float(value)
        if epoch < 1:
            raise ValueError(f"{where}: epochs count from 1, got {epoch}")
        if steps and epoch <= steps[-1][0]:
            raise ValueError(f"{where}: epoch {epoch} is not after the previous entry's {steps[-1][0]} "
                             "(epochs must increase)")
        if value < 0 or (value == 0 and rule == "positive"):
            need = "> 0" if rule == "positive" else ">= 0"
            raise ValueError(f"{where}: the value must be {need}, got {value:g}")
        steps.append((epoch, value))
    if steps[0][0] != 1:
        raise ValueError(f"schedule entry 1: the first entry must start at epoch 1 (got {steps[0][0]}), "
                         "so that every epoch has a value")
    return Schedule(tuple(steps))


def plain(value: Any) -> Any:
    """A key's value as a file holds it: a schedule as its mapping, anything else as it is."""
    return value.to_plain() if isinstance(value, Schedule) else value
