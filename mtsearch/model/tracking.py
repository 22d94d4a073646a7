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

How it runs (issue 8): the 3k+k(k+1)/2 tracker steps of a clip are independent chains of steps
(the backward chain, k long cycles, k skip cycles), so every step at the same depth runs as one
batched call: 2k calls per batch instead of one per step, with no host sync anywhere. The
ground-truth patch (`patch_theta`) is drawn on the host beforehand (`random_patch_theta`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtsearch.model.trunk import accept_legacy_weights

MAX_ANGLE = math.pi / 4  # ground-truth patch rotation is uniform in ±45°
GRID_POINTS = 20  # the theta loss compares transformed points of a 20x20 grid over [-1, 1]^2
LOCALIZER_CHANNELS = (128, 64)  # TimeCycle's afterconv3_trans / afterconv4_trans


def localizer_kernel(patch_cells: int) -> int:
    """Kernel of both localizer convs: TimeCycle's 4 for patch features of 10x10 or more.

    Smaller presets have smaller patch features (tiny: 32 px -> 4x4 cells), where two 4x4 convs
    would not fit; the kernel shrinks with the patch (0.4 * cells, 6 -> 2, 4 -> 2, 2 -> 1) so the
    localizer keeps a spatial map of at least 2x2 cells before the linear layer.
    """
    return max(1, min(4, round(0.4 * patch_cells)))


def rotation_translation(params: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, 3) = (tx, ty, angle) -> (N, 2, 3) affine matrices: rotation, fixed scale, translation."""
    tx, ty, angle = params.unbind(1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    row0 = torch.stack([cos, -sin, tx], dim=1)
    row1 = torch.stack([sin, cos, ty], dim=1)
    return torch.stack([row0, row1], dim=1)


def random_patch_theta(
    batch: int, scale: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, 2, 3) ground-truth crops: angle uniform in ±45°, a translation that keeps the rotated
    patch inside the frame (normalised coordinates, as F.affine_grid uses them).

    Computed where the generator lives (the host, in training), then copied to the device once.
    """
    device = generator.device if generator is not None else None
    uniform = torch.rand(batch, 3, generator=generator, device=device) * 2 - 1  # (B, 3)
    angle = uniform[:, 2] * MAX_ANGLE
    half_extent = scale * (angle.cos().abs() + angle.sin().abs())  # of the rotated patch's box
    reach = (1 - half_extent).clamp(min=0)
    params = torch.stack([uniform[:, 0] * reach, uniform[:, 1] * reach, angle], dim=1)
    return rotation_translation(params, scale)


def grid_points(device: torch.device | None = None) -> torch.Tensor:
    """(400, 3) homogeneous points of a 20x20 grid over [-1, 1]^2."""
    axis = torch.linspace(-1, 1, GRID_POINTS, device=device)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    xs, ys = xs.flatten(), ys.flatten()
    return torch.stack([xs, ys, torch.ones_like(xs)], dim=1)


def grid_loss(
    theta: torch.Tensor, theta_gt: torch.Tensor, points: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean squared distance of a 20x20 grid of points mapped by both affines -> (N,).

    TimeCycle's TransformedGridLoss: compares transforms, not pixels, so it is scale-free and cheap.
    `points` (from `grid_points`) saves rebuilding the grid on every call.
    """
    if points is None:
        points = grid_points(theta.device)
    diff = points.to(theta.dtype) @ (theta - theta_gt).transpose(1, 2)  # (N, 400, 2)
    return diff.pow(2).sum(-1).mean(-1)


def negative_cosine(a_norm: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    """l_sim per sample -> (N,): the thesis's negative Frobenius inner product of two patch features.

    Both (N, D, p, p) maps are L2-normalised per position (over channels) and the inner product is
    divided by the p*p positions, so l_sim is minus the mean cosine similarity, in [-1, 1]. Why this
    normalisation: the raw product of unnormalised ReLU features is unbounded below (growing the
    features lowers it without tracking anything); per-position unit vectors are the very features
    the affinities compare; and the mean makes the term's scale independent of track_dim and of the
    patch size, so lambda and w_track mean the same in every preset.
    """
    return -(a_norm * b_norm).sum(1).flatten(1).mean(1)


class Localizer(nn.Module):
    """Affinity map (N, h*w, p, p) -> (N, 3) = (tx, ty, angle).

    conv(kxk, no bias) + LeakyReLU(0.1), twice, then one linear layer initialised near zero
    (N(0, 0.01), bias 0) so the first predictions are the centred, unrotated patch.
    """

    def __init__(self, frame_positions: int, patch_cells: int):
        super().__init__()
        kernel = localizer_kernel(patch_cells)
        out_cells = patch_cells - 2 * (kernel - 1)
        c1, c2 = LOCALIZER_CHANNELS
        self.kernel = kernel
        self.conv1 = nn.Conv2d(frame_positions, c1, kernel_size=kernel, bias=False)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=kernel, bias=False)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.fc = nn.Linear(c2 * out_cells * out_cells, 3)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(affinity))  # (N, 128, p-k+1, p-k+1): thesis 128x7x7
        x = self.act(self.conv2(x))  # (N, 64, p-2k+2, p-2k+2): thesis 64x4x4
        # flatten in (C, H, W) order whatever the memory layout, as the fc weights expect
        return self.fc(x.flatten(1))  # (N, 3)


@dataclass
class _Chain:
    """One cycle's walk through the tracked frames: `path` is what is left to visit."""

    kind: str  # back | long | skip
    cycle: int  # i: the cycle reaches frame t - i*f
    path: list[int]  # tracked-frame indices still to visit (0 = target, i = t - i*f)
    query: torch.Tensor  # (B, D, p, p) L2-normalised patch feature it starts the next step from

    @property
    def needs_crop(self) -> bool:
        """Its next step feeds another step (or l_sim), not only a theta loss."""
        return self.kind == "back" or len(self.path) > 1


class TrackingBranch(nn.Module):
    """Projection + localizer; the trunk that re-encodes the patch is shared and passed in.

    Geometry comes from the config: crop H = W (frame cells h = crop/8), patch P (cells p = P/8),
    k past frames at gap f; the tracked frames are the last k*f+1 frames of the clip, the target
    being the last one (thesis: frames 0, 4, 8 and target 12 of a 13-frame clip).
    """

    def __init__(
        self,
        trunk_channels: int,
        track_dim: int,
        crop: int,
        patch: int,
        past_frames: int,
        frame_gap: int,
        track_lambda: float,
    ):
        super().__init__()
        self.crop, self.patch = crop, patch
        self.frame_cells, self.patch_cells = crop // 8, patch // 8  # thesis 30, 10
        self.past_frames, self.frame_gap = past_frames, frame_gap  # k, f
        self.track_lambda = track_lambda  # lambda
        self.scale = patch / crop  # thesis 80/240 = 1/3
        self.logit_scale = math.sqrt(track_dim)  # 1 / T with TimeCycle's T = 512 ** -0.5
        self.proj = nn.Sequential(
            nn.Conv2d(trunk_channels, track_dim, kernel_size=1, bias=False), nn.ReLU(inplace=True)
        )
        self.localizer = Localizer(self.frame_cells**2, self.patch_cells)
        # a constant, built once (not saved: checkpoints keep the landed layout)
        self.register_buffer("grid_points", grid_points(), persistent=False)
        accept_legacy_weights(self)  # proj and localizer were 1x1x1 / 1xkxk Conv3d

    def feature_cosine(self, feat: torch.Tensor) -> torch.Tensor:
        """(B,) mean cosine similarity between the projected features at different positions of
        each clip's target frame (issue 13): near 1 the features have collapsed, and an affinity
        over the frame cannot locate anything. A position whose features are all zero counts as
        dissimilar to the others (it cannot be found either way)."""
        g = self.proj(feat[:, :, -1])  # (B, D, h, w): the target frame
        units = F.normalize(g.float(), dim=1).flatten(2)  # (B, D, N)
        n = units.shape[2]
        pairs = units.sum(2).pow(2).sum(1) - units.pow(2).sum((1, 2))  # sum over i != j of u_i . u_j
        return pairs / (n * (n - 1))

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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Locate N patches in N frames -> (theta (N, 2, 3), crops of the first len(frame) rows).

        query_norm (N, D, p, p) and frame_norm (N, D, h, w) are unit vectors per position; frame
        (M <= N, D, h, w) holds the float32 features to crop for the first M rows (None: none).
        """
        n, dim, p, _ = query_norm.shape
        logits = query_norm.flatten(2).transpose(1, 2) @ frame_norm.flatten(2)  # (N, p*p, h*w)
        # softmax over the frame's positions: each patch cell gets a distribution over the frame
        affinity = (logits * self.logit_scale).softmax(dim=2)
        affinity = affinity.transpose(1, 2).unflatten(2, (p, p))  # (N, h*w, p, p), channels-last
        theta = rotation_translation(self.localizer(affinity).float(), self.scale)  # (N, 2, 3)
        if frame is None:
            return theta, None
        rows = frame.shape[0]
        grid = F.affine_grid(theta[:rows].to(frame.dtype), [rows, dim, p, p], align_corners=True)
        crop = F.grid_sample(frame, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return theta, crop

    def forward(
        self,
        feat: torch.Tensor,
        clips: torch.Tensor,
        trunk: nn.Module,
        patch_theta: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """feat (B, C, T, h, w) trunk features of clips (B, 3, T, H, W), patch_theta (B, 2, 3)
        ground-truth crops of the target frame on the clips' device -> (l_track, terms)."""
        batch, _, frames, _, _ = clips.shape
        k, f = self.past_frames, self.frame_gap
        if frames < k * f + 1:
            raise ValueError(f"tracking needs k*f+1 = {k * f + 1} frames, the clip has {frames}")
        target = frames - 1
        # the tracked frames t-k*f, ..., t-f, t as one strided slice (a view: no host index tensor
        # to copy, and one gradient buffer for feat), then in tracking order: target, t-f, t-2f, ...
        tracked = feat[:, :, target - k * f :: f].flip(2)  # (B, C, k+1, h, w)
        channels = tracked.shape[1]
        # ((k+1)*B, C, h, w), frame-major, copied once into channels-last memory
        per_frame = tracked.permute(2, 0, 3, 4, 1).reshape(-1, *feat.shape[3:], channels)
        g = self.proj(per_frame.permute(0, 3, 1, 2))  # ((k+1)*B, D, h, w)
        g_norm = F.normalize(g, dim=1).unflatten(0, (k + 1, batch))  # unit vectors: affinities
        # unnormalised, what gets cropped: float32 at least (grid_sample's precision under autocast)
        g_crop = g.to(torch.promote_types(g.dtype, torch.float32)).unflatten(0, (k + 1, batch))

        # the ground-truth patch of the target frame, re-encoded by the shared trunk
        grid = F.affine_grid(patch_theta, [batch, 3, self.patch, self.patch], align_corners=True)
        patch_px = F.grid_sample(
            clips[:, :, target].float(), grid, mode="bilinear", padding_mode="zeros",
            align_corners=True,
        ).to(clips.dtype)  # (B, 3, P, P)
        q0_norm = F.normalize(self.proj(trunk.frames(patch_px)), dim=1)  # (B, D, p, p)

        # every chain starts from the target patch: the backward chain (target -> t-f -> ...), and
        # the k skip cycles (target -> t-i*f -> target); the backward chain starts long cycle i
        # when it reaches t-i*f (-> t-(i-1)*f -> ... -> target)
        chains = [_Chain("back", 1, [1], q0_norm)]
        chains += [_Chain("skip", i, [i, 0], q0_norm) for i in range(1, k + 1)]
        back_norm: list[torch.Tensor] = []
        thetas: dict[tuple[str, int], torch.Tensor] = {}
        while chains:
            chains.sort(key=lambda c: not c.needs_crop)  # rows that need a crop come first
            cropped = [c.path[0] for c in chains if c.needs_crop]
            theta, crop = self.step(
                torch.cat([c.query for c in chains]),
                torch.cat([g_norm[c.path[0]] for c in chains]),
                torch.cat([g_crop[j] for j in cropped]) if cropped else None,
            )
            crop_norm = F.normalize(crop, dim=1) if crop is not None else None
            next_chains = []
            for row, chain in enumerate(chains):
                rows = slice(row * batch, (row + 1) * batch)
                if not chain.needs_crop:  # the cycle is home: its theta goes to the loss
                    thetas[chain.kind, chain.cycle] = theta[rows]
                    continue
                query = crop_norm[rows]
                if chain.kind == "back":
                    i = chain.cycle
                    back_norm.append(query)
                    if i < k:
                        next_chains.append(_Chain("back", i + 1, [i + 1], query))
                    next_chains.append(_Chain("long", i, list(range(i - 1, -1, -1)), query))
                else:
                    next_chains.append(_Chain(chain.kind, chain.cycle, chain.path[1:], query))
            chains = next_chains

        # all 2k cycles' grid losses in one call: rows (long 1..k, skip 1..k) x batch
        order = [("long", i) for i in range(1, k + 1)] + [("skip", i) for i in range(1, k + 1)]
        theta_end = torch.cat([thetas[key] for key in order])
        cycle = grid_loss(theta_end, patch_theta.repeat(2 * k, 1, 1), self.grid_points)
        cycle = cycle.view(2, k, batch).mean(2)  # (2, k): mean over the batch for each cycle
        sim = negative_cosine(q0_norm.repeat(k, 1, 1, 1), torch.cat(back_norm))
        l_sim = sim.view(k, batch).mean(1).sum()
        l_long, l_skip = cycle[0].sum(), cycle[1].sum()
        loss = l_sim + self.track_lambda * (l_skip + l_long)
        terms = {"sim": l_sim.detach(), "skip": l_skip.detach(), "long": l_long.detach()}
        return loss, terms
