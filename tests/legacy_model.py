"""A frozen copy of the network as it was at commit 087d8f9 (3D trunk, step-by-step tracking).

The reference for the 2D trunk and the batched tracking branch (issue 8): same parameters (names
and shapes of that layout), same random draws, so outputs, losses and gradients can be compared,
and its state dicts are genuine old-layout checkpoints. Do not edit: it is the old behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtsearch.config import TrialConfig

# ---- mtsearch/model/trunk.py ---------------------------------------------------------

EXPANSION = 4  # bottleneck output channels = 4 * planes (ResNet-50)


class Bottleneck3d(nn.Module):
    """1x1x1 -> t x3x3 (stride) -> 1x1x1, BN + ReLU after each, projection shortcut (type B).

    `temporal_kernel` is 1 in the trunk (1x3x3 middle kernels) and 3 in the heads' conv5_x
    (3x3x3, as in 3D-ResNet-50); `stride` applies to H and W, and to T when the kernel is 3.
    """

    def __init__(self, in_ch: int, planes: int, stride: int = 1, temporal_kernel: int = 1):
        super().__init__()
        out_ch = planes * EXPANSION
        t_stride = stride if temporal_kernel > 1 else 1
        strides = (t_stride, stride, stride)
        self.conv1 = nn.Conv3d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(
            planes,
            planes,
            kernel_size=(temporal_kernel, 3, 3),
            stride=strides,
            padding=(temporal_kernel // 2, 1, 1),
            bias=False,
        )
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, kernel_size=1, stride=strides, bias=False),
                nn.BatchNorm3d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def make_stage(
    in_ch: int, planes: int, depth: int, stride: int, temporal_kernel: int
) -> nn.Sequential:
    """`depth` bottlenecks; only the first one strides and changes the channel count."""
    units = [Bottleneck3d(in_ch, planes, stride, temporal_kernel)]
    units += [
        Bottleneck3d(planes * EXPANSION, planes, 1, temporal_kernel) for _ in range(depth - 1)
    ]
    return nn.Sequential(*units)


class Trunk(nn.Module):
    """conv1 + max pool, conv2_x, conv3_x (spatial stride 2), conv4_x (stride 1).

    (B, 3, T, H, W) -> (B, 16*width, T, H/8, W/8); thesis: (B, 3, 13, 240, 240) -> (B, 1024, 13, 30, 30).
    """

    def __init__(self, width: int, depths: tuple[int, int, int]):
        super().__init__()
        self.width = width
        self.out_channels = width * 4 * EXPANSION  # thesis: 64 * 4 * 4 = 1024
        self.conv1 = nn.Sequential(
            nn.Conv3d(
                3, width, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False
            ),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.conv2_x = make_stage(width, width, depths[0], stride=1, temporal_kernel=1)
        self.conv3_x = make_stage(
            width * EXPANSION, width * 2, depths[1], stride=2, temporal_kernel=1
        )
        self.conv4_x = make_stage(
            width * 2 * EXPANSION, width * 4, depths[2], stride=1, temporal_kernel=1
        )

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.conv1(clips)  # (B, w, T, H/4, W/4)
        x = self.conv2_x(x)  # (B, 4w, T, H/4, W/4)
        x = self.conv3_x(x)  # (B, 8w, T, H/8, W/8)
        return self.conv4_x(x)  # (B, 16w, T, H/8, W/8)


def init_weights(module: nn.Module) -> None:
    """Kaiming fan_out for convs, BN weight 1 / bias 0 (3D-ResNets-PyTorch, TimeCycle)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm3d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---- mtsearch/model/heads.py ---------------------------------------------------------

class Conv5Head(nn.Module):
    """(B, C, T, h, w) trunk features -> (B, num_outputs) logits.

    thesis: 1024x13x30x30 -> max pool (3, stride 2, pad 1) 1024x7x15x15 -> conv5_x (first unit
    stride 2) 2048x4x8x8 -> global average pool 2048 -> fc.
    """

    def __init__(self, in_ch: int, planes: int, depth: int, num_outputs: int):
        super().__init__()
        self.pool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.conv5_x = make_stage(in_ch, planes, depth, stride=2, temporal_kernel=3)
        self.out_channels = planes * EXPANSION
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(self.out_channels, num_outputs)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = self.pool(feat)  # (B, C, ceil(T/2), h/2, w/2): thesis 1024x7x15x15
        x = self.conv5_x(x)  # (B, 2C, ceil(T/4), h/4, w/4): thesis 2048x4x8x8
        x = self.avgpool(x).flatten(1)  # (B, 2C)
        return self.fc(x)  # (B, num_outputs)


def reverse_half(
    feat: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse the time axis of half the batch, chosen at random; labels 1 = forward, 0 = reversed.

    The trunk has no temporal kernels, so reversing its features equals reversing the input clip
    without a second trunk pass. With an odd batch the extra sample's direction is random too.
    Returns (features (B, C, T, h, w), labels (B,) int64 on feat's device).
    """
    batch = feat.shape[0]
    device = generator.device if generator is not None else None  # draw where the generator lives
    order = torch.randperm(batch, generator=generator, device=device).cpu()
    num_reversed = batch // 2
    if batch % 2 and torch.rand((), generator=generator, device=device).item() < 0.5:
        num_reversed += 1
    labels = torch.ones(batch, dtype=torch.long)
    labels[order[:num_reversed]] = 0
    # flip only the chosen samples: cheaper than flipping the whole batch and selecting
    mixed = torch.stack([x.flip(1) if label == 0 else x for x, label in zip(feat, labels.tolist())])
    return mixed, labels.to(feat.device)


# ---- mtsearch/model/tracking.py ------------------------------------------------------

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


# ---- mtsearch/model/multibranch.py ---------------------------------------------------

@dataclass
class BranchOutputs:
    """What one forward pass produced; None for a branch that is off (or track=False)."""

    logits: torch.Tensor  # (B, num_classes)
    dir_logits: torch.Tensor | None = None  # (B, 2)
    dir_labels: torch.Tensor | None = None  # (B,) 1 = forward, 0 = reversed in time
    loss_track: torch.Tensor | None = None  # scalar l_track (lambda already applied inside)
    track_terms: dict[str, torch.Tensor] = field(default_factory=dict)  # sim, skip, long (detached)


class MultiBranchNet(nn.Module):
    """The thesis network at the size of `cfg.preset`, with the branches of `cfg.model.branches`."""

    def __init__(self, cfg: TrialConfig, num_classes: int):
        super().__init__()
        preset = cfg.preset
        self.branches = tuple(cfg.model.branches)
        self.trunk = Trunk(preset.width, preset.depths)
        trunk_ch = self.trunk.out_channels  # thesis 1024
        head_planes = preset.width * 8  # conv5_x: 512 planes -> 2048 channels in the thesis
        self.cls_head = Conv5Head(trunk_ch, head_planes, preset.head_depth, num_classes)
        self.dir_head = (
            Conv5Head(trunk_ch, head_planes, preset.head_depth, 2) if cfg.has("dir") else None
        )
        self.tracking = None
        if cfg.has("track"):
            self.tracking = TrackingBranch(
                trunk_ch,
                preset.track_dim,
                crop=cfg.crop,
                patch=cfg.patch,
                past_frames=cfg.track.past_frames,
                frame_gap=cfg.track.frame_gap,
                track_lambda=cfg.loss.track_lambda,
            )
        init_weights(self)

    def forward(
        self, clips: torch.Tensor, track: bool = True, generator: torch.Generator | None = None
    ) -> BranchOutputs:
        """clips (B, 3, T, H, W), normalised; `track=False` skips the tracking branch (eval).

        `generator` drives every random choice (which clips are reversed, the tracked patch).
        """
        feat = self.trunk(clips)  # (B, 16w, T, H/8, W/8)
        out = BranchOutputs(logits=self.cls_head(feat))
        if self.dir_head is not None:
            dir_feat, out.dir_labels = reverse_half(feat, generator)
            out.dir_logits = self.dir_head(dir_feat)
        if self.tracking is not None and track:
            out.loss_track, out.track_terms = self.tracking(feat, clips, self.trunk, generator)
        return out


def compute_losses(
    out: BranchOutputs, labels: torch.Tensor, cfg: TrialConfig
) -> dict[str, torch.Tensor]:
    """{"loss", "loss_cls"} plus "loss_track" / "loss_dir" for the branches that produced output.

    loss = l_cls + w_track * l_track + w_dir * l_dir (thesis eq. 3.1, w1 = w_track, w2 = w_dir).
    """
    loss_cls = F.cross_entropy(out.logits.float(), labels)
    losses = {"loss_cls": loss_cls}
    total = loss_cls
    if cfg.has("track") and out.loss_track is not None:
        losses["loss_track"] = out.loss_track.float()
        total = total + cfg.loss.w_track * losses["loss_track"]
    if cfg.has("dir") and out.dir_logits is not None and out.dir_labels is not None:
        losses["loss_dir"] = F.cross_entropy(out.dir_logits.float(), out.dir_labels)
        total = total + cfg.loss.w_dir * losses["loss_dir"]
    return {"loss": total, **losses}
