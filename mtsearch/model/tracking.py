"""The tracking branch: cycle consistency of time (TimeCycle, Wang et al. 2019; thesis §3.4).

A random patch (rotated up to ±45°, a third of the crop) of the target frame is re-encoded by the
shared trunk and tracked backward through k past frames at gap f and forward again. Each step:
affinity between the L2-normalised patch features and every position of a frame (softmax over the
frame's positions, temperature sqrt(track_dim)), a localizer (two convs + one linear) predicting
a rotation + translation at the fixed patch scale, and a bilinear crop of the next patch feature
from the frame's unnormalised projected features.

Loss (thesis eq. 3.3): l_track = sum_i l_sim^i + lambda * l_skip^i + lambda * l_long^i, i = 1..k:
l_sim^i compares the target patch with its crop i steps back (`negative_cosine`), l_skip^i and
l_long^i are grid losses between theta_gt and the theta that brings the target -> t-i*f -> target
skip cycle and the target -> ... -> t-i*f -> ... -> target long cycle home.
Translations are not rescaled by TimeCycle's 227/210 offset factor (that factor only compensates
its hand-built grid); crops use align_corners=True like TimeCycle's PyTorch 0.4 code.

The departures a measurement called for are options (config keys, defaults per
preset in `mtsearch.config.tracking_defaults`): the weight of l_sim, the temperature, a
parameter-free `SoftArgmaxLocalizer`, the target patch cropped from the frame's features instead
of re-encoded, features centred per frame, patches where the frame changes (`moving_patch_theta`),
no gradient through crop positions, and a cross-entropy cycle loss (`walk_losses`). `probe` is
what evaluation measures tracking with.

The geometry of patches and the localizers live in `track_geometry`, the batched walk through
the cycles and its losses in `track_cycles`. The ground-truth patch (`patch_theta`) is drawn on
the host beforehand (`random_patch_theta`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtsearch.config import TrialConfig
from mtsearch.model.track_cycles import (
    Walk,
    cycle_losses,
    grid_loss,
    grid_points,
    negative_cosine,
    walk_cycles,
    walk_losses,
)
from mtsearch.model.track_geometry import (
    Localizer,
    SoftArgmaxLocalizer,
    cell_grid,
    rotation_translation,
)

MOTION_TOP_FRACTION = 0.2  # track.patch_select: motion picks among the top 20% of windows (TimeCycle: 10 of 49)


@dataclass(frozen=True)
class TrackingSettings:
    """Everything a `TrackingBranch` is built from: its geometry and the options of its formula.

    The defaults after `track_lambda` are the thesis's formula; `from_config` fills every field
    from a trial's config (the preset's defaults for the keys it leaves unset).
    """

    trunk_channels: int  # C: channels of the trunk's features (thesis 1024)
    track_dim: int  # D: channels of the projection (TimeCycle 512)
    crop: int  # H = W: the frame's side in pixels (thesis 240)
    patch: int  # P: the patch's side in pixels (thesis 80)
    past_frames: int  # k
    frame_gap: int  # f
    track_lambda: float  # lambda: weight of l_skip and l_long
    sim_weight: float = 1.0  # weight of l_sim
    temperature: float | None = None  # None: TimeCycle's track_dim ** -0.5
    detach_target: bool = False  # no gradient through the target patch's feature
    localizer: str = "conv"  # conv | softargmax
    target_patch: str = "encode"  # encode (re-encoded pixels) | crop (of the frame's features)
    center_features: bool = False  # subtract each frame's mean feature
    patch_select: str = "uniform"  # uniform | motion
    cycle_loss: str = "grid"  # grid | walk
    crop_grad: bool = True  # gradient through where each step crops
    projection: str = "relu"  # relu | linear

    @classmethod
    def from_config(cls, cfg: TrialConfig, trunk_channels: int) -> TrackingSettings:
        """The branch a trial trains; `trunk_channels` is what the trial's trunk puts out."""
        options = cfg.tracking  # the tracking keys, defaults filled in
        return cls(
            trunk_channels=trunk_channels,
            track_dim=cfg.preset.track_dim,
            crop=cfg.crop,
            patch=cfg.patch,
            past_frames=cfg.track.past_frames,
            frame_gap=cfg.track.frame_gap,
            track_lambda=cfg.loss.track_lambda,
            sim_weight=options["loss.sim_weight"],
            temperature=options["track.temperature"],
            detach_target=cfg.track.detach_target,
            localizer=options["track.localizer"],
            target_patch=options["track.target_patch"],
            center_features=options["track.center_features"],
            patch_select=options["track.patch_select"],
            cycle_loss=cfg.track.cycle_loss,
            crop_grad=options["track.crop_grad"],
            projection=options["track.projection"],
        )


class TrackingBranch(nn.Module):
    """Projection + localizer; the trunk that re-encodes the patch is shared and passed in.

    Geometry comes from the settings: crop H = W (frame cells h = crop/8), patch P (cells p = P/8),
    k past frames at gap f; the tracked frames are the last k*f+1 frames of the clip, the target
    being the last one (thesis: frames 0, 4, 8 and target 12 of a 13-frame clip).
    """

    def __init__(self, settings: TrackingSettings):
        super().__init__()
        self.settings = settings
        crop, patch = settings.crop, settings.patch
        self.crop, self.patch = crop, patch
        self.frame_cells, self.patch_cells = crop // 8, patch // 8  # thesis 30, 10
        self.past_frames, self.frame_gap = settings.past_frames, settings.frame_gap  # k, f
        self.scale = patch / crop  # thesis 80/240 = 1/3
        # 1 / T, TimeCycle's T = 512 ** -0.5 by default
        temperature, track_dim = settings.temperature, settings.track_dim
        self.logit_scale = 1 / temperature if temperature is not None else math.sqrt(track_dim)
        # TimeCycle's afterconv1 + ReLU; "linear" keeps the signs (names and shapes unchanged)
        self.proj = nn.Sequential(
            nn.Conv2d(settings.trunk_channels, track_dim, kernel_size=1, bias=False),
            nn.ReLU(inplace=True) if settings.projection == "relu" else nn.Identity(),
        )
        self.localizer: nn.Module = (
            SoftArgmaxLocalizer(crop, patch) if settings.localizer == "softargmax"
            else Localizer(self.frame_cells**2, self.patch_cells)
        )
        # a constant, built once (not saved: checkpoints keep the landed layout)
        self.register_buffer("grid_points", grid_points(), persistent=False)
        # (p*p, 2): the patch's cell centres, normalised patch coordinates
        self.register_buffer("cell_offsets", cell_grid(patch), persistent=False)
        self._compiled: tuple[Callable, Callable] | None = None  # compile_steps(): training walks

    def feature_cosine(self, feat: torch.Tensor) -> torch.Tensor:
        """(B,) mean cosine similarity between the projected features at different positions of
        each clip's target frame: near 1 the features have collapsed, and an affinity
        over the frame cannot locate anything. A position whose features are all zero counts as
        dissimilar to the others (it cannot be found either way)."""
        g = self.proj(feat[:, :, -1])  # (B, D, h, w): the target frame
        units = F.normalize(g.float(), dim=1).flatten(2)  # (B, D, N)
        n = units.shape[2]
        pairs = units.sum(2).pow(2).sum(1) - units.pow(2).sum((1, 2))  # sum over i != j of u_i . u_j
        return pairs / (n * (n - 1))

    def moving_patch_theta(
        self, clips: torch.Tensor, drawn: torch.Tensor, pick: torch.Tensor
    ) -> torch.Tensor:
        """`track.patch_select: motion` (TimeCycle's sampler; the thesis's own suggestion for future
        work): the patch goes where the target frame changed most over the last frame gap.

        Windows of the patch's size at a trunk cell's stride are scored by the mean absolute
        difference between the target frame and the frame f before it; the patch is centred on one
        of the top MOTION_TOP_FRACTION of windows (pick[:, 0]), jittered by up to half a cell
        (pick[:, 1:]), keeping the drawn angle, then pulled back inside the frame if needed.
        clips (B, 3, T, H, W) normalised, drawn (B, 2, 3) the uniform draw, pick (B, 3) in [0, 1).
        """
        target = clips.shape[2] - 1
        change = (clips[:, :, target] - clips[:, :, target - self.frame_gap]).abs().float().mean(1)
        score = F.avg_pool2d(change[:, None], self.patch, stride=8)  # (B, 1, n, n)
        cells = score.shape[-1]
        top = max(1, math.ceil(MOTION_TOP_FRACTION * cells * cells))
        best = score.flatten(1).topk(top, dim=1).indices  # (B, top)
        choice = (pick[:, 0] * top).long().clamp(max=top - 1)
        window = best.gather(1, choice[:, None])[:, 0]
        row, col = window // cells, window % cells
        jitter = (pick[:, 1:] - 0.5) * 8  # +-4 px
        centre = torch.stack([col, row], 1) * 8 + (self.patch - 1) / 2 + jitter  # (B, 2) px
        translation = centre * 2 / (self.crop - 1) - 1
        angle = torch.atan2(drawn[:, 1, 0], drawn[:, 0, 0])
        reach = (1 - self.scale * (angle.cos().abs() + angle.sin().abs())).clamp(min=0)
        translation = torch.maximum(torch.minimum(translation, reach[:, None]), -reach[:, None])
        return rotation_translation(torch.cat([translation, angle[:, None]], 1), self.scale)

    @property
    def steps_per_clip(self) -> int:
        """Tracker steps per clip: k back, sum_i i for the long cycles' way home, 2k for the skips."""
        k = self.past_frames
        return k + k * (k + 1) // 2 + 2 * k

    def step(
        self,
        query_norm: torch.Tensor,
        frame_norm: torch.Tensor,
        frame: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Locate N patches in N frames -> (theta (N, 2, 3), crops of the first len(frame) rows,
        the affinity's logits (N, p*p, h*w)).

        query_norm (N, D, p, p) and frame_norm (N, D, h, w) are unit vectors per position; frame
        (M <= N, D, h, w) holds the float32 features to crop for the first M rows (None: none).
        """
        n, dim, p, _ = query_norm.shape
        logits = query_norm.flatten(2).transpose(1, 2) @ frame_norm.flatten(2)  # (N, p*p, h*w)
        logits = logits * self.logit_scale
        # softmax over the frame's positions: each patch cell gets a distribution over the frame
        affinity = logits.softmax(dim=2)
        affinity = affinity.transpose(1, 2).unflatten(2, (p, p))  # (N, h*w, p, p), channels-last
        theta = rotation_translation(self.localizer(affinity).float(), self.scale)  # (N, 2, 3)
        if frame is None:
            return theta, None, logits
        rows = frame.shape[0]
        # crop_grad off: where a step crops is a constant to the gradient (a chain of sharp
        # soft-argmax steps multiplies it: measured 10^4-10^5 at temperature 0.02)
        where = theta[:rows] if self.settings.crop_grad else theta[:rows].detach()
        grid = F.affine_grid(where.to(frame.dtype), [rows, dim, p, p], align_corners=True)
        crop = F.grid_sample(frame, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return theta, crop, logits

    def _frame_features(
        self, tracked: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """tracked (B, C, k+1, h, w) trunk features in tracking order -> per tracked frame (k+1, B,
        ...): the projected features as unit vectors (what affinities compare), unnormalised in
        float32 at least (what gets cropped: grid_sample's precision under autocast), and each
        frame's mean where `center_features` subtracts it (else None)."""
        batch, channels, frames = tracked.shape[:3]
        # ((k+1)*B, C, h, w), frame-major, copied once into channels-last memory
        per_frame = tracked.permute(2, 0, 3, 4, 1).reshape(-1, *tracked.shape[3:], channels)
        g = self.proj(per_frame.permute(0, 3, 1, 2))  # ((k+1)*B, D, h, w)
        frame_mean = None
        if self.settings.center_features:  # what every position of a frame shares locates nothing
            frame_mean = g.mean((2, 3), keepdim=True)
            g = g - frame_mean
            frame_mean = frame_mean.unflatten(0, (frames, batch))
        g_norm = F.normalize(g, dim=1).unflatten(0, (frames, batch))
        g_crop = g.to(torch.promote_types(g.dtype, torch.float32)).unflatten(0, (frames, batch))
        return g_norm, g_crop, frame_mean

    def compile_steps(self) -> TrackingBranch:
        """torch.compile what a training walk repeats: the frames' projection and each
        batched tracker step, static shapes (one compilation per distinct number of rows: a few
        per preset). On a GPU this fuses the dozens of small elementwise kernels each step is
        made of. Evaluation's probe stays eager: its batches vary in size."""
        self._compiled = (torch.compile(self._frame_features, dynamic=False),
                          torch.compile(self.step, dynamic=False))
        return self

    def _walk(
        self,
        feat: torch.Tensor,
        clips: torch.Tensor,
        encode: Callable[[torch.Tensor], torch.Tensor],
        patch_theta: torch.Tensor,
    ) -> Walk:
        """Every tracker step of the k long and k skip cycles from the patches `patch_theta`;
        `encode` is the shared trunk's per-frame pass (`Trunk.frames`)."""
        frames = clips.shape[2]
        k, f = self.past_frames, self.frame_gap
        if frames < k * f + 1:
            raise ValueError(f"tracking needs k*f+1 = {k * f + 1} frames, the clip has {frames}")
        target = frames - 1
        # the tracked frames t-k*f, ..., t-f, t as one strided slice (a view: no host index tensor
        # to copy, and one gradient buffer for feat), then in tracking order: target, t-f, t-2f, ...
        tracked = feat[:, :, target - k * f :: f].flip(2)  # (B, C, k+1, h, w)
        fast = self._compiled is not None and self.training and torch.is_grad_enabled()
        frame_features, step = self._compiled if fast else (self._frame_features, self.step)
        g_norm, g_crop, frame_mean = frame_features(tracked)
        q0_norm = self._target_patch(clips, encode, patch_theta, g_norm, g_crop, frame_mean)
        return walk_cycles(step, q0_norm, g_norm, g_crop, k)

    def _target_patch(
        self,
        clips: torch.Tensor,
        encode: Callable[[torch.Tensor], torch.Tensor],
        patch_theta: torch.Tensor,
        g_norm: torch.Tensor,
        g_crop: torch.Tensor,
        frame_mean: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, D, p, p) the target patch's feature as unit vectors: where every chain starts."""
        batch, target = clips.shape[0], clips.shape[2] - 1
        if self.settings.target_patch == "crop":  # cropped from the target frame's features, like every later query
            cells = self.patch_cells
            grid = F.affine_grid(patch_theta.to(g_crop.dtype), [batch, g_crop.shape[2], cells, cells],
                                 align_corners=True)
            q0 = F.grid_sample(g_crop[0], grid, mode="bilinear", padding_mode="zeros",
                               align_corners=True)
            q0_norm = F.normalize(q0, dim=1).to(g_norm.dtype)  # (B, D, p, p)
        else:  # the ground-truth patch of the target frame, re-encoded by the shared trunk
            grid = F.affine_grid(patch_theta, [batch, 3, self.patch, self.patch], align_corners=True)
            patch_px = F.grid_sample(
                clips[:, :, target].float(), grid, mode="bilinear", padding_mode="zeros",
                align_corners=True,
            ).to(clips.dtype)  # (B, 3, P, P)
            q0 = self.proj(encode(patch_px))  # (B, D, p, p)
            if frame_mean is not None:  # by its frame's mean, like the frame's own features
                q0 = q0 - frame_mean[0]
            q0_norm = F.normalize(q0, dim=1)
        if self.settings.detach_target:
            q0_norm = q0_norm.detach()
        return q0_norm

    def forward(
        self,
        feat: torch.Tensor,
        clips: torch.Tensor,
        trunk: nn.Module,
        patch_theta: torch.Tensor,
        trunk_grad: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """feat (B, C, T, h, w) trunk features of clips (B, 3, T, H, W), patch_theta (B, 2, 3)
        ground-truth crops of the target frame on the clips' device -> (l_track, terms).
        trunk_grad=False: the patch is re-encoded without a gradient to the trunk (warm-up)."""
        k, batch = self.past_frames, patch_theta.shape[0]
        encode = trunk.frames
        if not trunk_grad:
            def encode(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return trunk.frames(x)
        walk = self._walk(feat, clips, encode, patch_theta)
        if self.settings.cycle_loss == "walk":
            cycle = walk_losses(walk, patch_theta, k, self.cell_offsets, self.crop).mean(2)
        else:
            cycle = cycle_losses(walk, patch_theta, k, self.grid_points).mean(2)  # (2, k): mean over the batch
        sim = negative_cosine(walk.q0_norm.repeat(k, 1, 1, 1), torch.cat(walk.back_norm))
        l_sim = sim.view(k, batch).mean(1).sum()
        l_long, l_skip = cycle[0].sum(), cycle[1].sum()
        loss = self.settings.sim_weight * l_sim + self.settings.track_lambda * (l_skip + l_long)
        terms = {"sim": l_sim.detach(), "skip": l_skip.detach(), "long": l_long.detach()}
        return loss, terms

    @torch.no_grad()
    def probe(
        self,
        feat: torch.Tensor,
        clips: torch.Tensor,
        encode: Callable[[torch.Tensor], torch.Tensor],
        patch_theta: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluation: where the tracker takes the patches `patch_theta` -> (
        cycle error (B,): mean grid loss of the 2k cycles,
        centred error (B,): the same for the prediction "the centred, unrotated patch",
        back_theta (B, k, 2, 3): the patch located j*f frames back, j = 1..k)."""
        walk = self._walk(feat, clips, encode, patch_theta)
        cycle = cycle_losses(walk, patch_theta, self.past_frames, self.grid_points).mean((0, 1))
        centred = torch.zeros_like(patch_theta)
        centred[:, 0, 0] = centred[:, 1, 1] = self.scale
        return cycle, grid_loss(centred, patch_theta, self.grid_points), torch.stack(walk.back_theta, 1)
