"""The presets: network size as a few numbers, the branches, and the tracking branch's defaults
per preset.

A preset is a small dataclass of numbers (no registry): `thesis` is the thesis's network, `small`
and `tiny` shrink it with the same geometry so the same code runs on a laptop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

BRANCHES: tuple[str, ...] = ("cls", "track", "dir")

# The tracking branch as the thesis writes it collapses and does not track at the
# `tiny` scale; MEASURED_TRACKING was chosen by measurement there (README, "Does the tracking
# branch track?"). A config that leaves these keys unset gets `tracking_defaults(preset)`: the
# measured values on `tiny`, the thesis's formula (THESIS_TRACKING) on the presets nobody has
# measured yet. A record from before these keys existed ran THESIS_TRACKING (records.py; its
# temperature, None here, is TimeCycle's track_dim ** -0.5: `thesis_temperature`).
# w_track is among them: with this formula, at the thesis's 25 the tracking gradient into the trunk
# is ~100x l_cls's and costs both classification and tracking; at 0.25 it is about as large.
MEASURED_TRACKING: dict[str, Any] = {
    "loss.w_track": 0.25, "loss.sim_weight": 0.0, "track.temperature": 0.02,
    "track.localizer": "softargmax", "track.target_patch": "crop", "track.center_features": True,
    "track.patch_select": "motion", "track.crop_grad": False, "track.projection": "relu",
}
MEASURED_PRESETS: tuple[str, ...] = ("tiny",)
THESIS_TRACKING: dict[str, Any] = {
    "loss.w_track": 25.0, "loss.sim_weight": 1.0, "track.temperature": None,
    "track.localizer": "conv", "track.target_patch": "encode", "track.center_features": False,
    "track.patch_select": "uniform", "track.crop_grad": True, "track.projection": "relu",
}


@dataclass(frozen=True)
class Preset:
    """Network size as a few numbers; every preset keeps the thesis geometry.

    Trunk stride is 8 (conv1 /2, max pool /2, conv3_x /2, conv4_x stride 1) and the tracked patch is
    a third of the crop, so the patch feature is crop/24 cells wide (thesis: 240 -> 30x30, 80 -> 10x10).
    """

    width: int  # conv1 channels; stage widths are width * (1, 2, 4), bottleneck expansion 4
    depths: tuple[int, int, int]  # units in conv2_x, conv3_x, conv4_x
    head_depth: int  # units in each head's conv5_x
    crop: int  # default data.crop
    patch: int  # default track.patch
    track_dim: int  # channels of the tracking projection (TimeCycle: 512)
    lr: float  # default optim.lr: the thesis's 2e-4 for its network; smaller networks learn faster


PRESETS: dict[str, Preset] = {
    "thesis": Preset(
        width=64, depths=(3, 4, 6), head_depth=3, crop=240, patch=80, track_dim=512, lr=2e-4
    ),
    # small's rate sits between the two measured ones (not tuned on its own yet)
    "small": Preset(
        width=32, depths=(2, 2, 3), head_depth=2, crop=144, patch=48, track_dim=128, lr=5e-4
    ),
    # tiny: 1e-3, as the shipped spaces use; 2e-4 leaves it near chance after 6 epochs
    "tiny": Preset(width=8, depths=(1, 1, 1), head_depth=2, crop=96, patch=32, track_dim=32, lr=1e-3),
}


def tracking_defaults(preset: str) -> dict[str, Any]:
    """What the tracking keys are when a config leaves them unset (see MEASURED_TRACKING)."""
    return dict(MEASURED_TRACKING) if preset in MEASURED_PRESETS else thesis_tracking(preset)


def thesis_tracking(preset: str) -> dict[str, Any]:
    """The tracking keys as the thesis's formula sets them for `preset` (dotted names)."""
    return {**THESIS_TRACKING, "track.temperature": thesis_temperature(PRESETS[preset].track_dim)}


def thesis_temperature(track_dim: int) -> float:
    """TimeCycle's affinity temperature, track_dim ** -0.5 (thesis: 512 ** -0.5 = 0.0442)."""
    return track_dim ** -0.5


def normalize_branches(value: Any) -> tuple[str, ...]:
    """`[cls, track]`, `"cls+track"` or `"cls,track"` -> ('cls', 'track') in canonical order."""
    if isinstance(value, str):
        items = [v.strip() for v in re.split(r"[+,\s]+", value) if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("expected a list of branch names")
    for item in items:
        if item not in BRANCHES:
            raise ValueError(f"unknown branch {item!r}; branches are {', '.join(BRANCHES)}")
    if len(set(items)) != len(items):
        raise ValueError("a branch is listed twice")
    return tuple(b for b in BRANCHES if b in items)


def branches_label(branches: Any) -> str:
    """The canonical string form, `cls+track+dir`, of a mask in any spelling (`[cls, track]`,
    `cls+track`): the categorical value in spaces, Parquet columns and tables."""
    if not isinstance(branches, (str, list, tuple)):
        branches = list(branches) if isinstance(branches, Iterable) else branches  # else: ValueError
    return "+".join(normalize_branches(branches))
