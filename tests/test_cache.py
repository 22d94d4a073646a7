"""FrameCache on real files: hit, miss, invalidation, recorded failures, two processes at once."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import frame_index

from mtsearch.data.cache import FrameCache
from mtsearch.data.video import read_video
from mtsearch.errors import InvalidInput, VideoReadError


def cache_files(root: Path, suffix: str) -> list[Path]:
    return sorted(root.rglob(f"*{suffix}"))


def test_miss_then_hit_decodes_once(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "v.avi", num_frames=30, fps=30)
    cache = FrameCache(tmp_path / "frames")
    first = cache.get(video, 15, 32)
    assert cache.stats.decodes == 1 and cache.stats.hits == 0
    assert isinstance(first, np.memmap) and not first.flags.writeable
    assert first.shape == (15, 32, 40, 3) and first.dtype == np.uint8
    assert [frame_index(f) for f in first] == list(range(0, 30, 2))
    np.testing.assert_array_equal(first, read_video(video, fps=15, short_side=32))

    (entry,) = cache_files(cache.root, ".npy")
    written = entry.stat().st_mtime_ns
    second = cache.get(video, 15, 32)
    assert cache.stats.decodes == 1 and cache.stats.hits == 1
    np.testing.assert_array_equal(first, second)
    assert entry.stat().st_mtime_ns == written

    other_process = FrameCache(tmp_path / "frames")  # a fresh object, as in another trial
    assert other_process.num_frames(video, 15, 32) == 15
    assert other_process.stats.decodes == 0
    assert cache_files(cache.root, ".tmp") == []


def test_settings_are_part_of_the_key(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "v.avi", num_frames=30, fps=30)
    cache = FrameCache(tmp_path / "frames")
    assert cache.get(video, 30, 32).shape == (30, 32, 40, 3)
    assert cache.get(video, 10, 32).shape == (10, 32, 40, 3)
    assert cache.get(video, 10, 64).shape == (10, 64, 80, 3)
    assert cache.get(video, None, None).shape == (30, 64, 80, 3)
    assert cache.stats.decodes == 4 and len(cache_files(cache.root, ".npy")) == 4


def test_changed_file_is_decoded_again(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "v.avi", num_frames=30, fps=30)
    cache = FrameCache(tmp_path / "frames")
    assert cache.num_frames(video, 30, None) == 30
    make_video(video, num_frames=45, fps=30)  # same path, new content
    assert cache.num_frames(video, 30, None) == 45
    assert cache.stats.decodes == 2
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched only
    cache.get(video, 30, None)
    assert cache.stats.decodes == 3


def test_unreadable_video_is_recorded_and_raises_every_time(tmp_path: Path, make_video) -> None:
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"\x00garbage" * 500)
    cache = FrameCache(tmp_path / "frames")
    for _ in range(3):
        with pytest.raises(VideoReadError) as err:
            cache.get(broken, 30, 32)
        assert err.value.path == broken.absolute()
        assert "Invalid data" in err.value.reason
    assert cache.stats.decodes == 1 and cache.stats.failures == 3
    assert len(cache_files(cache.root, ".err")) == 1
    assert FrameCache(cache.root).stats.decodes == 0

    make_video(broken, num_frames=10, fps=30)  # repaired: new key, decoded again
    assert cache.num_frames(broken, 30, 32) == 10

    with pytest.raises(VideoReadError, match="file not found"):
        cache.get(tmp_path / "missing.avi", 30, 32)


def test_fps_above_source_is_not_cached_as_a_broken_video(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "v25.avi", num_frames=25, fps=25)
    cache = FrameCache(tmp_path / "frames")
    for _ in range(2):
        with pytest.raises(InvalidInput):
            cache.get(video, 30, 32)
    assert cache_files(cache.root, ".err") == [] and cache_files(cache.root, ".npy") == []


def test_fill_without_waiting_skips_an_entry_being_filled(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "v.avi", num_frames=10, fps=30)
    cache = FrameCache(tmp_path / "frames")
    entry, _, lock = cache._paths(video.absolute(), 30, 32)
    lock.parent.mkdir(parents=True)
    import fcntl

    with open(lock, "w") as held:  # another process decoding this video right now
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cache.fill(video, 30, 32, wait=False) is None
        fcntl.flock(held, fcntl.LOCK_UN)
    assert cache.fill(video, 30, 32, wait=False) == entry
    assert cache.stats.waits == 1 and cache.stats.decodes == 1


def _fill_in_child(root: str, video: str, barrier) -> tuple[int, int, str]:
    cache = FrameCache(Path(root))
    barrier.wait()  # both processes ask at the same moment
    frames = cache.get(video, 15, 96)
    return cache.stats.decodes, cache.stats.waits, hashlib.sha256(frames.tobytes()).hexdigest()


def test_two_processes_fill_one_entry_once(tmp_path: Path, make_video) -> None:
    video = make_video(
        tmp_path / "big.avi", num_frames=150, fps=30, size=(240, 320), pattern="noise"
    )
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            results = pool.starmap(
                _fill_in_child, [(str(tmp_path / "frames"), str(video), barrier)] * 2
            )
    decodes = sum(r[0] for r in results)
    assert decodes == 1, results  # one decoded, the other waited for its lock and read the file
    assert results[0][2] == results[1][2]
    expected = read_video(video, fps=15, short_side=96)
    assert results[0][2] == hashlib.sha256(expected.tobytes()).hexdigest()
    assert len(cache_files(tmp_path / "frames", ".npy")) == 1
    assert cache_files(tmp_path / "frames", ".tmp") == []
