"""FrameCache on real files, in both formats: hit, miss, invalidation, recorded failures, two
processes at once, a full disk."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import frame_index

from mtsearch.data.cache import CacheFull, FrameCache
from mtsearch.data.frame_formats import SUFFIXES
from mtsearch.data.video import read_video
from mtsearch.errors import InvalidInput, VideoReadError, storage_failure

FORMATS = ("jpeg", "raw")
# JPEG at quality 90 on these flat test patterns: well under 2 levels of 255 on average
JPEG_MEAN_ERROR = 2.0


def cache_files(root: Path, suffix: str) -> list[Path]:
    return sorted(root.rglob(f"*{suffix}"))


def assert_frames_match(got: np.ndarray, want: np.ndarray, fmt: str) -> None:
    """Raw entries hold the decoded frames exactly; JPEG ones within JPEG's error."""
    assert got.shape == want.shape and got.dtype == np.uint8
    if fmt == "raw":
        np.testing.assert_array_equal(got, want)
    else:
        assert np.abs(got.astype(np.int16) - want).mean() < JPEG_MEAN_ERROR


@pytest.mark.parametrize("fmt", FORMATS)
def test_miss_then_hit_decodes_once(tmp_path: Path, make_video, fmt: str) -> None:
    video = make_video(tmp_path / "v.avi", num_frames=30, fps=30)
    cache = FrameCache(tmp_path / "frames", format=fmt)
    first = cache.get(video, 15, 32)
    assert cache.stats.decodes == 1 and cache.stats.hits == 0
    if fmt == "raw":
        assert isinstance(first, np.memmap) and not first.flags.writeable
    assert first.shape == (15, 32, 40, 3) and first.dtype == np.uint8
    assert [frame_index(f) for f in first] == list(range(0, 30, 2))
    assert_frames_match(first, read_video(video, fps=15, short_side=32), fmt)

    (entry,) = cache_files(cache.root, SUFFIXES[fmt])
    written = entry.stat().st_mtime_ns
    second = cache.get(video, 15, 32)
    assert cache.stats.decodes == 1 and cache.stats.hits == 1
    np.testing.assert_array_equal(first, second)
    assert entry.stat().st_mtime_ns == written

    note = json.loads(entry.with_suffix(".json").read_text())
    assert note["path"] == str(video.absolute()) and note["format"] == fmt and note["frames"] == 15
    assert note["bytes"] == entry.stat().st_size and note["size"] == video.stat().st_size
    other_process = FrameCache(tmp_path / "frames", format=fmt)  # a fresh object, as in another trial
    assert other_process.num_frames(video, 15, 32) == 15
    assert other_process.stats.decodes == 0
    assert cache_files(cache.root, ".tmp") == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_settings_are_part_of_the_key(tmp_path: Path, make_video, fmt: str) -> None:
    video = make_video(tmp_path / "v.avi", num_frames=30, fps=30)
    cache = FrameCache(tmp_path / "frames", format=fmt)
    assert cache.get(video, 30, 32).shape == (30, 32, 40, 3)
    assert cache.get(video, 10, 32).shape == (10, 32, 40, 3)
    assert cache.get(video, 10, 64).shape == (10, 64, 80, 3)
    assert cache.get(video, None, None).shape == (30, 64, 80, 3)
    assert cache.stats.decodes == 4 and len(cache_files(cache.root, SUFFIXES[fmt])) == 4
    other = FrameCache(cache.root, format="raw" if fmt == "jpeg" else "jpeg")  # the format is in the key
    assert other.get(video, 30, 32).shape == (30, 32, 40, 3) and other.stats.decodes == 1


def test_raw_entries_keep_the_key_they_had_before_formats(tmp_path: Path, make_video) -> None:
    """Caches filled by earlier versions (raw only) are still hits for `data.cache_format: raw`."""
    video = make_video(tmp_path / "v.avi", num_frames=10, fps=30)
    source = video.absolute()
    stat = source.stat()
    key = f"v1|{source}|{stat.st_size}|{stat.st_mtime_ns}|30.0|32"
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    assert FrameCache(tmp_path / "frames", format="raw").entry_path(video, 30, 32) == \
        tmp_path / "frames" / digest[:2] / f"{digest}.npy"


def test_jpeg_reads_of_crops_and_repeated_frames_match_the_whole_frames(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "v.avi", num_frames=20, fps=30, size=(64, 80), pattern="moving")
    cache = FrameCache(tmp_path / "frames")
    whole = cache.get(video, 30, None)  # (20, 64, 80, 3)
    stored = cache.open(video, 30, None)
    for indices in ([3, 4, 5, 6], [17, 18, 19, 17, 18], [0], [9, 2, 9]):
        got = stored.read(np.array(indices), slice(8, 56), slice(20, 68))
        np.testing.assert_array_equal(got, whole[indices][:, 8:56, 20:68])
        assert got.flags.writeable and got.flags.c_contiguous
    assert cache.stats.decodes == 1


def test_a_full_cache_disk_is_one_error_naming_the_cache_and_leaves_no_entry(tmp_path: Path, make_video,
                                                                            monkeypatch) -> None:
    from mtsearch.data import cache as cache_module

    video = make_video(tmp_path / "v.avi", num_frames=30, fps=30, size=(64, 80), pattern="noise")
    cache = FrameCache(tmp_path / "frames")
    monkeypatch.setattr(cache_module, "_free", lambda folder: 1000)  # what statvfs says on a full disk
    with pytest.raises(CacheFull) as err:
        cache.get(video, 30, None)
    text = err.value.render("mtsearch train c.yaml")
    assert text.startswith(f"disk full on data.cache_dir {cache.root} (needs ")
    assert "1000 B" not in text and "0.001 MB free" in text and text.endswith("then: mtsearch train c.yaml")
    assert err.value.needed > 30 * 1000 and storage_failure(err.value) is err.value
    assert cache_files(cache.root, ".jpgs") == [] and cache_files(cache.root, ".tmp") == []
    assert cache_files(cache.root, ".err") == []  # not a broken video: the next run decodes it


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


@pytest.mark.parametrize("fmt", FORMATS)
def test_unreadable_video_is_recorded_and_raises_every_time(tmp_path: Path, make_video, fmt: str) -> None:
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"\x00garbage" * 500)
    cache = FrameCache(tmp_path / "frames", format=fmt)
    for _ in range(3):
        with pytest.raises(VideoReadError) as err:
            cache.get(broken, 30, 32)
        assert err.value.path == broken.absolute()
        assert "Invalid data" in err.value.reason
    assert cache.stats.decodes == 1 and cache.stats.failures == 3
    assert len(cache_files(cache.root, ".err")) == 1
    assert FrameCache(cache.root).stats.decodes == 0
    with pytest.raises(VideoReadError):  # recorded for the video, whatever the format
        FrameCache(cache.root, format="raw" if fmt == "jpeg" else "jpeg").get(broken, 30, 32)

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
    assert cache_files(cache.root, ".err") == [] and cache_files(cache.root, ".jpgs") == []


def test_fill_without_waiting_skips_an_entry_being_filled(tmp_path: Path, make_video) -> None:
    video = make_video(tmp_path / "v.avi", num_frames=10, fps=30)
    cache = FrameCache(tmp_path / "frames")
    entry, _, lock = cache._paths(video.absolute(), video.stat(), 30, 32)
    lock.parent.mkdir(parents=True)
    import fcntl

    with open(lock, "w") as held:  # another process decoding this video right now
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cache.fill(video, 30, 32, wait=False) is None
        fcntl.flock(held, fcntl.LOCK_UN)
    assert cache.fill(video, 30, 32, wait=False) == entry
    assert cache.stats.waits == 1 and cache.stats.decodes == 1


def _fill_in_child(root: str, video: str, barrier, fmt: str) -> tuple[int, int, str]:
    cache = FrameCache(Path(root), format=fmt)
    barrier.wait()  # both processes ask at the same moment
    frames = cache.get(video, 15, 96)
    return cache.stats.decodes, cache.stats.waits, hashlib.sha256(frames.tobytes()).hexdigest()


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_processes_fill_one_entry_once(tmp_path: Path, make_video, fmt: str) -> None:
    video = make_video(
        tmp_path / "big.avi", num_frames=150, fps=30, size=(240, 320), pattern="noise"
    )
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            results = pool.starmap(
                _fill_in_child, [(str(tmp_path / "frames"), str(video), barrier, fmt)] * 2
            )
    decodes = sum(r[0] for r in results)
    assert decodes == 1, results  # one decoded, the other waited for its lock and read the file
    assert results[0][2] == results[1][2]
    if fmt == "raw":
        expected = read_video(video, fps=15, short_side=96)
        assert results[0][2] == hashlib.sha256(expected.tobytes()).hexdigest()
    assert len(cache_files(tmp_path / "frames", SUFFIXES[fmt])) == 1
    assert cache_files(tmp_path / "frames", ".tmp") == []


def test_data_cache_lists_entries_per_dataset_and_cleans_the_stale(tmp_path: Path, make_video) -> None:
    import subprocess
    import sys

    from mtsearch.data.cache_usage import inventory

    kept = make_video(tmp_path / "set" / "a.avi", num_frames=10, fps=30)
    changed = make_video(tmp_path / "set" / "b.avi", num_frames=10, fps=30)
    gone = make_video(tmp_path / "set" / "c.avi", num_frames=10, fps=30)
    cache = FrameCache(tmp_path / "c" / "frames", dataset=str(tmp_path / "set"))
    for video in (kept, changed, gone):
        cache.get(video, 30, 32)
    FrameCache(cache.root, format="raw", dataset=str(tmp_path / "set")).get(kept, 30, 32)
    make_video(changed, num_frames=12, fps=30)  # a new version of the file: its entry is stale
    gone.unlink()
    groups = {g.setting: g for g in inventory(cache.root)}
    assert set(groups) == {"30 fps, short side 32, jpeg q90", "30 fps, short side 32, raw"}
    assert (groups["30 fps, short side 32, jpeg q90"].entries, groups["30 fps, short side 32, jpeg q90"].stale) == (3, 2)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mtsearch", "data", "cache", "--cache-dir",
                               str(tmp_path / "c"), *args], capture_output=True, text=True, timeout=120)

    shown = cli()
    assert shown.returncode == 0, shown.stderr
    assert "4 entries" in shown.stdout and "stale (videos changed or gone): mtsearch data cache --clean" in shown.stdout
    cleaned = cli("--clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.startswith("removed 6 files")  # 2 entries and their notes and locks
    assert [g.entries for g in inventory(cache.root)] == [1, 1] and not any(g.stale for g in inventory(cache.root))
    assert FrameCache(cache.root).get(kept, 30, 32).shape == (10, 32, 40, 3)
    refused = cli("--all")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --all: goes with --clean")
    assert cli("--clean", "--all").returncode == 0 and inventory(cache.root) == []
