"""The multi-branch network: thesis shapes and sizes, heads, direction labels, tracking, masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtsearch.config import TrialConfig
from mtsearch.model import MultiBranchNet, compute_losses, describe
from mtsearch.model.heads import reverse_half
from mtsearch.model.track_cycles import grid_loss
from mtsearch.model.track_geometry import localizer_kernel, random_patch_theta, rotation_translation
from mtsearch.model.tracking import TrackingBranch, TrackingSettings
from mtsearch.presets import thesis_tracking

# ResNet-50 stage sizes (conv + BN parameters); conv5_x is 3x3x3-inflated (3D-ResNet-50)
THESIS_TRUNK_PARAMS = 9_536 + 215_808 + 1_219_584 + 7_098_368
THESIS_CONV5_PARAMS = 29_120_512


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(branches: list[str] | None = None, **overrides: object) -> TrialConfig:
    flat = {
        "model.preset": "tiny",
        "model.branches": branches or ["cls", "track", "dir"],
        **overrides,
    }
    return TrialConfig.from_mapping(flat).resolved()


def thesis_on_meta(branches: list[str] | None = None) -> MultiBranchNet:
    cfg = TrialConfig.from_mapping({"model.branches": branches or ["cls", "track", "dir"]})
    with torch.device("meta"):
        return MultiBranchNet(cfg, num_classes=51)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- thesis geometry ---------------------------------------------------------------------------


def test_thesis_trunk_and_head_shapes_on_meta() -> None:
    model = thesis_on_meta()
    clips = torch.empty(1, 3, 13, 240, 240, device="meta")
    feat = model.trunk(clips)
    assert tuple(feat.shape) == (1, 1024, 13, 30, 30)
    pooled = model.cls_head.pool(feat)
    assert tuple(pooled.shape) == (1, 1024, 7, 15, 15)
    assert tuple(model.cls_head.conv5_x(pooled).shape) == (1, 2048, 4, 8, 8)
    out = model(clips, generator=torch.Generator().manual_seed(0))
    assert tuple(out.logits.shape) == (1, 51)
    assert tuple(out.dir_logits.shape) == (1, 2)
    assert out.loss_track.dim() == 0


def test_thesis_parameter_counts() -> None:
    model = thesis_on_meta()
    assert num_params(model.trunk) == THESIS_TRUNK_PARAMS
    assert num_params(model.cls_head.conv5_x) == THESIS_CONV5_PARAMS
    assert num_params(model.cls_head.fc) == 2048 * 51 + 51
    assert num_params(model.dir_head) == THESIS_CONV5_PARAMS + 2048 * 2 + 2
    tracking = model.tracking
    assert num_params(tracking.proj) == 1024 * 512  # 1x1x1, no bias
    # TimeCycle's localizer: conv 4x4 900->128, conv 4x4 128->64, linear 1024->3
    assert localizer_kernel(10) == 4
    assert num_params(tracking.localizer) == 900 * 128 * 16 + 128 * 64 * 16 + 1024 * 3 + 3
    assert tracking.logit_scale == pytest.approx(512**0.5)
    assert tracking.scale == pytest.approx(1 / 3)


def test_thesis_real_forward_batch_one() -> None:
    """A real CPU forward (no meta) of the whole thesis network, eval mode, batch 1."""
    cfg = TrialConfig()
    torch.manual_seed(0)
    model = MultiBranchNet(cfg, num_classes=51).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 13, 240, 240), generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (1, 51) and torch.isfinite(out.logits).all()
    assert torch.isfinite(out.loss_track)


# ---- heads and direction -------------------------------------------------------------------------


def test_tiny_output_shapes_and_losses() -> None:
    cfg = tiny_config()
    torch.manual_seed(0)
    model = MultiBranchNet(cfg, num_classes=7)
    clips = torch.randn(4, 3, 13, cfg.crop, cfg.crop)
    out = model(clips, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (4, 7)
    assert out.dir_logits.shape == (4, 2)
    assert out.dir_labels.dtype == torch.long and out.dir_labels.shape == (4,)
    assert set(out.track_terms) == {"sim", "skip", "long"}
    labels = torch.tensor([0, 1, 2, 3])
    losses = compute_losses(out, labels, cfg)
    assert list(losses) == ["loss", "loss_cls", "loss_track", "loss_dir"]
    expected = (
        F.cross_entropy(out.logits, labels)
        + cfg.loss.w_track * out.loss_track
        + cfg.loss.w_dir * F.cross_entropy(out.dir_logits, out.dir_labels)
    )
    assert torch.allclose(losses["loss"], expected)
    # l_track = sim_weight * sum_i l_sim + lambda * (l_skip + l_long)
    terms = out.track_terms
    lam, sim_weight = cfg.loss.track_lambda, cfg.tracking["loss.sim_weight"]
    assert out.loss_track.item() == pytest.approx(
        (sim_weight * terms["sim"] + lam * (terms["skip"] + terms["long"])).item(), rel=1e-5
    )
    # the similarity term is a sum over k of mean cosines, so it lies in [-k, k]
    assert -cfg.track.past_frames <= terms["sim"].item() <= cfg.track.past_frames


def test_track_false_skips_tracking() -> None:
    cfg = tiny_config()
    model = MultiBranchNet(cfg, num_classes=5).eval()
    out = model(torch.randn(2, 3, 13, cfg.crop, cfg.crop), track=False)
    assert out.loss_track is None and out.track_terms == {}
    assert "loss_track" not in compute_losses(out, torch.tensor([0, 1]), cfg)


@pytest.mark.parametrize("batch", [1, 4, 5, 8])
def test_direction_labels_balanced_and_features_reversed(batch: int) -> None:
    feat = torch.randn(batch, 6, 13, 3, 3)
    seen_reversed: set[int] = set()
    for seed in range(8):
        mixed, labels = reverse_half(feat, torch.Generator().manual_seed(seed))
        assert labels.shape == (batch,)
        reversed_count = int((labels == 0).sum())
        assert reversed_count in {batch // 2, (batch + 1) // 2}
        for i in range(batch):
            expected = feat[i].flip(1) if labels[i] == 0 else feat[i]
            assert torch.equal(mixed[i], expected)
            if labels[i] == 0:
                seen_reversed.add(i)
        again, labels_again = reverse_half(feat, torch.Generator().manual_seed(seed))
        assert torch.equal(labels, labels_again) and torch.equal(mixed, again)
    assert len(seen_reversed) > min(1, batch - 1)  # which samples are reversed varies with the seed


def test_dir_head_sees_time_reversed_trunk_features() -> None:
    cfg = tiny_config(["cls", "dir"])
    model = MultiBranchNet(cfg, num_classes=3).eval()
    captured: dict[str, torch.Tensor] = {}
    model.trunk.register_forward_hook(lambda m, a, out: captured.__setitem__("trunk", out))
    model.dir_head.register_forward_hook(lambda m, a, out: captured.__setitem__("dir_in", a[0]))
    clips = torch.randn(6, 3, 13, cfg.crop, cfg.crop)
    with torch.no_grad():
        out = model(clips, generator=torch.Generator().manual_seed(3))
    assert int((out.dir_labels == 0).sum()) == 3
    for i, label in enumerate(out.dir_labels.tolist()):
        trunk = captured["trunk"][i]
        assert torch.equal(captured["dir_in"][i], trunk.flip(1) if label == 0 else trunk)
    # reversing trunk features equals reversing the input (no temporal kernels in the trunk)
    forward_feat = captured["trunk"]
    with torch.no_grad():
        assert torch.allclose(model.trunk(clips.flip(2)), forward_feat.flip(2), atol=1e-5)


# ---- tracking geometry and learning -----------------------------------------------------------------


def test_ground_truth_patches_stay_inside_the_frame() -> None:
    theta = random_patch_theta(500, 1 / 3, torch.Generator().manual_seed(0))  # (500, 2, 3)
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    mapped = corners @ theta.transpose(1, 2)  # (500, 4, 2)
    assert mapped.abs().max() <= 1 + 1e-5
    scale = torch.linalg.det(theta[:, :, :2]).sqrt()
    assert torch.allclose(scale, torch.full_like(scale, 1 / 3), atol=1e-5)
    angles = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    assert angles.abs().max() <= torch.pi / 4 + 1e-6 and angles.abs().max() > 0.6


def test_grid_loss_is_zero_only_for_the_same_transform() -> None:
    params = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0]])
    theta = rotation_translation(params, 1 / 3)
    assert torch.allclose(grid_loss(theta, theta), torch.zeros(2))
    shifted = rotation_translation(params + torch.tensor([0.5, 0.0, 0.0]), 1 / 3)
    # every point moves by 0.5 in x
    assert torch.allclose(grid_loss(shifted, theta), torch.full((2,), 0.25))


def translating_clips(
    batch: int, crop: int, frames: int, generator: torch.Generator
) -> torch.Tensor:
    """Smooth random textures sliding 1-3 px per frame in a random direction: (B, 3, T, crop, crop)."""
    margin = 3 * frames
    side = crop + 2 * margin
    coarse = torch.randn(batch, 3, side // 6, side // 6, generator=generator)
    texture = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    clips = []
    for b in range(batch):
        vx, vy = torch.randint(-3, 4, (2,), generator=generator).tolist()
        frames_b = [
            texture[
                b,
                :,
                margin + t * vy : margin + t * vy + crop,
                margin + t * vx : margin + t * vx + crop,
            ]
            for t in range(-(frames // 2), frames - frames // 2)
        ]
        clips.append(torch.stack(frames_b, dim=1))
    return torch.stack(clips)


@pytest.mark.parametrize("formula", ["thesis", "default"])
def test_tracking_loss_falls_on_a_translating_pattern(formula: str) -> None:
    overrides = thesis_tracking("tiny") if formula == "thesis" else {}
    cfg = tiny_config(["cls", "track"], **overrides)
    torch.manual_seed(0)
    model = MultiBranchNet(cfg, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=cfg.optim.betas)
    data_gen, model_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    history = []
    for _ in range(30):
        clips = translating_clips(4, cfg.crop, cfg.data.clip_frames, data_gen)
        out = model(clips, generator=model_gen)
        out.loss_track.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(out.loss_track.item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    if formula == "thesis":  # l_sim, a cosine, dominates and falls fastest
        assert last < first - 0.2, history
    else:  # the cycle terms alone (sim_weight 0)
        assert last < 0.8 * first, history


# ---- branch masks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "branches", [["cls"], ["cls", "track"], ["cls", "dir"], ["cls", "track", "dir"]]
)
def test_branch_mask_builds_and_trains_only_enabled_branches(branches: list[str]) -> None:
    cfg = tiny_config(branches)
    model = MultiBranchNet(cfg, num_classes=4)
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    expected = (
        {"trunk", "cls_head"}
        | ({"dir_head"} if "dir" in branches else set())
        | ({"tracking"} if "track" in branches else set())
    )
    assert names == expected
    assert (model.dir_head is None) == ("dir" not in branches)
    assert (model.tracking is None) == ("track" not in branches)

    out = model(
        torch.randn(2, 3, 13, cfg.crop, cfg.crop), generator=torch.Generator().manual_seed(0)
    )
    assert (out.dir_logits is None) == ("dir" not in branches)
    assert (out.loss_track is None) == ("track" not in branches)
    losses = compute_losses(out, torch.tensor([0, 3]), cfg)
    keys = {"loss", "loss_cls"} | {f"loss_{b}" for b in branches if b != "cls"}
    assert set(losses) == keys
    losses["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name  # every built parameter is trained


def test_no_gradient_reaches_a_branch_whose_loss_is_off() -> None:
    """Weights of a branch only get gradient from its own loss (track=False at eval)."""
    cfg = tiny_config()
    model = MultiBranchNet(cfg, num_classes=4)
    out = model(torch.randn(2, 3, 13, cfg.crop, cfg.crop), track=False)
    compute_losses(out, torch.tensor([0, 1]), cfg)["loss"].backward()
    assert all(p.grad is None for p in model.tracking.parameters())
    assert all(p.grad is not None for p in model.dir_head.parameters())


def test_disabled_branch_costs_nothing_in_describe() -> None:
    full = describe(TrialConfig(), 51)
    cls_only = describe(TrialConfig.from_mapping({"model.branches": ["cls"]}), 51)
    assert not any(r.name.startswith(("dir", "track")) for r in cls_only)
    assert cls_only[-1].params == THESIS_TRUNK_PARAMS + THESIS_CONV5_PARAMS + 2048 * 51 + 51
    assert full[-1].macs > cls_only[-1].macs


# ---- describe ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_describe_totals_match_the_real_model(preset: str) -> None:
    cfg = TrialConfig.from_mapping({"model.preset": preset})
    rows = describe(cfg, 10)
    model = MultiBranchNet(cfg, num_classes=10)
    assert rows[-1].name == "total"
    assert rows[-1].params == num_params(model) == sum(r.params for r in rows[:-1])
    assert rows[-1].macs == sum(r.macs for r in rows[:-1]) > 0


def test_describe_thesis_table() -> None:
    rows = {r.name: r for r in describe(TrialConfig(), 51)}
    assert rows["conv1"].out_shape == (64, 13, 120, 120)  # Table 3.1
    assert rows["conv1 max pool"].out_shape == (64, 13, 60, 60)
    assert rows["conv2_x"].out_shape == (256, 13, 60, 60)
    assert rows["conv3_x"].out_shape == (512, 13, 30, 30)
    assert rows["conv4_x"].out_shape == (1024, 13, 30, 30)
    assert rows["cls max pool"].out_shape == (1024, 7, 15, 15)
    assert rows["cls conv5_x"].out_shape == (2048, 4, 8, 8)
    assert rows["track patch"].out_shape == (512, 1, 10, 10)
    trunk_macs = sum(
        rows[n].macs for n in ("conv1", "conv1 max pool", "conv2_x", "conv3_x", "conv4_x")
    )
    assert trunk_macs / 1e9 == pytest.approx(109.9, abs=0.1)  # analytic count for 13x240x240
    assert rows["cls conv5_x"].macs / 1e9 == pytest.approx(8.14, abs=0.01)
    assert rows["total"].params == num_params(thesis_on_meta())


def test_one_tracker_step_learns_to_locate_a_patch() -> None:
    """Affinity -> localizer -> theta shares the coordinates of the ground-truth crop.

    Frame and patch features are pixel_unshuffle(8) of the pixels (exact, stride 8, no training
    needed), so this checks the tracker's geometry alone: supervised by theta_gt, one step must
    beat the best constant guess (the centred patch, grid loss ~0.24) by far.
    """
    torch.manual_seed(0)
    crop, patch, batch = 96, 32, 16
    branch = TrackingBranch(TrackingSettings(3 * 64, 32, crop, patch, past_frames=3, frame_gap=4,
                                             track_lambda=0.1))
    optimizer = torch.optim.Adam(branch.parameters(), lr=1e-3)
    data_gen, theta_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    def encode(image: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, D, H/8, W/8)
        return branch.proj(F.pixel_unshuffle(image, 8))

    history = []
    for _ in range(200):
        frame = translating_clips(batch, crop, 1, data_gen)[:, :, 0]  # (B, 3, crop, crop)
        theta_gt = random_patch_theta(batch, patch / crop, theta_gen)
        grid = F.affine_grid(theta_gt, [batch, 3, patch, patch], align_corners=True)
        patch_px = F.grid_sample(frame, grid, align_corners=True)
        frame_feat = encode(frame)
        theta, _, _ = branch.step(
            F.normalize(encode(patch_px), dim=1), F.normalize(frame_feat, dim=1), frame_feat
        )
        loss = grid_loss(theta, theta_gt).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-40:]) / 40 < 0.13, history[-40:]


def test_channels_last_and_bf16_autocast() -> None:
    """The trainer's CUDA path: channels-last weights and inputs, bf16 autocast (run on CPU here)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = MultiBranchNet(cfg, num_classes=3).channels_last()
    assert model.trunk.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.cls_head.conv5_x[0].conv2.weight.is_contiguous(
        memory_format=torch.channels_last_3d
    )
    clips = torch.randn(2, 3, 13, cfg.crop, cfg.crop).contiguous(
        memory_format=torch.channels_last_3d
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(clips, generator=torch.Generator().manual_seed(0))
        losses = compute_losses(out, torch.tensor([0, 2]), cfg)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_tiny_classifier_learns_the_direction_of_motion() -> None:
    """Left- vs right-moving textures differ only in the order of frames; the trunk has no
    temporal kernels, so this checks that the head's 3x3x3 conv5_x sees the order of time."""
    cfg = tiny_config(["cls"])
    torch.manual_seed(0)
    model = MultiBranchNet(cfg, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=cfg.optim.betas)
    gen = torch.Generator().manual_seed(0)
    crop, frames, speed = cfg.crop, cfg.data.clip_frames, 3
    margin = speed * frames
    hits = []
    for _ in range(150):
        side = crop + 2 * margin
        coarse = torch.randn(4, 3, side // 6, side // 6, generator=gen)
        texture = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        labels = torch.randint(0, 2, (4,), generator=gen)  # 1: moving right, 0: moving left
        clips = torch.stack([
            torch.stack([texture[b, :, margin:margin + crop,
                                 margin + t * v:margin + t * v + crop]
                         for t in range(-(frames // 2), frames - frames // 2)], dim=1)
            for b, v in enumerate((speed * (2 * labels - 1)).tolist())
        ])  # (4, 3, T, crop, crop)
        out = model(clips)
        loss = compute_losses(out, labels, cfg)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        hits.append((out.logits.argmax(1) == labels).float().mean().item())
    assert sum(hits[-25:]) / 25 >= 0.8, hits


def test_feature_cosine_measures_how_alike_a_frames_positions_are():
    """issue 13's collapse diagnostic: the mean cosine between the projected features of different
    positions of the target frame, checked against the brute-force pairwise mean."""
    cfg = TrialConfig.from_mapping({"model.preset": "tiny"}).resolved()
    torch.manual_seed(0)
    net = MultiBranchNet(cfg, 6).eval()
    feat = torch.randn(2, net.trunk.out_channels, cfg.data.clip_frames, 12, 12)
    got = net.tracking.feature_cosine(feat)
    units = torch.nn.functional.normalize(net.tracking.proj(feat[:, :, -1]), dim=1).flatten(2)
    for b in range(2):
        cos = units[b].T @ units[b]  # (N, N)
        n = cos.shape[0]
        want = (cos.sum() - cos.diagonal().sum()) / (n * (n - 1))
        assert got[b].item() == pytest.approx(want.item(), abs=1e-5)
    assert -1.0 <= got.min().item() and got.max().item() < 0.99
    same = feat[:, :, :, :1, :1].expand_as(feat).contiguous()  # every position alike: collapsed
    assert net.tracking.feature_cosine(same).min().item() == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        out = net(torch.randn(2, 3, cfg.data.clip_frames, cfg.crop, cfg.crop), track=False,
                  generator=torch.Generator().manual_seed(0))
    assert out.feature_cosine is not None and out.feature_cosine.shape == (2,)
