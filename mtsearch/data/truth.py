"""Ground truth for the tracking metric: where the built-in set's main object is in
each evaluation clip, in the pixels of the clip's centre crop.

The built-in set's trajectories are a pure function of (seed, class, video) (`object_tracks`),
so every test clip's object position is known in every frame. For each clip the tracking metric
places the branch's patch (unrotated, the preset's size) on the main object in the clip's last
frame (the target) and walks it back k steps of f frames with the model's tracker; at each step
j it compares the predicted patch centre with the object's true centre j*f frames before the
target. The static baseline says the object did not move. A step counts only while the object
can be followed that far: it neither wraps around the frame's edge nor respawns elsewhere in
between, and the clip does not loop-pad across the span; in both frames a patch centred on the
object lies inside the crop (where the branch's patches live) and the object is at least half
its full size (not a growing dot); and the object has moved at least MIN_MOTION_PX (half a trunk
cell) from the target frame, since where it has not, standing still is the right answer and says
nothing about tracking. Of a clip's objects, the first with a step to measure is used.

Coordinates: the renderer puts pixel centres at integers; the cache resizes the frames (pixel
centres map as (u + 0.5) * scale - 0.5) and the clip is the centre crop (`_ClipReader._clip`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mtsearch.data import synthetic, synthetic_video
from mtsearch.data.clips import loop_indices
from mtsearch.data.video import scaled_size

if TYPE_CHECKING:
    from mtsearch.data.clips import TestClips

MIN_SCALE = 0.5  # an object smaller than half its full size (a growing dot) is not tracked
# where an object has moved less than half a trunk cell, "it did not move" is the answer, and
# neither wins nor loses anything by tracking: such steps are not measured
MIN_MOTION_PX = 4.0
_VIDEO_NAME = re.compile(r"^(?P<cls>.+)_(?P<index>\d{3,})\.avi$")


@dataclass(frozen=True)
class TrackTruth:
    """Per evaluation clip (rows in the clip dataset's order) and per step j = 1..k of the
    tracker's backward walk (j*f frames before the target); unused entries hold zeros."""

    valid: torch.Tensor  # (N, k) bool: the object is trackable from the target to step j
    patch_theta: torch.Tensor  # (N, 2, 3) the patch on the object in the target frame
    target_xy: torch.Tensor  # (N, 2) object centre (x, y) in the target frame, crop pixels
    past_xy: torch.Tensor  # (N, k, 2) object centre j*f frames earlier, crop pixels

    @property
    def rows(self) -> torch.Tensor:
        """(N,) bool: clips with at least one step to measure."""
        return self.valid.any(1)

    @property
    def count(self) -> int:
        """(clip, step) pairs measured."""
        return int(self.valid.sum())


def _synthetic_seed(root: Path) -> int | None:
    """The seed of a built-in set written by this generator version, else None."""
    info = root / synthetic.INFO_FILE
    try:
        text = info.read_text(encoding="utf-8")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    if fields.get("generator", "").strip() != f"mtsearch synthetic v{synthetic.VERSION}":
        return None
    if fields.get("size", "").strip() != str(synthetic.SIZE):
        return None
    try:
        return int(fields["seed"])
    except (KeyError, ValueError):
        return None


def _which_video(path: Path) -> tuple[int, int] | None:
    """(class index, video index) of a built-in set's file, else None."""
    match = _VIDEO_NAME.match(path.name)
    if match is None or match["cls"] not in synthetic.CLASS_NAMES or path.parent.name != match["cls"]:
        return None
    return synthetic.CLASS_NAMES.index(match["cls"]), int(match["index"])


def source_frame(index: int, fps: float | None) -> int:
    """The source frame the cache keeps as frame `index` at `fps` (nearest in time, ties to the
    later frame: `video._NearestFrameResampler`)."""
    if fps is None or Fraction(fps).limit_denominator(1001) == synthetic.FPS:
        return index
    ratio = Fraction(synthetic.FPS) / Fraction(fps).limit_denominator(1001)
    return math.floor(index * ratio + Fraction(1, 2))


def crop_mapping(short_side: int | None, crop: int) -> tuple[float, float, float, float] | None:
    """(scale x, scale y, offset x, offset y): crop pixel = (source + 0.5) * scale - 0.5 - offset.

    None when the cached frames are smaller than the crop (clips are then upscaled again)."""
    width, height = scaled_size(synthetic.SIZE, synthetic.SIZE, short_side)
    if min(width, height) < crop:
        return None
    y0 = min(int(0.5 * (height - crop + 1)), height - crop)
    x0 = min(int(0.5 * (width - crop + 1)), width - crop)
    return width / synthetic.SIZE, height / synthetic.SIZE, float(x0), float(y0)


def track_truth(
    clips: TestClips, fps: float | None, short_side: int | None, crop: int, patch: int,
    past_frames: int, frame_gap: int,
) -> TrackTruth | None:
    """The ground truth for every clip of `clips`, tracked back `past_frames` steps of
    `frame_gap` frames from the last frame, or None where the videos are not the built-in set's
    (no ground truth exists)."""
    mapping = crop_mapping(short_side, crop)
    clip_frames = clips._reader.clip_frames
    k, f = past_frames, frame_gap
    if mapping is None or not clips.items or k < 1 or f < 1 or k * f >= clip_frames:
        return None
    seeds = {_synthetic_seed(item.path.parent.parent) for item in clips.items}
    videos = [_which_video(item.path) for item in clips.items]
    if len(seeds) != 1 or None in seeds or None in videos:
        return None
    (seed,) = seeds
    sx, sy, x0, y0 = mapping
    scale = patch / crop
    count = len(clips)
    valid = torch.zeros(count, k, dtype=torch.bool)
    theta = torch.zeros(count, 2, 3)
    target_xy, past_xy = torch.zeros(count, 2), torch.zeros(count, k, 2)
    tracks_of: dict[int, list[dict]] = {}

    def to_crop(x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * sx - 0.5 - x0, (y + 0.5) * sy - 0.5 - y0

    def patch_fits(x: float, y: float) -> bool:
        """A patch centred there lies inside the crop (normalised, align_corners=True)."""
        return bool(max(abs(x * 2 / (crop - 1) - 1), abs(y * 2 / (crop - 1) - 1)) + scale <= 1)

    for row, (video, start, _corner) in enumerate(clips.clips):  # square frames: every crop is centred
        frames = clips._reader.num_frames[video]
        indices = loop_indices(start, min(start + clip_frames, frames), clip_frames)
        # the target and each step's frame, as source frames, while the clip runs straight
        steps = [int(indices[-1 - j * f]) for j in range(k + 1)]
        straight = [steps[0] - steps[j] == j * f for j in range(k + 1)]
        if video not in tracks_of:
            tracks_of[video] = synthetic_video.object_tracks(*videos[video], seed)
        src = [source_frame(i, fps) for i in steps]
        for track in tracks_of[video]:
            if src[0] >= len(track["x"]):
                break
            tx, ty = to_crop(track["x"][src[0]], track["y"][src[0]])
            if not patch_fits(tx, ty) or track["scale"][src[0]] < MIN_SCALE:
                continue  # the patch would leave the crop, or the object is a dot
            ok = torch.zeros(k, dtype=torch.bool)
            for j in range(1, k + 1):
                span = slice(src[j], src[0] + 1)
                xs, ys = track["x"][span], track["y"][span]
                jump = max(np.abs(np.diff(xs)).max(initial=0), np.abs(np.diff(ys)).max(initial=0))
                if (not straight[j] or track["segment"][span].min() != track["segment"][span].max()
                        or (track["torus"] and jump > synthetic.SIZE / 2)):
                    break  # loops, respawns elsewhere or wraps around the edge: not further back
                px, py = to_crop(xs[0], ys[0])
                moved = math.hypot(px - tx, py - ty) >= MIN_MOTION_PX
                ok[j - 1] = moved and patch_fits(px, py) and bool(track["scale"][src[j]] >= MIN_SCALE)
                past_xy[row, j - 1] = torch.tensor([float(px), float(py)])
            if not ok.any():
                continue
            valid[row] = ok
            nx, ny = tx * 2 / (crop - 1) - 1, ty * 2 / (crop - 1) - 1
            theta[row] = torch.tensor([[scale, 0.0, nx], [0.0, scale, ny]])
            target_xy[row] = torch.tensor([tx, ty])
            break
    return TrackTruth(valid, theta, target_xy, past_xy * valid[..., None])


def theta_centre_px(theta: torch.Tensor, crop: int) -> torch.Tensor:
    """(N, 2, 3) patch crops -> (N, 2) their centres (x, y) in crop pixels (align_corners=True)."""
    return (theta[:, :, 2].float() + 1) * (crop - 1) / 2


def track_errors(
    predicted: torch.Tensor, truth: TrackTruth, rows: torch.Tensor
) -> tuple[torch.Tensor, float, int]:
    """Score a tracker's predicted centres (m, k, 2) (crop pixels, on any device) for the clips
    `rows` (m,) of `truth` -> (sum of the model's errors (a tensor on that device), sum of the
    static baseline's errors, measured (clip, step) pairs). track_gain = static sum / model sum.
    """
    valid, past = truth.valid[rows], truth.past_xy[rows]  # (m, k), (m, k, 2)
    error = (predicted.float() - past.to(predicted.device)).norm(dim=2)
    model_sum = (error * valid.to(predicted.device)).double().sum()
    static = (truth.target_xy[rows][:, None] - past).norm(dim=2)
    return model_sum, float((static * valid).sum()), int(valid.sum())
