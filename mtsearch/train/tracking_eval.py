"""Does the tracking branch track? The tracking figures, gathered during an evaluation.

- `track_err_px`, `track_gain` (the built-in set only, where ground truth exists: data/truth.py):
  the patch is placed on the main object of each evaluation clip's target frame and walked back
  k steps of f frames by the model's own tracker; at each step the distance between the
  predicted patch centre and the object's true centre, in crop pixels. `track_err_px` is its
  mean over the measured (clip, step) pairs; `track_gain` is the static baseline's mean error
  (the patch does not move) over the model's: above 1 the tracker follows the object.
- `cycle_gain` (every dataset): a random patch per clip (seeded, the same in every evaluation)
  goes round the branch's 2k cycles; the cycles' grid loss of the prediction "the centred,
  unrotated patch" over the model's. Above 1 the cycles come home better than a tracker that
  knows nothing.

Forward only, with the uncompiled trunk for the patch (its batch varies), sums kept on the
device until `result`. On large sets `cycle_gain` uses every n-th clip, at most MAX_CYCLE_CLIPS.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING

import torch

from mtsearch.data.truth import TrackTruth, theta_centre_px, track_errors, track_truth
from mtsearch.model.track_geometry import random_patch_theta

if TYPE_CHECKING:
    from mtsearch.config import TrialConfig
    from mtsearch.data.clips import TestClips
    from mtsearch.model import MultiBranchNet

MAX_CYCLE_CLIPS = 1024  # clips whose cycles an evaluation measures (thesis HMDB test: 1 in 11)
CYCLE_SEED_OFFSET = 13  # the random patches draw from seed + 13 (apart from other streams)


# the ground truth of an evaluation set, derived once: every evaluation of a run reuses it
_TRUTHS: weakref.WeakKeyDictionary[TestClips, dict[tuple, TrackTruth | None]] = weakref.WeakKeyDictionary()


def _truth_of(clips: TestClips, cfg: TrialConfig) -> TrackTruth | None:
    key = (cfg.fps, cfg.short_side, cfg.crop, cfg.patch, cfg.track.past_frames,
           cfg.track.frame_gap)
    known = _TRUTHS.setdefault(clips, {})
    if key not in known:
        known[key] = track_truth(clips, *key)
    return known[key]


class TrackingEval:
    """Accumulates one evaluation's tracking figures; rows are the clip dataset's order."""

    def __init__(self, clips: TestClips, cfg: TrialConfig, model: MultiBranchNet, device: torch.device):
        assert model.tracking is not None
        self.tracking = model.tracking
        trunk = model.trunk
        self.encode = lambda x: type(trunk).frames(trunk, x)  # eager: no recompile per batch size
        count = len(clips)
        stride = max(1, math.ceil(count / MAX_CYCLE_CLIPS))
        self.cycle_rows = torch.arange(count) % stride == 0
        generator = torch.Generator().manual_seed(cfg.seed + CYCLE_SEED_OFFSET)
        self.cycle_theta = random_patch_theta(count, self.tracking.scale, generator)
        self.crop = cfg.crop
        self.truth = _truth_of(clips, cfg)
        self.truth_rows = self.truth.rows if self.truth is not None else None
        self.device = device
        zero = torch.zeros((), device=device, dtype=torch.float64)
        self.cycle_model, self.cycle_centred, self.err_model = zero.clone(), zero.clone(), zero.clone()
        self.err_static, self.pairs = 0.0, 0

    def add(self, feat: torch.Tensor, clips: torch.Tensor, offset: int) -> None:
        """One batch: trunk features `feat` of the normalised `clips`, rows offset.. of the set."""
        rows = slice(offset, offset + clips.shape[0])
        cycle_sel = torch.nonzero(self.cycle_rows[rows]).flatten()
        truth = self.truth
        truth_sel = torch.nonzero(self.truth_rows[rows]).flatten() if truth is not None else cycle_sel[:0]
        if not len(cycle_sel) and not len(truth_sel):
            return
        thetas = [self.cycle_theta[rows][cycle_sel]]
        if truth is not None:
            thetas.append(truth.patch_theta[rows][truth_sel])
        index = torch.cat([cycle_sel, truth_sel]).to(self.device, non_blocking=True)
        theta = torch.cat(thetas).to(self.device, non_blocking=True)
        cycle, centred, back = self.tracking.probe(feat[index], clips[index], self.encode, theta)
        n = len(cycle_sel)
        self.cycle_model += cycle[:n].double().sum()
        self.cycle_centred += centred[:n].double().sum()
        if truth is not None and len(truth_sel):
            k = back.shape[1]
            predicted = theta_centre_px(back[n:].flatten(0, 1), self.crop).view(-1, k, 2)
            model_sum, static_sum, pairs = track_errors(predicted, truth, truth_sel + offset)
            self.err_model += model_sum
            self.err_static += static_sum
            self.pairs += pairs

    def result(self) -> dict[str, float | None]:
        """{track_err_px, track_gain, cycle_gain}; None where nothing was measured."""
        out: dict[str, float | None] = {"track_err_px": None, "track_gain": None, "cycle_gain": None}
        cycle_model, cycle_centred = self.cycle_model.item(), self.cycle_centred.item()
        if cycle_model > 0:
            out["cycle_gain"] = cycle_centred / cycle_model
        if self.pairs:
            err_model = self.err_model.item()
            out["track_err_px"] = err_model / self.pairs
            out["track_gain"] = self.err_static / err_model if err_model > 0 else None
        return out
