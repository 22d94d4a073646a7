"""The multi-branch network (thesis §3): a shared trunk and up to three branches, and its loss.

    clips (B, 3, T, H, W) -> trunk -> feat (B, 16w, T, H/8, W/8)
        feat -> cls head                                  -> logits (B, num_classes)
        feat, half reversed in time -> dir head           -> dir_logits (B, 2), dir_labels (B,)
        feat + re-encoded target patch -> tracking branch -> l_track (scalar)

l = l_cls + w_track * l_track + w_dir * l_dir (eq. 3.1). A branch switched off in
`model.branches` is never built: no parameters, no compute, no loss term.

A step's random choices (which clips are reversed, the tracked patch) are drawn on the host by
`draw` from a seeded generator, in the landed code's order, and copied to the device once: the
forward pass itself never syncs with the host, so it can be queued ahead and captured in a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtsearch.config import TrialConfig
from mtsearch.model.heads import Conv5Head, draw_reversals, reverse_time
from mtsearch.model.track_geometry import random_patch_theta
from mtsearch.model.tracking import TrackingBranch, TrackingSettings
from mtsearch.model.trunk import Trunk, init_weights, to_channels_last


@dataclass
class StepDraws:
    """One batch's random choices; None for a branch that is off (or not run)."""

    reverse: torch.Tensor | None = None  # (B,) bool, True = the clip is reversed in time
    patch_theta: torch.Tensor | None = None  # (B, 2, 3) float32 ground-truth patch crops
    patch_pick: torch.Tensor | None = None  # (B, 3) uniform [0, 1): track.patch_select: motion

    def clone(self) -> StepDraws:
        """Copies with their own memory (a CUDA graph's static inputs)."""
        return StepDraws(*(None if t is None else t.clone()
                           for t in (self.reverse, self.patch_theta, self.patch_pick)))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StepDraws:
        """A copy on `device`; host tensors bound for CUDA go through pinned memory (no sync)."""
        to_cuda = torch.device(device).type == "cuda"

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if to_cuda and non_blocking and t.device.type == "cpu":
                t = t.pin_memory()
            return t.to(device, non_blocking=non_blocking)

        return StepDraws(move(self.reverse), move(self.patch_theta), move(self.patch_pick))


@dataclass
class BranchOutputs:
    """What one forward pass produced; None for a branch that is off (or track=False)."""

    logits: torch.Tensor  # (B, num_classes)
    dir_logits: torch.Tensor | None = None  # (B, 2)
    dir_labels: torch.Tensor | None = None  # (B,) 1 = forward, 0 = reversed in time
    loss_track: torch.Tensor | None = None  # scalar l_track (lambda already applied inside)
    track_terms: dict[str, torch.Tensor] = field(default_factory=dict)  # sim, skip, long (detached)
    feature_cosine: torch.Tensor | None = None  # (B,) with track=False: the collapse diagnostic
    features: torch.Tensor | None = None  # with track=False: the trunk's, for the tracking probe


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
        # False during track.warmup_epochs: l_track trains the branch only (set by the trainer)
        self.track_trains_trunk = True
        if cfg.has("track"):
            self.tracking = TrackingBranch(TrackingSettings.from_config(cfg, trunk_ch))
        init_weights(self)

    def draw(
        self, batch: int, generator: torch.Generator | None = None, track: bool = True
    ) -> StepDraws:
        """The random choices of one step, on the generator's device (reversals, then patches)."""
        draws = StepDraws()
        if self.dir_head is not None:
            draws.reverse = draw_reversals(batch, generator)
        if self.tracking is not None and track:
            draws.patch_theta = random_patch_theta(batch, self.tracking.scale, generator)
            if self.tracking.settings.patch_select == "motion":  # drawn last: the landed order stays
                device = generator.device if generator is not None else None
                draws.patch_pick = torch.rand(batch, 3, generator=generator, device=device)
        return draws

    def channels_last(self) -> MultiBranchNet:
        """Channels-last weights (2D trunk and tracking, 3D heads): the GPU's fast layouts."""
        return to_channels_last(self)

    def compile_stages(self, tracking: bool = True) -> MultiBranchNet:
        """torch.compile the trunk, the heads and (`tracking`) the tracker's training steps in
        place (static shapes; parameter names kept).

        What it buys is fusion: batch norm, ReLU and the residual add become a few kernels instead
        of one pass over memory each (thesis on an H200: 1.26x the step, 1.27x evaluation), and a
        tracker step's small elementwise kernels a few. Each new input shape (a short last batch,
        evaluation, eval mode) compiles once more, hence the raised recompile limit; a part that
        fails to compile runs eagerly instead.
        """
        import torch._dynamo.config as dynamo_config

        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, limit, max(64, getattr(dynamo_config, limit)))
        dynamo_config.suppress_errors = True
        # an instance attribute shadows the method: forward() and the tracked patch both use it
        self.trunk.frames = torch.compile(self.trunk.frames, dynamic=False)  # type: ignore[method-assign]
        for head in (self.cls_head, self.dir_head):
            if head is not None:
                head.compile(dynamic=False)
        if tracking and self.tracking is not None:
            self.tracking.compile_steps()
        return self

    def forward(
        self,
        clips: torch.Tensor,
        track: bool = True,
        generator: torch.Generator | None = None,
        draws: StepDraws | None = None,
    ) -> BranchOutputs:
        """clips (B, 3, T, H, W), normalised; `track=False` skips the tracking branch (eval).

        `draws` (on the clips' device) are the step's random choices; without them they are
        drawn here from `generator` (a host generator costs one small copy, no sync).
        """
        if draws is None:
            draws = self.draw(clips.shape[0], generator, track).to(clips.device)
        feat = self.trunk(clips)  # (B, 16w, T, H/8, W/8)
        out = BranchOutputs(logits=self.cls_head(feat))
        if self.dir_head is not None:
            assert draws.reverse is not None, "the dir branch needs draws.reverse"
            out.dir_labels = (~draws.reverse).long()  # 1 = forward, 0 = reversed
            out.dir_logits = self.dir_head(reverse_time(feat, draws.reverse))
        if self.tracking is not None and not track:  # evaluation: how alike the positions are
            out.feature_cosine = self.tracking.feature_cosine(feat)
            out.features = feat
        if self.tracking is not None and track:
            assert draws.patch_theta is not None, "the tracking branch needs draws.patch_theta"
            patch_theta = draws.patch_theta
            if self.tracking.settings.patch_select == "motion":
                assert draws.patch_pick is not None, "track.patch_select: motion needs draws.patch_pick"
                patch_theta = self.tracking.moving_patch_theta(clips, patch_theta, draws.patch_pick)
            reach = self.track_trains_trunk
            out.loss_track, out.track_terms = self.tracking(
                feat if reach else feat.detach(), clips, self.trunk, patch_theta, trunk_grad=reach,
            )
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
        total = total + cfg.tracking["loss.w_track"] * losses["loss_track"]
    if cfg.has("dir") and out.dir_logits is not None and out.dir_labels is not None:
        losses["loss_dir"] = F.cross_entropy(out.dir_logits.float(), out.dir_labels)
        total = total + cfg.loss.w_dir * losses["loss_dir"]
    return {"loss": total, **losses}
