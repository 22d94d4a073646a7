"""Every metric mtsearch records, in one table: name, when it is measured, which way is better,
how it is labelled and shown, and whether a study may optimise it.

The store's columns, the space file's `metric` check and default `mode`, the trainer's epoch row,
plots, reports, the result card and the terminal tables all read this table. Adding a metric is a
row here plus the code that computes it. `Direction` is the one place that knows what "better"
means for a `mode`; nothing else compares a mode with "max" or "min".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MODES: tuple[str, ...] = ("max", "min")


@dataclass(frozen=True)
class Direction:
    """Which way is better for a study's `mode` (`max` or `min`)."""

    mode: str

    @property
    def sign(self) -> float:
        """+1 where higher is better, -1 where lower is: `sign * value` is then larger-is-better."""
        return 1.0 if self.mode == MODES[0] else -1.0

    @property
    def worst(self) -> float:
        """A value every real score beats: the score of a run that never produced one."""
        return -math.inf * self.sign

    @property
    def word(self) -> str:
        """`higher` or `lower`: what "better" means, in a sentence."""
        return "higher" if self.sign > 0 else "lower"

    @property
    def extreme(self) -> str:
        """`highest` or `lowest`: what a ranking puts first."""
        return "highest" if self.sign > 0 else "lowest"

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is strictly better than `b`."""
        return self.sign * a > self.sign * b

    def best(self, values: Iterable[float]) -> float:
        """The best of `values` (ValueError when there are none)."""
        return max(values, key=self.key)

    def key(self, value: float) -> float:
        """A sort key, larger-is-better: `sorted(..., key=d.key, reverse=True)` lists best first."""
        return self.sign * value

    def rank_key(self, value: float) -> float:
        """A sort key, smaller-is-better: `sorted(..., key=d.rank_key)` lists best first."""
        return -self.sign * value


MAXIMISE, MINIMISE = Direction("max"), Direction("min")


def direction(mode: str) -> Direction:
    """The Direction of a `mode` string (`max` or `min`); ValueError for anything else."""
    if mode not in MODES:
        raise ValueError(f"mode must be max or min (got {mode!r})")
    return MAXIMISE if mode == MODES[0] else MINIMISE


FRACTION = "fraction"  # in [0, 1]; shown as percent points
SLOTS_KEY = "slots"  # an epoch row of a configuration's seeds (train/side_by_side.py): each seed's own row, beside their mean


@dataclass(frozen=True)
class Metric:
    name: str
    scope: str  # `epoch`: a column of epochs.parquet; `trial`: once per trial (trials.parquet)
    direction: Direction  # the default `mode` when a study optimises it
    label: str  # for axes and titles
    unit: str  # FRACTION, or the unit a label adds (`s`, `px`, `GiB`), or "" for none
    objective: bool  # a study may select on it (`metric:` in a space file)
    evaluated: bool = False  # computed by evaluation, on the split the caller names


_E, _T = "epoch", "trial"
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("loss", _E, MINIMISE, "training loss", "", True),
    Metric("loss_cls", _E, MINIMISE, "classification loss", "", True),
    Metric("loss_track", _E, MINIMISE, "tracking loss", "", True),
    Metric("loss_dir", _E, MINIMISE, "direction loss", "", True),
    Metric("train_hit1", _E, MAXIMISE, "training hit@1", FRACTION, True),
    Metric("val_hit1", _E, MAXIMISE, "validation hit@1", FRACTION, True, evaluated=True),
    Metric("val_hit5", _E, MAXIMISE, "validation hit@5", FRACTION, True, evaluated=True),
    Metric("dir_acc", _E, MAXIMISE, "time-direction accuracy", FRACTION, True, evaluated=True),
    Metric("lr", _E, MINIMISE, "learning rate", "", True),
    Metric("epoch_s", _E, MINIMISE, "epoch time", "s", True),
    Metric("clips_per_s", _E, MAXIMISE, "training throughput", "clips/s", True),
    Metric("data_wait", _E, MINIMISE, "time waiting for data", FRACTION, True),
    # the final weights on the test split: reported once per trial, never selected on
    Metric("test_hit1", _E, MAXIMISE, "test hit@1", FRACTION, False),
    Metric("test_hit5", _E, MAXIMISE, "test hit@5", FRACTION, False),
    Metric("track_feat_cos", _E, MINIMISE, "feature cosine across positions", "", True, evaluated=True),
    Metric("track_err_px", _E, MINIMISE, "tracking error", "px", True, evaluated=True),
    Metric("track_gain", _E, MAXIMISE, "tracking gain over a static guess", "", True, evaluated=True),
    Metric("cycle_gain", _E, MAXIMISE, "cycle gain over a centred guess", "", True, evaluated=True),
    # top-1 accuracy of each class, averaged over the classes: what Kinetics and SSv2 papers quote
    # (after the columns epochs.parquet had before, which keep their places)
    Metric("val_mean_class_acc", _E, MAXIMISE, "validation mean class accuracy", FRACTION, True,
           evaluated=True),
    Metric("test_mean_class_acc", _E, MAXIMISE, "test mean class accuracy", FRACTION, False),
    # the values in force for the epoch, constant or from a schedule (`lr` above is the optimiser's,
    # after the plateau rule); a branch's weight only where the branch is on
    Metric("w_track", _E, MINIMISE, "tracking loss weight in force", "", False),
    Metric("w_dir", _E, MINIMISE, "direction loss weight in force", "", False),
    Metric("weight_decay", _E, MINIMISE, "weight decay in force", "", False),
    # what the epoch cost: clips trained and evaluated (the validation split, and the test split
    # after the last epoch) and the seconds each took; trials.parquet sums them per trial
    Metric("train_clips", _E, MINIMISE, "training clips", "", False),
    Metric("train_s", _E, MINIMISE, "training time", "s", False),
    Metric("eval_clips", _E, MINIMISE, "evaluated clips", "", False),
    Metric("eval_s", _E, MINIMISE, "evaluation time", "s", False),
    Metric("peak_mem_gib", _T, MINIMISE, "peak memory", "GiB", False),
)}

EPOCH_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.scope == _E)
OBJECTIVES: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.objective)
# what evaluation computes; the caller names the split (`val_*` in the table, `test_*` once)
EVALUATED: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.evaluated)
TEST_METRICS: tuple[str, ...] = ("test_hit1", "test_hit5", "test_mean_class_acc")
EPOCH_COLUMNS: tuple[str, ...] = ("epoch", *EPOCH_METRICS)  # one epochs.parquet row, as fit makes it


def best_epoch(rows: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The evaluated epoch with the highest val_hit1 (ties: the earlier), as the trainer picks it."""
    evaluated = [r for r in rows if r.get("val_hit1") is not None]
    if not evaluated:
        return None
    return max(evaluated, key=lambda r: (r["val_hit1"], -r["epoch"]))


def default_mode(name: str) -> str:
    """The `mode` a study gets when its space file names none."""
    metric = METRICS.get(name)
    return metric.direction.mode if metric else MAXIMISE.mode


def counterpart_on_test(name: str) -> str:
    """The test-split figure a study's objective is read against: `test_hit5` for `val_hit5`,
    `test_mean_class_acc` for its validation figure, `test_hit1` otherwise."""
    return {"val_hit5": "test_hit5", "val_mean_class_acc": "test_mean_class_acc"}.get(name, "test_hit1")


def worst_value(name: str, mode: str) -> float | None:
    """The worst score a run can have: 0 for a fraction that is maximised, 1 for one that is
    minimised; None for an unbounded metric (a loss)."""
    metric = METRICS.get(name)
    if metric is None or metric.unit != FRACTION:
        return None
    return 0.0 if direction(mode).sign > 0 else 1.0


def display_scale(name: str, values: Iterable[Any]) -> tuple[float, str]:
    """(scale, unit) for showing a metric: fractions in [0, 1] as percent points, else as is."""
    metric = METRICS.get(name)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    fraction = metric.unit == FRACTION if metric else ("hit" in name or "acc" in name)
    if fraction and finite and all(0.0 <= v <= 1.0 for v in finite):
        return 100.0, "%"
    return 1.0, ""


def stored_unit(name: str) -> str | None:
    """What a stored value of `name` is measured in, for files' column notes: fractions stay
    fractions in Parquet, CSV and JSON (tables show them in percent)."""
    bare = name.removeprefix("best_").removeprefix("final_")
    metric = METRICS.get(bare)
    if metric is None or not metric.unit:
        return None
    return "fraction (0..1)" if metric.unit == FRACTION else metric.unit


def label(name: str, unit: str = "") -> str:
    """An axis label: the metric's words and the unit it is shown in (`validation hit@1 (%)`)."""
    metric = METRICS.get(name)
    words = metric.label if metric else name
    if not unit and metric and metric.unit != FRACTION:
        unit = metric.unit
    return f"{words} ({unit})" if unit else words


def title(name: str) -> str:
    """The metric's words alone, for a figure's title."""
    metric = METRICS.get(name)
    return metric.label if metric else name
