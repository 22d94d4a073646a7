"""What a study cost: its trials' ledgers (trials.parquet) summed, in device-hours.

A trial's seconds count once per device it held: on a GPU its reserved share of one GPU
(`gpu_share`; a whole GPU where none is recorded), on the CPU its threads (`threads` in its
config). So a study reads in GPU-hours or CPU core-hours, with the share spent evaluating.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GPU_HOURS, CORE_HOURS = "GPU-hours", "CPU core-hours"


@dataclass(frozen=True)
class StudyCost:
    trials: int  # trials whose epochs recorded what they cost
    train_clips: int
    eval_clips: int
    train_s: float
    eval_s: float
    device_hours: dict[str, float] = field(default_factory=dict)  # GPU-hours and/or CPU core-hours

    @property
    def device_s(self) -> float:
        return self.train_s + self.eval_s

    @property
    def eval_share(self) -> float | None:
        """The fraction of the device seconds spent evaluating."""
        return self.eval_s / self.device_s if self.device_s > 0 else None

    def to_record(self) -> dict[str, Any]:
        """Plain data for JSON: the sums, device seconds and hours, and the evaluating share."""
        return {"trials": self.trials, "train_clips": self.train_clips, "eval_clips": self.eval_clips,
                "train_s": self.train_s, "eval_s": self.eval_s, "device_s": self.device_s,
                "eval_share": self.eval_share, "device_hours": dict(self.device_hours)}

    def summary(self) -> str:
        """`0.41 CPU core-hours (23% evaluating): 12,345 training clips, 2,100 evaluated`."""
        hours = " + ".join(f"{value:.3g} {unit}" for unit, value in self.device_hours.items())
        share = f" ({self.eval_share:.0%} evaluating)" if self.eval_share is not None else ""
        return f"{hours}{share}: {self.train_clips:,} training clips, {self.eval_clips:,} evaluated"

    def line(self) -> str:
        """The summary as a report's line, with the number of trials it sums."""
        return f"cost: {self.summary()}, over {self.trials} trial{'s' if self.trials != 1 else ''}"


def study_cost(trials: Iterable[Mapping[str, Any]]) -> StudyCost | None:
    """The summed ledger of `trials` (rows of trials.parquet); None when no trial recorded one
    (a study from before the ledger)."""
    spent = [t for t in trials if t.get("device_s") is not None]
    if not spent:
        return None
    hours: dict[str, float] = {}
    for trial in spent:
        unit, width = _held(trial)
        hours[unit] = hours.get(unit, 0.0) + float(trial["device_s"]) * width / 3600
    return StudyCost(trials=len(spent), train_clips=sum(int(t.get("train_clips") or 0) for t in spent),
                     eval_clips=sum(int(t.get("eval_clips") or 0) for t in spent),
                     train_s=sum(float(t.get("train_s") or 0.0) for t in spent),
                     eval_s=sum(float(t.get("eval_s") or 0.0) for t in spent), device_hours=hours)


def _held(trial: Mapping[str, Any]) -> tuple[str, float]:
    """(unit, how much of it the trial held): its GPU share, or its CPU threads."""
    device = str(trial.get("device") or "cpu")
    if device.startswith("cuda"):
        share = trial.get("gpu_share")
        return GPU_HOURS, float(share) if share else 1.0
    threads = None
    try:
        threads = json.loads(trial.get("config") or "{}").get("threads")
    except (TypeError, ValueError):
        pass
    return CORE_HOURS, float(threads) if threads else 1.0
