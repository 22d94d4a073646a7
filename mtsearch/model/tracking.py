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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
    patch inside the frame (normalised coordinates, as F.affine_grid uses them)."""
    device = generator.device if generator is not None else None
    uniform = torch.rand(batch, 3, generator=generator, device=device).cpu() * 2 - 1  # (B, 3)
    angle = uniform[:, 2] * MAX_ANGLE
    half_extent = scale * (angle.cos().abs() + angle.sin().abs())  # of the rotated patch's box
    reach = (1 - half_extent).clamp(min=0)
    params = torch.stack([uniform[:, 0] * reach, uniform[:, 1] * reach, angle], dim=1)
    return rotation_translation(params, scale)


def grid_loss(theta: torch.Tensor, theta_gt: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared distance of a 20x20 grid of points mapped by both affines -> (N,).

    TimeCycle's TransformedGridLoss: compares transforms, not pixels, so it is scale-free and cheap.
    """
    axis = torch.linspace(-1, 1, GRID_POINTS, device=theta.device, dtype=theta.dtype)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    xs, ys = xs.flatten(), ys.flatten()
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=1)  # (400, 3) homogeneous
    diff = points @ (theta - theta_gt).transpose(1, 2)  # (N, 400, 2)
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
        # Conv3d with 1 x k x k kernels on a singleton time axis computes exactly TimeCycle's 2D
        # convs, and keeps every conv weight 5-D so `model.to(memory_format=channels_last_3d)` works
        self.conv1 = nn.Conv3d(frame_positions, c1, kernel_size=(1, kernel, kernel), bias=False)
        self.conv2 = nn.Conv3d(c1, c2, kernel_size=(1, kernel, kernel), bias=False)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.fc = nn.Linear(c2 * out_cells * out_cells, 3)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(affinity.unsqueeze(2)))  # (N, 128, 1, p-k+1, p-k+1): thesis 128x7x7
        x = self.act(self.conv2(x))  # (N, 64, 1, p-2k+2, p-2k+2): thesis 64x4x4
        return self.fc(x.flatten(1))  # (N, 3)


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
            nn.Conv3d(trunk_channels, track_dim, kernel_size=1, bias=False), nn.ReLU(inplace=True)
        )
        self.localizer = Localizer(self.frame_cells**2, self.patch_cells)

    @property
    def steps_per_clip(self) -> int:
        """Tracker steps per clip: k back, sum_i i for the long cycles' way home, 2k for the skips."""
        k = self.past_frames
        return k + k * (k + 1) // 2 + 2 * k

    def step(
        self, query_norm: torch.Tensor, frame: torch.Tensor, frame_norm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Locate a patch in a frame: -> (theta (N, 2, 3), next patch feature (N, D, p, p))."""
        n, dim, p, _ = query_norm.shape
        logits = frame_norm.flatten(2).transpose(1, 2) @ query_norm.flatten(2)  # (N, h*w, p*p)
        # softmax over the frame's positions: each patch cell gets a distribution over the frame
        affinity = (logits * self.logit_scale).softmax(dim=1).view(n, -1, p, p)  # (N, h*w, p, p)
        theta = rotation_translation(self.localizer(affinity).float(), self.scale)  # (N, 2, 3)
        grid = F.affine_grid(theta, [n, dim, p, p], align_corners=True)  # (N, p, p, 2)
        crop = F.grid_sample(
            frame.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return theta, crop.to(frame.dtype)

    def forward(
        self,
        feat: torch.Tensor,
        clips: torch.Tensor,
        trunk: nn.Module,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """feat (B, C, T, h, w) trunk features of clips (B, 3, T, H, W) -> (l_track, terms)."""
        batch, _, frames, _, _ = clips.shape
        k, f = self.past_frames, self.frame_gap
        if frames < k * f + 1:
            raise ValueError(f"tracking needs k*f+1 = {k * f + 1} frames, the clip has {frames}")
        target = frames - 1
        tracked = [target] + [target - i * f for i in range(1, k + 1)]  # target, t-f, t-2f, ...
        g = self.proj(feat[:, :, tracked])  # (B, D, k+1, h, w): unnormalised, what gets cropped
        g_norm = F.normalize(g, dim=1)  # unit vector per position, for affinities

        def frame(i: int) -> tuple[torch.Tensor, torch.Tensor]:  # 0: target, i >= 1: t - i*f
            return g[:, :, i], g_norm[:, :, i]

        # the ground-truth patch of the target frame, re-encoded by the shared trunk
        theta_gt = random_patch_theta(batch, self.scale, generator).to(clips.device)  # (B, 2, 3)
        grid = F.affine_grid(theta_gt, [batch, 3, self.patch, self.patch], align_corners=True)
        patch_px = F.grid_sample(
            clips[:, :, target].float(),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).to(clips.dtype)  # (B, 3, P, P)
        q0 = self.proj(trunk(patch_px.unsqueeze(2))).squeeze(2)  # (B, D, p, p)
        q0_norm = F.normalize(q0, dim=1)

        # backward chain: target patch -> t-f -> t-2f -> ... -> t-kf
        back_crops = []
        query = q0_norm
        for i in range(1, k + 1):
            _, crop = self.step(query, *frame(i))
            back_crops.append(crop)
            query = F.normalize(crop, dim=1)

        sim, long = [], []
        for i in range(1, k + 1):
            # long cycle i: back i frames (above), forward i-1 frames, then into the target
            query = F.normalize(back_crops[i - 1], dim=1)
            for j in range(i - 1, 0, -1):
                _, crop = self.step(query, *frame(j))
                query = F.normalize(crop, dim=1)
            theta_end, _ = self.step(query, *frame(0))
            long.append(grid_loss(theta_end, theta_gt).mean())
            sim.append(negative_cosine(q0_norm, F.normalize(back_crops[i - 1], dim=1)).mean())

        # skip cycles, all i at once: target -> t-i*f directly -> target
        past_g = g[:, :, 1:].transpose(1, 2).flatten(0, 1)  # (B*k, D, h, w), sample-major
        past_norm = g_norm[:, :, 1:].transpose(1, 2).flatten(0, 1)
        query = q0_norm.repeat_interleave(k, dim=0)  # (B*k, D, p, p)
        _, crop = self.step(query, past_g, past_norm)
        target_g, target_norm = (x.repeat_interleave(k, dim=0) for x in frame(0))
        theta_back, _ = self.step(F.normalize(crop, dim=1), target_g, target_norm)
        skip = grid_loss(theta_back, theta_gt.repeat_interleave(k, dim=0))  # (B*k,)
        skip = skip.view(batch, k).mean(0)  # (k,): mean over the batch for each cycle length

        l_sim, l_long, l_skip = torch.stack(sim).sum(), torch.stack(long).sum(), skip.sum()
        loss = l_sim + self.track_lambda * (l_skip + l_long)
        terms = {"sim": l_sim.detach(), "skip": l_skip.detach(), "long": l_long.detach()}
        return loss, terms
