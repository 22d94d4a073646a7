"""Where a tracked patch is: trunk-cell coordinates, the patch's affine crop (a rotation and a
translation at the fixed patch scale), its ground-truth draw, and the two localizers that read a
tracker step's affinity back into such an affine.

Coordinates are normalised to [-1, 1] with align_corners=True, as F.affine_grid uses them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_ANGLE = math.pi / 4  # ground-truth patch rotation is uniform in ±45°
LOCALIZER_CHANNELS = (128, 64)  # TimeCycle's afterconv3_trans / afterconv4_trans
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
