"""The classification and direction heads: max pool, conv5_x (3D-ResNet-50), average pool, fc.

Both heads have the same structure (thesis §3.3, §3.5); the direction head has 2 outputs.
Unlike the trunk, conv5_x has 3x3x3 middle kernels and downsamples T, H and W.
"""

from __future__ import annotations

import torch
from torch import nn

from mtsearch.model.trunk import EXPANSION, make_stage


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


def draw_reversals(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) bool on the generator's device, True = reversed: half the batch, chosen at random.

    With an odd batch the extra sample's direction is random too. The draws (a permutation, then
    one uniform for an odd batch) are those of the landed code, so a seed picks the same clips.
    """
    device = generator.device if generator is not None else None  # draw where the generator lives
    order = torch.randperm(batch, generator=generator, device=device)
    num_reversed = batch // 2
    if batch % 2 and torch.rand((), generator=generator, device=device).item() < 0.5:
        num_reversed += 1
    reverse = torch.zeros(batch, dtype=torch.bool, device=order.device)
    reverse[order[:num_reversed]] = True
    return reverse


def reverse_time(feat: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
    """(B, C, T, h, w) with the time axis of the samples where `reverse` (B,) is True flipped.

    The trunk has no temporal kernels, so reversing its features equals reversing the input clip
    without a second trunk pass. A select on the device, not a Python loop: no host sync.
    """
    return torch.where(reverse.view(-1, 1, 1, 1, 1), feat.flip(2), feat)


def reverse_half(
    feat: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse the time axis of half the batch, chosen at random; labels 1 = forward, 0 = reversed.

    Returns (features (B, C, T, h, w), labels (B,) int64 on feat's device).
    """
    reverse = draw_reversals(feat.shape[0], generator).to(feat.device)
    return reverse_time(feat, reverse), (~reverse).long()
