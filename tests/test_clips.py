"""Train/test clips from the frame cache: shapes, crops, loop padding, determinism, loaders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mtsearch.data.cache import FrameCache
from mtsearch.data.clips import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TestClips,
    TrainClips,
    loop_indices,
    make_loader,
    normalise_batch,
    usable_videos,
)


@dataclass(frozen=True)
class Item:
    """Duck-typed like mtsearch.data.datasets.VideoItem (path, label, name)."""

    path: Path
    label: int
    name: str


@pytest.fixture
def videos(tmp_path: Path, make_video) -> list[Item]:
    lengths = [30, 13, 5, 1, 40]
    return [
        Item(
            make_video(
                tmp_path / f"v{i}.avi", num_frames=n, fps=30, size=(48, 64), pattern="moving"
            ),
            label=i % 3,
            name=f"v{i}.avi",
        )
        for i, n in enumerate(lengths)
    ]


@pytest.fixture
def cache(tmp_path: Path) -> FrameCache:
    return FrameCache(tmp_path / "frames")


def test_loop_indices() -> None:
    assert loop_indices(26, 30, 13).tolist() == [26, 27, 28, 29] * 3 + [26]
    assert loop_indices(0, 1, 4).tolist() == [0, 0, 0, 0]
    assert loop_indices(3, 8, 5).tolist() == [3, 4, 5, 6, 7]


def test_train_clip_shape_dtype_and_normalisation(videos: list[Item], cache: FrameCache) -> None:
    clips = TrainClips(videos, cache, fps=30, short_side=48, clip_frames=13, crop=32, seed=0)
    assert len(clips) == len(videos)
    for index in range(len(videos)):
        clip, label = clips[index]
        assert clip.shape == (13, 32, 32, 3) and clip.dtype == torch.uint8
        assert clip.is_contiguous() and label == videos[index].label
    grey = torch.full((1, 3, 1, 1, 1), 128 / 255)
    expected = (grey - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1, 1)
    out = normalise_batch(torch.full((1, 1, 1, 1, 3), 128, dtype=torch.uint8))
    assert out.shape == (1, 3, 1, 1, 1) and out.dtype == torch.float32
    assert out == pytest.approx(expected, abs=1e-5)


def test_normalise_batch_matches_float64_formula_in_channels_last_3d(
    videos: list[Item], cache: FrameCache
) -> None:
    clips = TrainClips(videos, cache, fps=30, short_side=48, clip_frames=13, crop=32, seed=0)
    batch = torch.stack([clips[index][0] for index in range(len(videos))])  # (5, 13, 32, 32, 3)
    out = normalise_batch(batch)
    assert out.shape == (5, 3, 13, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    expected = ((batch.double() / 255 - mean) / std).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    every_level = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256, 1).expand(1, 1, 1, 256, 3)
    expected = ((every_level.double() / 255 - mean) / std).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(normalise_batch(every_level).double(), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalise_batch(out.permute(0, 2, 3, 4, 1))  # already float: not normalised twice


def find_crop(frames: np.ndarray, clip: np.ndarray) -> list[tuple[int, int, int, bool]]:
    """Every (start, y0, x0, flip) whose crop of frames[start:start+T] equals clip exactly."""
    length, side = clip.shape[0], clip.shape[1]
    found = []
    for flip in (False, True):
        target = clip[0, :, ::-1] if flip else clip[0]
        for start in range(frames.shape[0] - length + 1):
            windows = np.lib.stride_tricks.sliding_window_view(
                frames[start], (side, side), axis=(0, 1)
            )
            error = np.abs(windows.astype(np.int16) - target.transpose(2, 0, 1)).max(axis=(2, 3, 4))
            for y0, x0 in zip(*np.nonzero(error == 0)):
                crop = frames[start : start + length, y0 : y0 + side, x0 : x0 + side]
                crop = crop[:, :, ::-1] if flip else crop
                if np.array_equal(crop, clip):
                    found.append((start, int(y0), int(x0), flip))
    return found


def test_train_clip_is_one_crop_and_flip_of_consecutive_frames(
    videos: list[Item], cache: FrameCache
) -> None:
    """Every frame of a clip shares one crop window and one flip, over s consecutive frames."""
    clips = TrainClips(videos[:1], cache, fps=30, short_side=48, clip_frames=8, crop=32, seed=3)
    frames = np.asarray(cache.get(videos[0].path, 30, 48))  # (30, 48, 64, 3)
    flips = set()
    for epoch in range(6):
        clips.set_epoch(epoch)
        matches = find_crop(frames, clips[0][0].numpy())  # clip: (8, 32, 32, 3)
        assert matches, f"epoch {epoch}: clip is not one crop of consecutive frames"
        flips.add(matches[0][3])
    assert flips == {False, True}  # p = 0.5 over six epochs with this seed


def test_train_clips_are_deterministic_per_seed_and_epoch(
    videos: list[Item], cache: FrameCache
) -> None:
    a, b, c = (TrainClips(videos, cache, 30, 48, 13, 32, seed=seed) for seed in (7, 7, 8))
    torch.testing.assert_close(a[0][0], b[0][0], rtol=0, atol=0)
    assert not torch.equal(a[0][0], c[0][0]) or not torch.equal(a[4][0], c[4][0])
    a.set_epoch(1)
    assert not torch.equal(a[4][0], b[4][0])
    torch.testing.assert_close(a[(0, 4)][0], b[4][0], rtol=0, atol=0)  # (epoch, index) form


def test_single_frame_video_loop_pads(videos: list[Item], cache: FrameCache) -> None:
    one_frame = [videos[3]]
    clip, _ = TrainClips(one_frame, cache, 30, 48, 13, 32, seed=0)[0]
    assert clip.shape == (13, 32, 32, 3)
    assert all(torch.equal(clip[t], clip[0]) for t in range(13))
    test = TestClips(one_frame, cache, 30, 48, 13, 32)
    assert len(test) == 1
    clip, label, video = test[0]
    assert clip.shape == (13, 32, 32, 3) and (label, video) == (one_frame[0].label, 0)


@pytest.mark.parametrize(
    ("frames", "clip_frames", "expected"),
    [(30, 13, 3), (13, 13, 1), (5, 13, 1), (40, 13, 4), (1, 13, 1), (26, 13, 2)],
)
def test_test_clip_count(
    tmp_path: Path, make_video, cache: FrameCache, frames: int, clip_frames: int, expected: int
) -> None:
    item = Item(make_video(tmp_path / "v.avi", num_frames=frames, size=(48, 64)), 0, "v.avi")
    clips = TestClips([item], cache, 30, 48, clip_frames, 32)
    assert len(clips) == expected == -(-frames // clip_frames)
    assert clips.clips == [(0, start, None) for start in range(0, frames, clip_frames)]


def test_test_clips_cover_videos_with_centre_crop_and_padded_tail(
    videos: list[Item], cache: FrameCache
) -> None:
    clips = TestClips(videos, cache, fps=30, short_side=48, clip_frames=13, crop=32)
    assert clips.num_videos == 5 and len(clips) == 3 + 1 + 1 + 1 + 4
    assert [v for _, v, _ in clips.clips] == [0, 13, 26, 0, 0, 0, 0, 13, 26, 39]
    frames = np.asarray(cache.get(videos[0].path, 30, 48))  # (30, 48, 64, 3)
    last, label, video = clips[2]  # frames 26..29 looped
    assert (label, video) == (videos[0].label, 0)
    centre = frames[[26, 27, 28, 29] * 3 + [26], 8:40, 16:48]
    assert last.dtype == torch.uint8 and np.array_equal(last.numpy(), centre)
    assert torch.equal(clips[2][0], clips[2][0])  # no randomness at test time


def test_frames_smaller_than_the_crop_are_scaled_up(videos: list[Item], cache: FrameCache) -> None:
    clip, _ = TrainClips(videos[:1], cache, 30, 24, 4, 32, seed=0)[0]  # frames are 24 x 32
    assert clip.shape == (4, 32, 32, 3) and clip.dtype == torch.uint8 and clip.is_contiguous()
    clip, _, _ = TestClips(videos[:1], cache, 30, 24, 4, 32)[0]
    assert clip.shape == (4, 32, 32, 3) and clip.dtype == torch.uint8 and clip.is_contiguous()
    # Bilinear in float64 to 32 x 43 (short side = crop), centre crop x0 = 6: the uint8 clip is
    # that rounded, give or take one level for float32 arithmetic.
    frames = torch.from_numpy(np.array(cache.get(videos[0].path, 30, 24)[:4]))
    scaled = torch.nn.functional.interpolate(
        frames.permute(0, 3, 1, 2).double(), size=(32, 43), mode="bilinear", align_corners=False
    )
    expected = scaled[:, :, :, 6:38].permute(0, 2, 3, 1)
    assert (clip.double() - expected).abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize("short_side", [48, 24])  # crop of the cached frames / upscaled path
def test_flipped_clip_is_the_unflipped_clip_reversed_along_width(
    videos: list[Item], cache: FrameCache, short_side: int
) -> None:
    reader = TrainClips(videos[:1], cache, 30, short_side, 8, 32, seed=0)._reader
    indices = loop_indices(3, 11, 8)
    for corner in [(0.0, 0.0), (0.3, 0.9), (1.0, 1.0)]:
        plain = reader._clip(0, indices, corner, flip=False)
        flipped = reader._clip(0, indices, corner, flip=True)
        assert torch.equal(flipped, plain.flip(2)) and flipped.is_contiguous()


def test_usable_videos_skips_unreadable_with_named_warning(
    videos: list[Item], cache: FrameCache, tmp_path: Path
) -> None:
    broken = tmp_path / "broken #&()!'.avi"
    broken.write_bytes(b"RIFF" + bytes(100))
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    items = [videos[0], Item(broken, 1, broken.name), videos[1], Item(empty, 2, "empty.avi")]
    warnings: list[str] = []
    usable = usable_videos(items, cache, 30, 48, warnings.append)
    assert usable == [videos[0], videos[1]]
    assert len(warnings) == 2
    assert warnings[0].startswith("skipping broken #&()!'.avi: ")
    assert warnings[1] == "skipping empty.avi: empty file"
    assert cache.stats.decodes == 4
    usable_videos(items, cache, 30, 48, warnings.append)  # second trial: nothing decoded again
    assert cache.stats.decodes == 4 and len(warnings) == 4


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(clip, label) for clip, label in loader]


def test_loader_batches_do_not_depend_on_workers(videos: list[Item], cache: FrameCache) -> None:
    """Persistent workers still see set_epoch: the epoch travels with the sampled indices."""
    results = {}
    for workers in (0, 2):
        clips = TrainClips(videos, cache, 30, 48, 13, 32, seed=5)
        loader = make_loader(
            clips, batch_size=2, shuffle=True, workers=workers, device="cpu", seed=5
        )
        assert not loader.pin_memory and loader.persistent_workers == (workers > 0)
        assert loader.prefetch_factor == (4 if workers > 0 else None)
        per_epoch = []
        for epoch in range(2):
            clips.set_epoch(epoch)
            per_epoch.append(batches(loader))
        results[workers] = per_epoch
    for epoch in range(2):
        assert len(results[0][epoch]) == 2  # 5 clips, batch 2: the lone last clip is dropped
        for (clip0, label0), (clip2, label2) in zip(results[0][epoch], results[2][epoch]):
            assert clip0.shape == (2, 13, 32, 32, 3) and clip0.dtype == torch.uint8
            assert torch.equal(clip0, clip2) and torch.equal(label0, label2)
    assert not torch.equal(results[0][0][0][0], results[0][1][0][0])  # epochs differ


def test_test_loader_keeps_every_clip_in_order(videos: list[Item], cache: FrameCache) -> None:
    clips = TestClips(videos, cache, 30, 48, 13, 32)
    loader = make_loader(clips, batch_size=4, shuffle=False, workers=0, device="cpu", seed=0)
    seen = [int(v) for _, _, video in loader for v in video]
    assert seen == [v for v, *_ in clips.clips]
