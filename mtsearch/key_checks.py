"""What each config key accepts: the allowed values and ranges, one table (`CHECKS`), kept out of
config.py so the dataclasses read as the list of keys they are."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtsearch.errors import InvalidInput
from mtsearch.presets import PRESETS
from mtsearch.values import at_least, non_negative, one_of, positive

DATASETS: tuple[str, ...] = ("synthetic", "hmdb51", "ucf101", "list", "kinetics", "ssv2")
SOURCE_FPS = "source"  # data.fps: every frame at the videos' own rate
FLIPS: tuple[str, ...] = ("on", "off", "swap")  # data.flip (data/flips.py)
CACHE_FORMATS: tuple[str, ...] = ("jpeg", "raw")  # data.cache_format (data/frame_formats.py)
CLIPS_VIEWS = "clips"  # eval.views: every non-overlapping clip, averaged (the thesis's protocol)
VAL_CARVINGS: tuple[str, ...] = ("closest", "greedy")  # data/splits.py; greedy: records before v6
EVAL_RUNGS = "rungs"  # eval.every: the scheduler's milestones (eval.at) and the last epoch


def parse_views(views: str) -> tuple[int, int] | None:
    """`KxN` -> (K temporal clips, N spatial crops); `clips` -> None (every clip, centre crop)."""
    if views == CLIPS_VIEWS:
        return None
    match = re.fullmatch(r"(\d+)x(\d+)", views)
    if not match:
        raise ValueError(f"not a protocol: {views!r}")
    return int(match.group(1)), int(match.group(2))


def view_problem(views: str) -> str | None:
    try:
        parsed = parse_views(views)
    except ValueError:
        parsed = (0, 0)
    if parsed is not None and not (1 <= parsed[0] <= 100 and 1 <= parsed[1] <= 10):
        return "must be clips (every non-overlapping clip) or KxN: K temporal clips (1-100) x N crops (1-10), e.g. 10x3"
    return None


def _multiple_of_8(v: int | None) -> str | None:
    if v is None:
        return None
    if v < 16 or v % 8:
        return "must be a multiple of 8 and at least 16 (the trunk's stride is 8)"
    return None


def _device(v: str) -> str | None:
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else "must be auto, cpu, cuda or cuda:N"


def _betas(v: tuple[float, float]) -> str | None:
    return None if all(0 <= b < 1 for b in v) else "each beta must be in [0, 1)"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "data.dataset": one_of(DATASETS),
    "data.split": lambda v: None if v in (1, 2, 3) else "must be 1, 2 or 3",
    "data.fps": lambda v: None if v == SOURCE_FPS or (not isinstance(v, str) and v > 0) else "must be > 0 or source",
    "data.flip": one_of(FLIPS),
    "data.cache_format": one_of(CACHE_FORMATS),
    "data.cache_quality": lambda v: None if 1 <= v <= 100 else "must be in 1..100",
    "data.clip_frames": at_least(1),
    "data.crop": _multiple_of_8,
    "data.short_side": at_least(8),
    "data.workers": at_least(0),
    "data.val_fraction": lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
    "data.selection": one_of(("val", "test")),
    "data.val_carving": one_of(VAL_CARVINGS),
    "model.preset": one_of(list(PRESETS)),
    "track.frame_gap": at_least(1),
    "track.past_frames": at_least(1),
    "track.patch": _multiple_of_8,
    "track.temperature": positive,
    "track.warmup_epochs": at_least(0),
    "track.localizer": one_of(("conv", "softargmax")),
    "track.target_patch": one_of(("encode", "crop")),
    "track.patch_select": one_of(("uniform", "motion")),
    "track.cycle_loss": one_of(("grid", "walk")),
    "track.projection": one_of(("relu", "linear")),
    "loss.sim_weight": non_negative,
    "loss.w_track": non_negative,
    "loss.w_dir": non_negative,
    "loss.track_lambda": non_negative,
    "optim.lr": positive,
    "optim.betas": _betas,
    "optim.weight_decay": non_negative,
    "optim.batch_size": at_least(1),
    "optim.epochs": at_least(1),
    "optim.plateau_patience": at_least(0),
    "optim.grad_clip": non_negative,
    "eval.every": lambda v: None if v == EVAL_RUNGS else at_least(1)(v),
    "eval.at": lambda v: None if all(e >= 1 for e in v) else "epochs count from 1",
    "eval.batch_size": at_least(1),
    "eval.views": lambda v: view_problem(v),
    "eval.val_views": lambda v: view_problem(v),
    "seed": at_least(0),
    "device": _device,
    "threads": at_least(1),
}


def check_cross_fields(cfg: Any, source: str | Path) -> None:
    """The checks that read several keys of a TrialConfig at once (after each key's own)."""
    if cfg.eval.at is not None and cfg.eval.every != EVAL_RUNGS:
        raise InvalidInput(source, "eval.at", "goes with eval.every: rungs (a search fills it with its "
                           f"scheduler's milestones); eval.every is {cfg.eval.every}", list(cfg.eval.at))
    if "cls" not in cfg.model.branches:
        raise InvalidInput(source, "model.branches", "must include cls (classification is always on)",
                           list(cfg.model.branches))
    if cfg.has("track"):
        k, f, s = cfg.track.past_frames, cfg.track.frame_gap, cfg.data.clip_frames
        if k * f >= s:
            raise InvalidInput(
                source, "track.past_frames",
                f"track.past_frames * track.frame_gap must be < data.clip_frames ({k}*{f} >= {s})", k,
            )
    if cfg.selection == "val" and cfg.val_fraction == 0:
        raise InvalidInput(source, "data.selection", "val needs data.val_fraction > 0 (the thesis's "
                           "protocol is data.selection: test with data.val_fraction: 0)", "val")
    if cfg.has("dir") and cfg.data.clip_frames < 2:
        raise InvalidInput(source, "data.clip_frames", "the dir branch needs at least 2 frames",
                           cfg.data.clip_frames)
    if cfg.has("track") and cfg.patch >= cfg.crop:
        raise InvalidInput(source, "track.patch", f"must be smaller than data.crop ({cfg.crop})",
                           cfg.patch)
    if cfg.short_side < cfg.crop:
        raise InvalidInput(source, "data.short_side", f"must be >= data.crop ({cfg.crop})",
                           cfg.short_side)
