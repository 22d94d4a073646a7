"""Issue 13: the tracking metric against the built-in set's ground truth, and its pieces."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtsearch.config import TrialConfig
from mtsearch.data import synthetic, synthetic_video
from mtsearch.data.cache import FrameCache
from mtsearch.data.clips import TestClips
from mtsearch.data.datasets import index_for_config
from mtsearch.data.truth import TrackTruth, theta_centre_px, track_errors, track_truth
from mtsearch.model.track_cycles import walk_losses
from mtsearch.model.track_geometry import SoftArgmaxLocalizer, rotation_translation
from mtsearch.model.tracking import TrackingBranch, TrackingSettings

CROP, PATCH, K, F_GAP = 96, 32, 3, 4


@pytest.fixture(scope="module")
def built_in(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrialConfig, TestClips]:
    """A small built-in set at the `tiny` geometry, read through the real cache and clip reader."""
    root = tmp_path_factory.mktemp("truth") / "set"
    synthetic.write_synthetic(root, classes=6, videos_per_class=3, seed=4, workers=1)
    cfg = TrialConfig.from_mapping({
        "data.root": str(root), "data.cache_dir": str(root.parent / "cache"),
        "model.preset": "tiny", "data.val_fraction": 0.0, "data.selection": "test", "device": "cpu",
    }).resolved()
    index = index_for_config(cfg)
    items = index.train + index.test
    clips = TestClips(items, FrameCache(root.parent / "cache" / "frames"), cfg.data.fps,
                      cfg.short_side, cfg.data.clip_frames, cfg.crop)
    return cfg, clips


def _truth(cfg: TrialConfig, clips: TestClips) -> TrackTruth:
    truth = track_truth(clips, cfg.data.fps, cfg.short_side, cfg.crop, cfg.patch,
                        cfg.track.past_frames, cfg.track.frame_gap)
    assert truth is not None
    return truth


def test_object_pixels_sit_where_the_track_says():
    """In rendered frames, the pixel at a main object's tracked centre has one of its colours."""
    hits = total = 0
    for class_index in range(6):
        for video in range(3):
            frames = synthetic_video.render_video(class_index, video, seed=9)
            for track in synthetic_video.object_tracks(class_index, video, seed=9):
                colours = np.stack(track["look"]["colours"])  # (2, 3)
                for t in range(0, len(frames), 5):
                    x, y = round(track["x"][t]), round(track["y"][t])
                    if track["scale"][t] < 0.5 or not (0 <= x < synthetic_video.SIZE and 0 <= y < synthetic_video.SIZE):
                        continue
                    pixel = frames[t, y, x].astype(np.float32)
                    total += 1
                    hits += np.abs(pixel - colours).max(1).min() <= 25  # noise sigma <= 6
    assert total > 200
    assert hits / total > 0.9  # the rest: a distractor passing in front, texture edges


def test_truth_follows_the_pixels_of_decoded_clips(built_in):
    """A brute-force block matcher on the decoded, resized, cropped clips (no model) follows the
    object: the ground truth is where the pixels are, and it scores track_gain >> 1; the static
    predictor scores exactly 1."""
    cfg, clips = built_in
    truth = _truth(cfg, clips)
    rows = torch.nonzero(truth.rows).flatten()
    assert truth.count >= 20
    half = PATCH // 2
    predicted = torch.zeros(len(rows), K, 2)
    for n, row in enumerate(rows.tolist()):
        clip = clips[row][0].permute(0, 3, 1, 2).float()  # (T, 3, crop, crop)
        cx, cy = (round(v) for v in truth.target_xy[row].tolist())
        template = clip[-1, :, cy - half : cy + half, cx - half : cx + half]
        for j in range(1, K + 1):
            frame = clip[-1 - j * F_GAP][None]
            # sum of squared differences at every placement, via one correlation
            ssd = (F.avg_pool2d(frame.pow(2).sum(1, keepdim=True), PATCH, 1) * PATCH * PATCH
                   - 2 * F.conv2d(frame, template[None]))
            best = int(ssd.flatten().argmin())
            y0, x0 = divmod(best, ssd.shape[-1])
            predicted[n, j - 1] = torch.tensor([x0 + half - 0.5, y0 + half - 0.5])
    model_sum, static_sum, pairs = track_errors(predicted, truth, rows)
    assert pairs == truth.count
    assert static_sum / float(model_sum) > 3
    assert float(model_sum) / pairs < 4  # pixels: the truth is where the pixels are
    static = truth.target_xy[rows][:, None].expand(-1, K, 2)
    model_sum, static_sum, _ = track_errors(static, truth, rows)
    assert static_sum / float(model_sum) == pytest.approx(1.0)


def test_truth_skips_what_cannot_be_followed(built_in):
    cfg, clips = built_in
    truth = _truth(cfg, clips)
    names = [clips.items[video].path.parent.name for video, *_ in clips.clips]
    for row in torch.nonzero(truth.rows).flatten().tolist():
        # the patch lies inside the crop in the target frame
        centre = truth.patch_theta[row, :, 2]
        assert centre.abs().max() + PATCH / CROP <= 1 + 1e-6
        assert theta_centre_px(truth.patch_theta[row : row + 1], CROP)[0].tolist() == pytest.approx(
            truth.target_xy[row].tolist(), abs=1e-4)
        assert ((truth.past_xy[row][truth.valid[row]] >= 0)
                & (truth.past_xy[row][truth.valid[row]] <= CROP - 1)).all()
    # growing objects respawn every 8-12 frames: never followed 2 steps (8 frames) back
    grow_rows = [r for r, name in enumerate(names) if name in ("grow", "shrink")]
    assert grow_rows and not truth.valid[grow_rows, 2:].any()


def test_no_truth_for_other_videos(built_in, tmp_path: Path, make_video):
    cfg, clips = built_in
    (tmp_path / "walk").mkdir()
    make_video(tmp_path / "walk" / "walk_001.avi", num_frames=20)
    fake = TestClips([type(clips.items[0])(tmp_path / "walk" / "walk_001.avi", 0, "walk_001.avi")],
                     FrameCache(tmp_path / "cache"), 30.0, cfg.short_side, 13, cfg.crop)
    assert track_truth(fake, 30.0, cfg.short_side, cfg.crop, cfg.patch, K, F_GAP) is None


def test_collapse_diagnostic_reads_one_on_constant_features_and_low_on_random():
    branch = TrackingBranch(TrackingSettings(16, 16, crop=96, patch=32, past_frames=3, frame_gap=4,
                                             track_lambda=0.1))
    with torch.no_grad():
        branch.proj[0].weight.copy_(torch.eye(16)[:, :, None, None])  # identity projection
    constant = torch.ones(2, 16, 13, 12, 12)
    assert branch.feature_cosine(constant).tolist() == pytest.approx([1.0, 1.0])
    noise = torch.randn(2, 16, 13, 12, 12, generator=torch.Generator().manual_seed(0)).relu()
    assert branch.feature_cosine(noise).max() < 0.6  # non-negative (ReLU) unit vectors: ~0.5


@pytest.mark.parametrize("params", [[0.2, -0.3, 0.0], [0.3, 0.1, 0.5], [-0.4, 0.4, -0.7]])
def test_soft_argmax_localizer_reads_a_sharp_affinity(params):
    """An affinity that puts each patch cell where a known rotation + translation takes it gives
    back that rotation and translation (up to the frame's 8-pixel cells)."""
    localizer = SoftArgmaxLocalizer(CROP, PATCH)
    theta = rotation_translation(torch.tensor([params]), PATCH / CROP)[0]
    cells = localizer.patch_xy @ theta[:, :2].T + theta[:, 2]  # (p*p, 2) in the frame
    distance = (cells[:, None] - localizer.frame_xy[None]).pow(2).sum(-1)
    affinity = torch.softmax(-200 * distance, dim=1).T.reshape(1, -1, 4, 4)
    got = localizer(affinity)[0]
    assert got[:2].tolist() == pytest.approx(params[:2], abs=0.06)
    assert float(got[2]) == pytest.approx(params[2], abs=0.08)
    uniform = torch.full((1, 144, 4, 4), 1 / 144)
    assert localizer(uniform)[0].abs().max() < 1e-5  # no information: the centred patch


def test_walk_targets_put_each_patch_cell_where_theta_takes_it():
    """`track.cycle_loss: walk`: the cross-entropy targets are the frame cells under theta_gt."""
    branch = TrackingBranch(TrackingSettings(16, 16, crop=CROP, patch=PATCH, past_frames=1, frame_gap=4,
                                             track_lambda=0.1, cycle_loss="walk"))
    theta = rotation_translation(torch.tensor([[0.25, -0.5, 0.0]]), PATCH / CROP)
    cells = 12
    # a walk whose last affinity is sharply peaked where the targets are: near-zero loss
    points = theta[:, :, :2] @ branch.cell_offsets.T + theta[:, :, 2:]  # (1, 2, 16)
    col = ((points[0, 0] + 1) * (CROP - 1) / 2 - 3.5) / 8
    row = ((points[0, 1] + 1) * (CROP - 1) / 2 - 3.5) / 8
    right = (row.round() * cells + col.round()).long()
    wrong = (row.round() * cells + (col.round() + 3) % cells).long()  # 3 cells to the side

    def peaked(index: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(1, 16, cells * cells)
        logits[0, torch.arange(16), index] = 8.0
        return logits

    walk = type("W", (), {"home_logits": {("long", 1): peaked(right), ("skip", 1): peaked(wrong)}})
    losses = walk_losses(walk, theta, 1, branch.cell_offsets, CROP)  # (2, 1, 1): long, skip
    assert losses[0, 0, 0] < losses[1, 0, 0] - 3
    walk.home_logits[("skip", 1)] = torch.zeros(1, 16, cells * cells)
    uniform = walk_losses(walk, theta, 1, branch.cell_offsets, CROP)[1, 0, 0]
    assert uniform == pytest.approx(math.log(cells * cells), rel=1e-4)


def test_moving_patches_go_where_the_frame_changes():
    """`track.patch_select: motion`: the patch lands on the only moving thing in the clip."""
    branch = TrackingBranch(TrackingSettings(16, 16, crop=CROP, patch=PATCH, past_frames=3, frame_gap=4,
                                             track_lambda=0.1, patch_select="motion"))
    clips = torch.zeros(3, 3, 13, CROP, CROP)
    for t in range(13):  # a bright square moving right along row 20..30, 2 px per frame
        clips[:, :, t, 20:30, 40 + 2 * t : 50 + 2 * t] = 3.0
    drawn = rotation_translation(torch.tensor([[0.0, 0.0, 0.3]] * 3), PATCH / CROP)
    pick = torch.tensor([[0.0, 0.5, 0.5], [0.99, 0.0, 1.0], [0.5, 0.2, 0.7]])
    theta = branch.moving_patch_theta(clips, drawn, pick)
    centre = theta_centre_px(theta, CROP)
    assert (centre[:, 1] < 45).all() and (centre[:, 0] > 35).all() and (centre[:, 0] < 85).all()
    assert torch.atan2(theta[:, 1, 0], theta[:, 0, 0]) == pytest.approx(torch.full((3,), 0.3), abs=1e-5)
    half = PATCH / CROP * (math.cos(0.3) + math.sin(0.3))  # the rotated patch stays in the frame
    assert (theta[:, :, 2].abs() <= 1 - half + 1e-6).all()
