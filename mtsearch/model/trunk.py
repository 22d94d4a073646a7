"""The shared trunk: an inflated ResNet-50 cut after conv4_x, stride 8 (thesis Table 3.1).

Every trunk kernel is 1 x k x k (TimeCycle's inflation with time_dim=1), so frames never mix in
the trunk: reversing the input in time reverses the output in time, and a single frame (the
tracked patch) goes through the same weights. conv4_x keeps stride 1 (TimeCycle's res4s1), so a
13x240x240 clip becomes 1024x13x30x30.
"""

from __future__ import annotations

import torch
from torch import nn

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
