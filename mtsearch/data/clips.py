"""Clips for training and testing, read from the frame cache, as torch Datasets and a DataLoader.

A clip is uint8 (T, crop, crop, 3), RGB straight from the cache. Normalisation (scale to [0, 1],
then ImageNet mean/std: the trunk is an inflated ImageNet ResNet-50, so its first layer expects
that input) happens on the device in `normalise_batch`: a uint8 clip is a quarter of the bytes to
copy, and the float conversion was most of the per-clip CPU cost in the loader workers.

Frame selection (T = s = clip_frames; n = frames in the video after fps resampling):
- train: one clip per video per epoch, random start in [0, n - s], one random crop and one
  horizontal flip (p = 0.5) shared by all frames of the clip; the draw is a function of
  (seed, epoch, video index) only, so batches do not depend on the worker count. `flip_to`
  (data/flips.py) may give a flipped clip its mirrored class, or keep a class from flipping.
- test (`eval.views: clips`): non-overlapping clips [0, s), [s, 2s), ... covering the whole video,
  centre crop, no flip. `KxN`: K clips with starts spread evenly over [0, n - s] times N crops
  spread evenly along the frame's long side (N = 1: the centre), as SlowFast tests Kinetics.
- padding (Hara et al.'s LoopPadding): a clip that runs past the end repeats its own frames
  cyclically ([26, 27, 28, 29, 26, 27, ...]); a video shorter than a clip is one looped clip,
  down to a single frame repeated s times. Looping keeps every frame real (no black frames) and
  the motion inside each repeat forward.
- a video whose short side is below the crop after resizing (odd aspect ratios) is scaled up
  bilinearly so its short side equals the crop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mtsearch.data.cache import FrameCache, load_entry
from mtsearch.data.frame_formats import StoredFrames
from mtsearch.errors import VideoReadError

if TYPE_CHECKING:
    from mtsearch.data.datasets import VideoItem

# ImageNet statistics (torchvision / the inflated ResNet-50 weights), RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_OPEN_READERS = 4096  # entry headers a process keeps (Kinetics has 240k videos)


class _Item(Protocol):
    """What clips need from a `mtsearch.data.datasets.VideoItem`."""

    path: Path
    label: int
    name: str


def usable_videos(
    items: Sequence[VideoItem],
    cache: FrameCache,
    fps: float | None,
    short_side: int | None,
    warn: Callable[[str], Any],
) -> list[VideoItem]:
    """Fill the cache for `items` and return the readable ones, in order.

    Unreadable videos are dropped with `warn("skipping <name>: <reason>")`. Videos another process
    is decoding right now are left for a second pass, so trials started together split the
    decoding work instead of queueing on the same video. An fps above a video's rate is a config
    error (InvalidInput) and propagates.
    """
    readable: dict[int, bool] = {}
    reasons: dict[int, str] = {}

    def attempt(index: int, wait: bool) -> None:
        try:
            entry = cache.fill(items[index].path, fps, short_side, wait=wait)
        except VideoReadError as exc:
            readable[index] = False
            reasons[index] = exc.reason
            return
        if entry is not None:
            readable[index] = True

    for index in range(len(items)):
        attempt(index, wait=False)
    for index in range(len(items)):
        if index not in readable:
            attempt(index, wait=True)
    usable = []
    for index, item in enumerate(items):
        if readable[index]:
            usable.append(item)
        else:
            warn(f"skipping {item.name}: {reasons[index]}")
    return usable


def loop_indices(start: int, stop: int, clip_frames: int) -> np.ndarray:
    """Frame indices [start, stop) repeated cyclically to `clip_frames` entries (LoopPadding)."""
    return np.resize(np.arange(start, stop), clip_frames)


class _ClipReader:
    """Shared by TrainClips and TestClips: entries, frame counts, crop + flip."""

    def __init__(
        self,
        items: Sequence[_Item],
        cache: FrameCache,
        fps: float | None,
        short_side: int | None,
        clip_frames: int,
        crop: int,
    ):
        if clip_frames < 1 or crop < 1:
            raise ValueError(f"clip_frames and crop must be >= 1 (got {clip_frames}, {crop})")
        self.items = list(items)
        self.clip_frames = clip_frames  # s
        self.crop = crop
        # Resolve cache entries once (decoding what is missing); workers then only read files.
        self.entries: list[Path] = []
        self.num_frames: list[int] = []
        self.frame_sizes: list[tuple[int, int]] = []  # (height, width) as cached
        for item in self.items:
            entry = cache.fill(item.path, fps, short_side)
            assert entry is not None
            self.entries.append(entry)
            shape = load_entry(entry).shape
            self.num_frames.append(int(shape[0]))
            self.frame_sizes.append((int(shape[1]), int(shape[2])))
        self.labels = [int(item.label) for item in self.items]
        self._open: dict[int, StoredFrames] = {}  # per process: headers read once, no file held

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}  # each loader worker reads its own headers
        return state

    def _frames(self, video: int) -> StoredFrames:
        frames = self._open.get(video)
        if frames is None:
            if len(self._open) >= _OPEN_READERS:
                self._open.clear()
            frames = self._open[video] = load_entry(self.entries[video])
        return frames

    def _clip(
        self, video: int, indices: np.ndarray, corner: tuple[float, float] | None, flip: bool
    ) -> torch.Tensor:
        """Crop frames `indices` of a video; corner = (fy, fx) in [0, 1] (None: centre)."""
        frames = self._frames(video)
        height, width = frames.shape[1:3]
        if min(height, width) < self.crop:
            whole = frames.read(indices, slice(0, height), slice(0, width))
            return _upscaled_clip(whole, self.crop, corner, flip)
        fy, fx = (0.5, 0.5) if corner is None else corner
        y0 = min(int(fy * (height - self.crop + 1)), height - self.crop)
        x0 = min(int(fx * (width - self.crop + 1)), width - self.crop)
        clip = torch.from_numpy(frames.read(indices, slice(y0, y0 + self.crop), slice(x0, x0 + self.crop)))
        # torch mirrors a 240-wide clip in 0.3 ms; numpy's copy of clip[:, :, ::-1] takes 6 (3-byte runs)
        return clip.flip(2) if flip else clip


def _upscaled_clip(
    clip: np.ndarray,
    crop: int,
    corner: tuple[float, float] | None,
    flip: bool,
) -> torch.Tensor:
    """Rare path: frames smaller than the crop are scaled up (short side = crop), then cropped.

    Interpolated in float32 on the uint8 levels, then rounded back to uint8 like any other clip.
    """
    tensor = torch.from_numpy(clip).permute(0, 3, 1, 2).float()  # (T, 3, h, w)
    height, width = tensor.shape[2:]
    scale = crop / min(height, width)
    size = (max(crop, math.ceil(height * scale)), max(crop, math.ceil(width * scale)))
    tensor = torch.nn.functional.interpolate(
        tensor, size=size, mode="bilinear", align_corners=False
    )
    fy, fx = (0.5, 0.5) if corner is None else corner
    y0 = min(int(fy * (size[0] - crop + 1)), size[0] - crop)
    x0 = min(int(fx * (size[1] - crop + 1)), size[1] - crop)
    tensor = tensor[:, :, y0 : y0 + crop, x0 : x0 + crop]
    if flip:
        tensor = tensor.flip(3)
    pixels = tensor.round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()  # (T, crop, crop, 3)


# (x / 255 - mean) / std = x * _SCALE - _SHIFT, as (1, 3, 1, 1, 1) float32 for (B, 3, T, H, W).
_SCALE = torch.tensor([1 / (255 * s) for s in IMAGENET_STD], dtype=torch.float32)
_SHIFT = torch.tensor([m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dtype=torch.float32)
_SCALE, _SHIFT = _SCALE.view(1, 3, 1, 1, 1), _SHIFT.view(1, 3, 1, 1, 1)
_ON_DEVICE: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalise_batch(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, H, W): (x / 255 - mean) / std per RGB channel.

    Runs on the clips' own device: the loader hands over uint8 so that the GPU does this. The
    arithmetic runs on a permuted view and keeps its strides, so the result is channels_last_3d
    in memory (no extra pass to reorder it into planar layout). The constants are cached per
    device, so only the first call on a device copies them from the host.
    """
    if clips.dtype != torch.uint8 or clips.dim() != 5 or clips.shape[-1] != 3:
        raise ValueError(f"expected uint8 (B, T, H, W, 3) clips, got {clips.dtype} {clips.shape}")
    if clips.device not in _ON_DEVICE:
        _ON_DEVICE[clips.device] = (_SCALE.to(clips.device), _SHIFT.to(clips.device))
    scale, shift = _ON_DEVICE[clips.device]
    return clips.permute(0, 4, 1, 2, 3).float() * scale - shift


class TrainClips(Dataset):
    """One random clip per video per epoch: item -> (clip uint8 (s, crop, crop, 3), label).

    Call `set_epoch(e)` before each epoch. An index may also be an (epoch, index) pair: the
    sampler of `make_loader` sends those, so persistent workers (which hold their own copy of
    the dataset) still draw the current epoch's clips.
    """

    def __init__(
        self,
        items: Sequence[VideoItem],
        cache: FrameCache,
        fps: float | None,
        short_side: int | None,
        clip_frames: int,
        crop: int,
        seed: int,
        flip_to: Sequence[int | None] | None = None,
    ):
        self._reader = _ClipReader(items, cache, fps, short_side, clip_frames, crop)
        self.items = self._reader.items
        self.labels = self._reader.labels
        self.seed = int(seed)
        self.epoch = 0
        # label -> the label of its flipped clip, None: never flipped (default: flips keep labels)
        self.flip_to = list(flip_to) if flip_to is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, video = index if isinstance(index, tuple) else (self.epoch, index)
        rng = np.random.default_rng([self.seed, epoch, video])
        clip_frames = self._reader.clip_frames
        frames = self._reader.num_frames[video]
        start = int(rng.integers(0, max(frames - clip_frames, 0) + 1))
        indices = loop_indices(start, min(start + clip_frames, frames), clip_frames)
        corner = (float(rng.random()), float(rng.random()))
        flip = bool(rng.random() < 0.5)
        label = self.labels[video]
        if flip and self.flip_to is not None:
            target = self.flip_to[label]
            flip, label = (False, label) if target is None else (True, target)
        return self._reader._clip(video, indices, corner, flip), label


class TestClips(Dataset):
    """All non-overlapping clips of every video, centre crop: item -> (clip, label, video index).

    Average the clip outputs per video index for video-level accuracy (`video_labels[v]` is the
    label of video v). The last clip of a video loop-pads its own frames (see module docstring).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        items: Sequence[VideoItem],
        cache: FrameCache,
        fps: float | None,
        short_side: int | None,
        clip_frames: int,
        crop: int,
        views: str = "clips",
    ):
        from mtsearch.key_checks import parse_views

        self._reader = _ClipReader(items, cache, fps, short_side, clip_frames, crop)
        self.items = self._reader.items
        self.video_labels = self._reader.labels
        self.views = views
        grid = parse_views(views)
        # (video index, first frame, crop corner or None for the centre) of every clip, video by video
        self.clips: list[tuple[int, int, tuple[float, float] | None]] = []
        for video, frames in enumerate(self._reader.num_frames):
            if grid is None:
                self.clips += [(video, start, None) for start in range(0, max(frames, 1), clip_frames)]
                continue
            self.clips += [(video, start, corner) for start in _spread_starts(frames, clip_frames, grid[0])
                           for corner in _spread_corners(self._reader.frame_sizes[video], grid[1])]

    @property
    def num_videos(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        video, start, corner = self.clips[index]
        frames = self._reader.num_frames[video]
        clip_frames = self._reader.clip_frames
        indices = loop_indices(start, min(start + clip_frames, frames), clip_frames)
        clip = self._reader._clip(video, indices, corner, False)
        return clip, self.video_labels[video], video


def _spread_starts(frames: int, clip_frames: int, count: int) -> list[int]:
    """`count` clip starts spread evenly from the first to the last full clip (one where the
    video holds only one; a video shorter than a clip is one looped clip)."""
    room = max(frames - clip_frames, 0)
    if count == 1 or room == 0:
        return [room // 2]
    return sorted({round(k * room / (count - 1)) for k in range(count)})


def _spread_corners(size: tuple[int, int], count: int) -> list[tuple[float, float]]:
    """`count` crops spread along the long side (first, middle, last for 3), centred across."""
    height, width = size
    if count == 1 or height == width:
        return [(0.5, 0.5)]
    along = [k / (count - 1) for k in range(count)]
    return [(0.5, f) for f in along] if width > height else [(f, 0.5) for f in along]


class _EpochSampler(Sampler):
    """Yields (epoch, index) pairs, shuffled per (seed, epoch) when asked.

    It reads `dataset.epoch` in the main process each time iteration starts, which is how the
    epoch reaches persistent workers.
    """

    def __init__(self, dataset: TrainClips, shuffle: bool, seed: int):
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.dataset.epoch
        count = len(self.dataset)
        if self.shuffle:
            # The extra 1 keeps the order stream apart from TrainClips' per-clip streams.
            order = np.random.default_rng([self.seed, epoch, count, 1]).permutation(count)
        else:
            order = np.arange(count)
        return iter([(epoch, int(i)) for i in order])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    device: str | torch.device,
    seed: int,
) -> DataLoader:
    """A DataLoader with the settings that matter for speed and reproducibility.

    Batches hold uint8 clips (B, T, H, W, 3): move them to the device and pass them through
    `normalise_batch` there before the model. Pinned memory only for CUDA devices; with
    workers > 0, persistent workers (decoder state and mmaps survive between epochs) and a
    prefetch factor of 4 (cheap with uint8 batches; it absorbs slow clips). A seeded generator.
    With shuffle (training), a final batch of one clip is dropped (BatchNorm cannot train on one
    sample; it is a different clip each epoch); otherwise every clip is kept.
    """
    pin_memory = _is_cuda(device)
    generator = torch.Generator().manual_seed(int(seed))
    drop_last = bool(
        shuffle and batch_size > 1 and len(dataset) > 1 and len(dataset) % batch_size == 1
    )
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": workers,
        "pin_memory": pin_memory,
        "persistent_workers": workers > 0,
        "generator": generator,
        "drop_last": drop_last,
    }
    if workers > 0:
        options["prefetch_factor"] = 4
    if isinstance(dataset, TrainClips):
        options["sampler"] = _EpochSampler(dataset, shuffle, seed)
    else:
        options["shuffle"] = shuffle
    return DataLoader(dataset, **options)


def _is_cuda(device: str | torch.device) -> bool:
    if isinstance(device, str) and device == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda" and torch.cuda.is_available()
