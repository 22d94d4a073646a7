"""The shared trunk: an inflated ResNet-50 cut after conv4_x, stride 8 (thesis Table 3.1).

Every trunk kernel is 1 x k x k (TimeCycle's inflation with time_dim=1), so frames never mix in
the trunk: reversing the input in time reverses the output in time, and a single frame (the
tracked patch) goes through the same weights. conv4_x keeps stride 1 (TimeCycle's res4s1), so a
13x240x240 clip becomes 1024x13x30x30.

Because no kernel spans time, the trunk runs as 2D convolutions on the B*T frames of a batch
(time folded into the batch): the same function as the 1 x k x k 3D convolutions, batch-norm
statistics included (over (B, T, H, W) = over (B*T, H, W)), and the convolutions cuDNN and oneDNN
tune hardest, in channels-last memory on the GPU. Checkpoints written with the 3D layout (5-D
weights of shape (out, in, 1, k, k)) are upgraded by `mtsearch.records` before they load.
"""

from __future__ import annotations

import torch
from torch import nn

EXPANSION = 4  # bottleneck output channels = 4 * planes (ResNet-50)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1, BN + ReLU after each, projection shortcut (type B).

    `temporal_kernel` is 1 in the trunk, where the unit is 2D and runs on frames (1x3x3 in the
    thesis's notation), and 3 in the heads' conv5_x, where it is 3D (3x3x3, as in 3D-ResNet-50)
    and `stride` applies to T as well as H and W.
    """

    def __init__(self, in_ch: int, planes: int, stride: int = 1, temporal_kernel: int = 1):
        super().__init__()
        out_ch = planes * EXPANSION
        if temporal_kernel == 1:
            conv, norm = nn.Conv2d, nn.BatchNorm2d
            kernel, strides, padding = (3, 3), (stride, stride), (1, 1)
        else:
            conv, norm = nn.Conv3d, nn.BatchNorm3d
            kernel = (temporal_kernel, 3, 3)
            strides, padding = (stride, stride, stride), (temporal_kernel // 2, 1, 1)
        self.conv1 = conv(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, kernel_size=kernel, stride=strides, padding=padding, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = conv(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                conv(in_ch, out_ch, kernel_size=1, stride=strides, bias=False), norm(out_ch)
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
    units = [Bottleneck(in_ch, planes, stride, temporal_kernel)]
    units += [Bottleneck(planes * EXPANSION, planes, 1, temporal_kernel) for _ in range(depth - 1)]
    return nn.Sequential(*units)


def fold_time(clips: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), frames sample-major; a view for channels-last-3d input."""
    return clips.transpose(1, 2).flatten(0, 1)


def unfold_time(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W), a view (channels-last frames give channels-last-3d)."""
    return frames.unflatten(0, (batch, -1)).transpose(1, 2)


class Trunk(nn.Module):
    """conv1 + max pool, conv2_x, conv3_x (spatial stride 2), conv4_x (stride 1), all 2D on frames.

    (B, 3, T, H, W) -> (B, 16*width, T, H/8, W/8); thesis: (B, 3, 13, 240, 240) -> (B, 1024, 13, 30, 30).
    `frames` is the same network on (N, 3, H, W) frames, e.g. the tracked patches.
    """

    def __init__(self, width: int, depths: tuple[int, int, int]):
        super().__init__()
        self.width = width
        self.out_channels = width * 4 * EXPANSION  # thesis: 64 * 4 * 4 = 1024
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2_x = make_stage(width, width, depths[0], stride=1, temporal_kernel=1)
        self.conv3_x = make_stage(
            width * EXPANSION, width * 2, depths[1], stride=2, temporal_kernel=1
        )
        self.conv4_x = make_stage(
            width * 2 * EXPANSION, width * 4, depths[2], stride=1, temporal_kernel=1
        )

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (N, w, H/4, W/4)
        x = self.conv2_x(x)  # (N, 4w, H/4, W/4)
        x = self.conv3_x(x)  # (N, 8w, H/8, W/8)
        return self.conv4_x(x)  # (N, 16w, H/8, W/8)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return unfold_time(self.frames(fold_time(clips)), clips.shape[0])


def init_weights(module: nn.Module) -> None:
    """Kaiming fan_out for convs, BN weight 1 / bias 0 (3D-ResNets-PyTorch, TimeCycle)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm3d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Every 4-D weight channels-last, every 5-D one channels-last-3d (cuDNN's fast layouts)."""
    for param in module.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
        elif param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
    return module
