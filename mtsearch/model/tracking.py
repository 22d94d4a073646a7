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
no gradient through crop positions, and a cross-entropy cycle loss (`_walk_losses`). `probe` is
what evaluation measures tracking with.

How it runs: the 3k+k(k+1)/2 tracker steps of a clip are independent chains of steps
(the backward chain, k long cycles, k skip cycles), so every step at the same depth runs as one
batched call: 2k calls per batch instead of one per step, with no host sync anywhere. The
ground-truth patch (`patch_theta`) is drawn on the host beforehand (`random_patch_theta`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

MAX_ANGLE = math.pi / 4  # ground-truth patch rotation is uniform in ±45°
GRID_POINTS = 20  # the theta loss compares transformed points of a 20x20 grid over [-1, 1]^2
LOCALIZER_CHANNELS = (128, 64)  # TimeCycle's afterconv3_trans / afterconv4_trans
MOTION_TOP_FRACTION = 0.2  # track.patch_select: motion picks among the top 20% of windows (TimeCycle: 10 of 49)


TRUNK_STRIDE = 8  # one trunk cell is 8x8 pixels


def cell_axis(size: int) -> list[float]:
    """The centres (8j + 3.5 px) of the trunk cells along a side of `size` pixels, in normalised
    coordinates (align_corners=True): where a cell of a frame or a patch sits."""
    return [(TRUNK_STRIDE * j + 3.5) * 2 / (size - 1) - 1 for j in range(size // TRUNK_STRIDE)]


def to_cell_units(coordinate: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised coordinates -> trunk-cell index units (the inverse of `cell_axis`)."""
    return ((coordinate + 1) * (size - 1) / 2 - 3.5) / TRUNK_STRIDE


def cell_grid(size: int) -> torch.Tensor:
    """(cells^2, 2) (x, y) centres of a square's trunk cells, row-major like a flattened map."""
    # the same arithmetic as `cell_axis`, in float32 tensors (what trained models were built with)
    axis = (TRUNK_STRIDE * torch.arange(size // TRUNK_STRIDE) + 3.5) * 2 / (size - 1) - 1
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)


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


class SoftArgmaxLocalizer(nn.Module):
    """Affinity map (N, h*w, p, p) -> (N, 3) = (tx, ty, angle), with no parameters.

    Each patch cell's expected position in the frame under its affinity (a soft argmax). The
    angle is the least-squares (2D Procrustes) rotation from the cells' own positions in the patch
    to those; every cell votes for where the patch centre is (its expected position minus its
    offset in the patch), and the translation is the median vote. A patch on a moving object also holds
    background cells, which vote for "it did not move": the median follows the majority where the
    mean splits the difference (measured on an untrained `tiny` tracker: track_gain 1.8 -> 2.5).
    What it reads is what the affinity says; the thesis's learned localizer (`Localizer`) must
    first learn to read it, which the `tiny` preset's few steps do not teach.
    """

    def __init__(self, crop: int, patch: int):
        super().__init__()
        self.scale = patch / crop
        self.register_buffer("frame_xy", cell_grid(crop), persistent=False)  # (h*w, 2)
        # the patch's cells, centred (the grid is symmetric: its mean is 0)
        self.register_buffer("patch_xy", cell_grid(patch), persistent=False)  # (p*p, 2)
        # a tenth of `dot` for a perfect unrotated match: 0.1 * scale * sum over cells of |u|^2
        axis = cell_axis(patch)
        self.angle_floor = 0.1 * self.scale * 2 * len(axis) * sum(a * a for a in axis)

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        weights = affinity.float().flatten(2)  # (N, h*w, p*p)
        expected = weights.transpose(1, 2) @ self.frame_xy  # (N, p*p, 2)
        spread = expected - expected.mean(1, keepdim=True)
        u = self.patch_xy
        dot = (spread * u).sum((1, 2))
        cross = (u[:, 0] * spread[..., 1] - u[:, 1] * spread[..., 0]).sum(1)
        # atan2(cross, dot) with its second argument kept >= angle_floor: its gradient
        # (1 / (dot^2 + cross^2)) explodes where the affinity is diffuse and every cell expects the
        # same place; there the angle is ~0 instead of noise. Rotations are within +-45 degrees, so
        # a non-negative second argument loses nothing.
        angle = torch.atan2(cross, torch.sqrt(dot * dot + self.angle_floor**2))
        # offsets unrotated: a noisy angle would move every vote (measured: worse on both gains)
        votes = (expected - self.scale * u).sort(dim=1).values  # (N, p*p, 2), per coordinate
        middle = votes.shape[1] // 2
        centre = votes[:, middle] if votes.shape[1] % 2 else (votes[:, middle - 1] + votes[:, middle]) / 2
        return torch.cat([centre, angle[:, None]], 1)


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


@dataclass
class _Walk:
    """What one walk through the cycles produced."""

    q0_norm: torch.Tensor  # (B, D, p, p) the target patch's feature, unit vectors
    back_norm: list[torch.Tensor] = field(default_factory=list)  # per step back: the crop, unit
    back_theta: list[torch.Tensor] = field(default_factory=list)  # per step back: (B, 2, 3)
    home: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # cycle -> last theta
    home_logits: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # its affinity logits


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
        sim_weight: float = 1.0,
        temperature: float | None = None,
        detach_target: bool = False,
        localizer: str = "conv",
        target_patch: str = "encode",
        center_features: bool = False,
        patch_select: str = "uniform",
        cycle_loss: str = "grid",
        crop_grad: bool = True,
        projection: str = "relu",
    ):
        super().__init__()
        self.crop_grad = crop_grad
        self.cycle_loss = cycle_loss
        self.patch_select = patch_select
        self.target_patch = target_patch
        self.center_features = center_features
        self.crop, self.patch = crop, patch
        self.frame_cells, self.patch_cells = crop // 8, patch // 8  # thesis 30, 10
        self.past_frames, self.frame_gap = past_frames, frame_gap  # k, f
        self.track_lambda = track_lambda  # lambda
        self.scale = patch / crop  # thesis 80/240 = 1/3
        self.sim_weight = sim_weight
        # 1 / T, TimeCycle's T = 512 ** -0.5 by default
        self.logit_scale = 1 / temperature if temperature is not None else math.sqrt(track_dim)
        self.detach_target = detach_target
        # TimeCycle's afterconv1 + ReLU; "linear" keeps the signs (names and shapes unchanged)
        self.proj = nn.Sequential(
            nn.Conv2d(trunk_channels, track_dim, kernel_size=1, bias=False),
            nn.ReLU(inplace=True) if projection == "relu" else nn.Identity(),
        )
        self.localizer: nn.Module = (
            SoftArgmaxLocalizer(crop, patch) if localizer == "softargmax"
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
        where = theta[:rows] if self.crop_grad else theta[:rows].detach()
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
        if self.center_features:  # what every position of a frame shares locates nothing
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
    ) -> _Walk:
        """Every tracker step of the k long and k skip cycles from the patches `patch_theta`;
        `encode` is the shared trunk's per-frame pass (`Trunk.frames`)."""
        batch, _, frames, _, _ = clips.shape
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

        if self.target_patch == "crop":  # cropped from the target frame's features, like every later query
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
        if self.detach_target:
            q0_norm = q0_norm.detach()

        # every chain starts from the target patch: the backward chain (target -> t-f -> ...), and
        # the k skip cycles (target -> t-i*f -> target); the backward chain starts long cycle i
        # when it reaches t-i*f (-> t-(i-1)*f -> ... -> target)
        chains = [_Chain("back", 1, [1], q0_norm)]
        chains += [_Chain("skip", i, [i, 0], q0_norm) for i in range(1, k + 1)]
        walk = _Walk(q0_norm)
        while chains:
            chains.sort(key=lambda c: not c.needs_crop)  # rows that need a crop come first
            cropped = [c.path[0] for c in chains if c.needs_crop]
            theta, crop, logits = step(
                torch.cat([c.query for c in chains]),
                torch.cat([g_norm[c.path[0]] for c in chains]),
                torch.cat([g_crop[j] for j in cropped]) if cropped else None,
            )
            crop_norm = F.normalize(crop, dim=1) if crop is not None else None
            next_chains = []
            for row, chain in enumerate(chains):
                rows = slice(row * batch, (row + 1) * batch)
                if not chain.needs_crop:  # the cycle is home: its theta goes to the loss
                    walk.home[chain.kind, chain.cycle] = theta[rows]
                    walk.home_logits[chain.kind, chain.cycle] = logits[rows]
                    continue
                query = crop_norm[rows]
                if chain.kind == "back":
                    i = chain.cycle
                    walk.back_norm.append(query)
                    walk.back_theta.append(theta[rows])
                    if i < k:
                        next_chains.append(_Chain("back", i + 1, [i + 1], query))
                    next_chains.append(_Chain("long", i, list(range(i - 1, -1, -1)), query))
                else:
                    next_chains.append(_Chain(chain.kind, chain.cycle, chain.path[1:], query))
            chains = next_chains
        return walk

    def _cycle_losses(self, walk: _Walk, patch_theta: torch.Tensor) -> torch.Tensor:
        """(2, k, B): the grid losses of the long cycles 1..k, then of the skip cycles 1..k."""
        k, batch = self.past_frames, patch_theta.shape[0]
        order = [("long", i) for i in range(1, k + 1)] + [("skip", i) for i in range(1, k + 1)]
        theta_end = torch.cat([walk.home[key] for key in order])
        cycle = grid_loss(theta_end, patch_theta.repeat(2 * k, 1, 1), self.grid_points)
        return cycle.view(2, k, batch)

    def _walk_losses(self, walk: _Walk, patch_theta: torch.Tensor) -> torch.Tensor:
        """(2, k, B), `track.cycle_loss: walk`: for each cycle's last step (back into the target
        frame), the cross-entropy of its affinity against where each patch cell truly belongs
        (bilinear weights on the frame's cells under theta_gt). It supervises the affinity itself,
        as a contrastive random walk does (Jabri et al. 2020), instead of only the theta read
        from it."""
        k, batch = self.past_frames, patch_theta.shape[0]
        points = patch_theta[:, :, :2] @ self.cell_offsets.T + patch_theta[:, :, 2:]  # (B, 2, p*p)
        cells = to_cell_units(points, self.crop)
        axis = torch.arange(self.frame_cells, device=points.device, dtype=points.dtype)
        tent = (1 - (cells[..., None] - axis).abs()).clamp(min=0)  # (B, 2, p*p, h)
        target = (tent[:, 1, :, :, None] * tent[:, 0, :, None, :]).flatten(2)  # (B, p*p, h*w)
        target = target / target.sum(2, keepdim=True).clamp(min=1e-6)
        order = [("long", i) for i in range(1, k + 1)] + [("skip", i) for i in range(1, k + 1)]
        logits = torch.stack([walk.home_logits[key] for key in order]).float()  # (2k, B, p*p, h*w)
        ce = -(target * logits.log_softmax(dim=3)).sum(3).mean(2)  # (2k, B)
        return ce.view(2, k, batch)

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
        if self.cycle_loss == "walk":
            cycle = self._walk_losses(walk, patch_theta).mean(2)
        else:
            cycle = self._cycle_losses(walk, patch_theta).mean(2)  # (2, k): mean over the batch
        sim = negative_cosine(walk.q0_norm.repeat(k, 1, 1, 1), torch.cat(walk.back_norm))
        l_sim = sim.view(k, batch).mean(1).sum()
        l_long, l_skip = cycle[0].sum(), cycle[1].sum()
        loss = self.sim_weight * l_sim + self.track_lambda * (l_skip + l_long)
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
        cycle = self._cycle_losses(walk, patch_theta).mean((0, 1))
        centred = torch.zeros_like(patch_theta)
        centred[:, 0, 0] = centred[:, 1, 1] = self.scale
        return cycle, grid_loss(centred, patch_theta, self.grid_points), torch.stack(walk.back_theta, 1)
