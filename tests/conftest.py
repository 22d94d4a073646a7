"""Shared fixtures: real video files written with PyAV (`mtsearch.data.video.write_video`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

# Ray 2.60 turns token authentication on for a local `ray.init()` by setting RAY_AUTH_MODE=token in
# this process, and Ray's core keeps that mode for the rest of the process. A later test that joins
# a test head (auth off) from this process, or from a child that inherits the variable, then
# rejects the head's calls and every trial's actor is cancelled. Tests run Ray with auth off
# throughout; test_cluster.py sets its own variables for the token cluster it starts.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Frame index is written into two flat blocks (low and high nibble, 16 grey levels apart) so a
# decoded frame says which source frame it was even after lossy mpeg4 coding.
_LEVEL_STEP = 16
_LEVEL_BASE = 8


def index_frame(index: int, size: tuple[int, int]) -> np.ndarray:
    """A uint8 (H, W, 3) frame whose left half encodes index % 16 and right half index // 16."""
    height, width = size
    if not 0 <= index < 256:
        raise ValueError(f"index pattern holds frames 0..255 (got {index})")
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:, : width // 2] = _LEVEL_BASE + _LEVEL_STEP * (index % 16)
    frame[:, width // 2 :] = _LEVEL_BASE + _LEVEL_STEP * (index // 16)
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Read back the source frame index from a decoded (possibly resized) `index` frame."""
    height, width = frame.shape[:2]
    inner = slice(height // 4, 3 * height // 4)
    low = frame[inner, width // 8 : 3 * width // 8].mean()
    high = frame[inner, 5 * width // 8 : 7 * width // 8].mean()
    return _nibble(low) + 16 * _nibble(high)


def _nibble(level: float) -> int:
    return round((float(level) - _LEVEL_BASE) / _LEVEL_STEP)


def pattern_frames(
    num_frames: int, size: tuple[int, int], pattern: str, seed: int = 0
) -> np.ndarray:
    """uint8 (T, H, W, 3) frames.

    `index`: the frame index is readable back with `frame_index` (fps resampling tests);
    `moving`: a bright square moving right over a gradient (motion, like the synthetic set);
    `noise`: seeded random pixels (worst case for the codec, large files).
    """
    height, width = size
    if pattern == "index":
        return np.stack([index_frame(i, size) for i in range(num_frames)])
    if pattern == "moving":
        ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        xs = np.linspace(0, 127, width, dtype=np.float32)[None, :]
        base = np.stack(
            [
                np.broadcast_to(ys, (height, width)),
                np.broadcast_to(xs, (height, width)),
                np.full((height, width), 64, np.float32),
            ],
            axis=-1,
        ).astype(np.uint8)
        frames = np.repeat(base[None], num_frames, axis=0)
        side = max(2, min(height, width) // 4)
        for t in range(num_frames):
            x0 = (t * 4) % max(1, width - side)
            frames[t, height // 2 - side // 2 : height // 2 + side // 2, x0 : x0 + side] = 255
        return frames
    if pattern == "noise":
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)
    raise ValueError(f"unknown pattern {pattern!r} (index, moving, noise)")


def write_pattern_video(
    path: str | Path,
    num_frames: int = 30,
    fps: float = 30.0,
    size: tuple[int, int] = (64, 80),
    pattern: str = "index",
    codec: str = "mpeg4",
) -> Path:
    """Write a real encoded video file; `size` is (height, width), both even."""
    from mtsearch.data.video import write_video

    frames = pattern_frames(num_frames, size, pattern)
    bit_rate = 4_000_000 if pattern == "index" else 1_000_000
    return write_video(path, frames, fps=fps, codec=codec, bit_rate=bit_rate)


@pytest.fixture
def make_video() -> Callable[..., Path]:
    """`make_video(path, num_frames=30, fps=30, size=(64, 80), pattern="index")` -> Path.

    Writes a real video with PyAV; size is (height, width). Patterns: index, moving, noise.
    """
    return write_pattern_video


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, 2 OpenMP threads can run 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the tests that train on the built-in synthetic set, so the set is
    written and decoded once per session rather than once per test (a minute or two each)."""
    return tmp_path_factory.mktemp("builtin-cache")


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set (4 classes x 5 videos) the trainer tests share; read-only for them."""
    from mtsearch.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root / "set", classes=4, videos_per_class=5, seed=3, workers=1)
    return root / "set"


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A Ray head on 127.0.0.1 for the session (4 logical CPUs: stand-in trials mostly sleep),
    reached through `address=`, which also covers `--address`; stopped afterwards. One head for
    every module: starting one takes 5-10 s, and a test leaves nothing on it (its driver ends)."""
    from ray_head import ray_head

    with ray_head(num_cpus=4, num_gpus=0) as address:
        yield address
