"""The network stage by stage (thesis Table 3.1): output shape, parameters and MACs per clip.

Counted from the real modules built on the meta device (no memory, no arithmetic), so the table
can never drift from the code: parameters are the modules' own, MACs come from forward hooks on
every Conv3d/Conv2d/Linear (BN, ReLU, pooling and sampling are ignored, as usual), plus the
affinity matrix products of the tracking branch, counted from their shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mtsearch.config import TrialConfig
from mtsearch.model.heads import Conv5Head
from mtsearch.model.multibranch import MultiBranchNet
from mtsearch.model.track_geometry import Localizer
from mtsearch.model.trunk import EXPANSION, fold_time, unfold_time
from mtsearch.presets import branches_label


@dataclass(frozen=True)
class StageInfo:
    """One row of the table; `macs` are multiply-accumulates for one clip (batch 1)."""

    name: str
    layers: str
    out_shape: tuple[int, ...]  # (C, T, H, W), (C, H, W) or (N,)
    params: int
    macs: int


def run_counting(module: nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Run `module` and count the MACs of its convolutions and linear layers."""
    macs = 0

    def hook(layer: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, (nn.Conv3d, nn.Conv2d)):
            macs += out.numel() * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
        elif isinstance(layer, nn.Linear):
            macs += out.numel() * layer.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (nn.Conv3d, nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            out = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return out, macs


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class FrameWise(nn.Module):
    """Runs a 2D module on every frame of a (B, C, T, H, W) input, so its row reads C×T×H×W."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_time(self.module(fold_time(x)), x.shape[0])


def bottleneck_text(stage: nn.Sequential) -> str:
    """`[1×1×1, 64; 1×3×3, 64; 1×1×1, 256] ×3` (+ stride) from the stage's first unit.

    A 2D (frame-wise) unit is written as the 1×k×k kernel it is in the thesis's notation.
    """
    unit = stage[0]
    frame_wise = isinstance(unit.conv2, nn.Conv2d)
    kt, kh, kw = (1, *unit.conv2.kernel_size) if frame_wise else unit.conv2.kernel_size
    planes = unit.conv2.out_channels
    text = f"[1×1×1, {planes}; {kt}×{kh}×{kw}, {planes}; 1×1×1, {planes * EXPANSION}] ×{len(stage)}"
    stride = (1, *unit.conv2.stride) if frame_wise else unit.conv2.stride
    if stride != (1, 1, 1):
        text += f", stride {','.join(map(str, stride))}"
    return text


def describe(cfg: TrialConfig, num_classes: int) -> list[StageInfo]:
    """Rows for the trunk stages, each enabled branch, and a final `total` row."""
    with torch.device("meta"):
        model = MultiBranchNet(cfg, num_classes)
    model.eval()
    rows: list[StageInfo] = []
    feat = _trunk_rows(rows, model.trunk, cfg.data.clip_frames, cfg.crop)  # (1, 16w, T, H/8, W/8)
    _head_rows(rows, "cls", model.cls_head, feat)
    if model.dir_head is not None:
        _head_rows(rows, "dir", model.dir_head, feat)
    if model.tracking is not None:
        _tracking_rows(rows, model.tracking, model.trunk, feat)
    label = branches_label(cfg.model.branches)
    rows.append(StageInfo("total", f"{cfg.model.preset} preset, {label}, {num_classes} classes",
                          (num_classes,), count_params(model), sum(r.macs for r in rows)))
    return rows


def _add(rows: list[StageInfo], name: str, layers: str, module: nn.Module, x: torch.Tensor,
         params: int) -> torch.Tensor:
    """Run one stage on the meta input `x`, record its row, return its output."""
    out, macs = run_counting(module, x)
    rows.append(StageInfo(name, layers, tuple(out.shape[1:]), params, macs))
    return out


def _trunk_rows(rows: list[StageInfo], trunk: nn.Module, frames: int, crop: int) -> torch.Tensor:
    clip = torch.empty(1, 3, frames, crop, crop, device="meta")
    stem, pool = trunk.conv1[:3], trunk.conv1[3]  # conv + BN + ReLU, then the max pool
    layers = f"1×7×7, {stem[0].out_channels}, stride 1,2,2"
    x = _add(rows, "conv1", layers, FrameWise(stem), clip, count_params(stem))
    x = _add(rows, "conv1 max pool", "1×3×3 max pool, stride 1,2,2", FrameWise(pool), x, 0)
    for name in ("conv2_x", "conv3_x", "conv4_x"):
        stage = getattr(trunk, name)
        x = _add(rows, name, bottleneck_text(stage), FrameWise(stage), x, count_params(stage))
    return x


def _head_rows(rows: list[StageInfo], prefix: str, head: Conv5Head, feat: torch.Tensor) -> None:
    h = _add(rows, f"{prefix} max pool", "3×3×3 max pool, stride 2,2,2", head.pool, feat, 0)
    h = _add(rows, f"{prefix} conv5_x", bottleneck_text(head.conv5_x), head.conv5_x, h,
             count_params(head.conv5_x))
    pool_fc = nn.Sequential(head.avgpool, nn.Flatten(1), head.fc)
    _add(rows, f"{prefix} avg pool, fc", f"global avg pool, fc {head.fc.in_features}→{head.fc.out_features}",
         pool_fc, h, count_params(head.fc))


def _tracking_rows(rows: list[StageInfo], tracking: nn.Module, trunk: nn.Module, feat: torch.Tensor) -> None:
    k = tracking.past_frames
    dim = tracking.proj[0].out_channels
    tracked = feat[:, :, : k + 1]  # (1, C, k+1, h, w): only the tracked frames are projected
    _add(rows, "track projection", f"1×1×1, {dim} + ReLU on the k+1 = {k + 1} tracked frames",
         FrameWise(tracking.proj), tracked, count_params(tracking.proj))
    patch = torch.empty(1, 3, 1, tracking.patch, tracking.patch, device="meta")
    encode = nn.Sequential(trunk, FrameWise(tracking.proj))
    _add(rows, "track patch", f"{tracking.patch}×{tracking.patch} crop (±45°) → shared trunk → projection",
         encode, patch, 0)

    cells, frame_positions = tracking.patch_cells, tracking.frame_cells**2
    steps = tracking.steps_per_clip
    affinity = torch.empty(1, frame_positions, cells, cells, device="meta")
    _, localizer_macs = run_counting(tracking.localizer, affinity)
    affinity_macs = frame_positions * cells * cells * dim
    scale = (f"√{dim}" if math.isclose(tracking.logit_scale, math.sqrt(dim))
             else f"{tracking.logit_scale:.3g}")
    softmax = f"affinity {frame_positions}×{cells * cells}, softmax ·{scale}"
    if isinstance(tracking.localizer, Localizer):
        kern = tracking.localizer.kernel
        c1, c2 = tracking.localizer.conv1.out_channels, tracking.localizer.conv2.out_channels
        layers = (f"{steps} steps × ({softmax}; "
                  f"conv {kern}×{kern}, {c1}; conv {kern}×{kern}, {c2}; fc 3; bilinear crop)")
    else:
        layers = f"{steps} steps × ({softmax}; soft argmax, median vote, Procrustes angle; bilinear crop)"
    rows.append(StageInfo("track localizer", layers, (3,), count_params(tracking.localizer),
                          steps * (localizer_macs + affinity_macs)))
