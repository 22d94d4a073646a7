"""Decode-once frame cache shared by every trial (and every process) of a search.

Each video is decoded once per (fps, short side) into a `.npy` file of uint8 frames (T, H, W, 3);
readers memory-map it (`np.load(mmap_mode="r")`), so clips are read straight from the page cache
and several trial processes share one copy in RAM.

Where it lives: `mtsearch.paths.frames_dir(cfg.data.cache_dir)`, i.e. `<data.cache_dir>/frames`,
else `$MTSEARCH_CACHE/frames`, else `$XDG_CACHE_HOME/mtsearch/frames` (`~/.cache/mtsearch/frames`).
How to clear it: delete that folder (`rm -rf ~/.cache/mtsearch/frames`) while no search runs;
everything is rebuilt on demand. Entries of changed or deleted videos are not removed by
themselves (their key no longer matches); clearing the folder reclaims that space.

Size: frames are stored uncompressed, H x W x 3 bytes each. For 4:3 video at 30 fps that is about
28 GB per hour of video at short side 256 (the thesis preset), 10 GB at 154 (`small`) and 4.5 GB
at 102 (`tiny`); `data.fps: 15` halves it. Put `data.cache_dir` on a disk that has the room.

Key: the video's absolute path, size and mtime_ns, the fps, the short side and FORMAT_VERSION,
hashed into the file name, so a changed file (or a new decoder format) is decoded again.
Entries are written to a temp file in the same folder and renamed into place (atomic), and a
per-entry `fcntl.flock` lock makes concurrent fillers decode each video once: the others wait and
then read the finished file. An unreadable video leaves a `.err` marker with the reason, so it is
not decoded again by every trial, but each `get` still raises VideoReadError.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtsearch.errors import VideoReadError
from mtsearch.files import atomic_output, write_atomic

# Bump when read_video's output for the same file and settings changes (resampling, scaler).
FORMAT_VERSION = 1


@dataclass
class CacheStats:
    """What this FrameCache object did (per process): for logs, benchmarks and tests."""

    hits: int = 0  # entries found finished (array or failure marker)
    decodes: int = 0  # videos this process decoded (successfully or not)
    failures: int = 0  # VideoReadError raised (new or recorded)
    waits: int = 0  # times another process held the entry's lock


@dataclass
class FrameCache:
    """Decoded videos as memory-mapped uint8 arrays, keyed by file identity and decode settings.

    `threads` is passed to `read_video` (FFmpeg decoder threads, 0: one per core).
    """

    root: Path
    threads: int = 0
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()

    def get(self, path: str | Path, fps: float | None, short_side: int | None) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 as a read-only memmap; decodes on first use."""
        entry = self.fill(path, fps, short_side)
        assert entry is not None  # wait=True never returns None
        return load_entry(entry)

    def num_frames(self, path: str | Path, fps: float | None, short_side: int | None) -> int:
        """Frame count after resampling (fills the entry; reads only the .npy header after)."""
        return int(self.get(path, fps, short_side).shape[0])

    def fill(
        self, path: str | Path, fps: float | None, short_side: int | None, wait: bool = True
    ) -> Path | None:
        """Make sure the entry exists and return its `.npy` path.

        With wait=False, returns None instead of blocking when another process is decoding this
        video right now (so parallel fillers spread over different videos, see usable_videos).
        Raises VideoReadError for an unreadable video (recorded, so later calls are cheap).
        """
        from mtsearch.data.video import read_video

        source = Path(path).absolute()
        entry, marker, lock = self._paths(source, fps, short_side)
        if entry.exists():
            self.stats.hits += 1
            return entry
        self._raise_recorded(source, marker)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(lock, wait) as acquired:
            if not acquired:
                return None
            # Another process may have finished it while we waited for the lock.
            if entry.exists():
                self.stats.hits += 1
                return entry
            self._raise_recorded(source, marker)
            self.stats.decodes += 1
            try:
                frames = read_video(source, fps=fps, short_side=short_side, threads=self.threads)
            except VideoReadError as exc:
                self.stats.failures += 1
                write_atomic(marker, json.dumps({"path": str(source), "reason": exc.reason}))
                raise
            _save_atomic(entry, frames)
        return entry

    def entry_path(self, path: str | Path, fps: float | None, short_side: int | None) -> Path:
        """Where this video's frames are (or would be) stored; the key reflects the file now."""
        return self._paths(Path(path).absolute(), fps, short_side)[0]

    def _paths(
        self, source: Path, fps: float | None, short_side: int | None
    ) -> tuple[Path, Path, Path]:
        try:
            stat = source.stat()
        except OSError as exc:
            reason = "file not found" if isinstance(exc, FileNotFoundError) else str(exc)
            self.stats.failures += 1
            raise VideoReadError(source, reason) from None
        fps_key = "source" if fps is None else repr(float(fps))
        side_key = "source" if short_side is None else str(int(short_side))
        key = f"v{FORMAT_VERSION}|{source}|{stat.st_size}|{stat.st_mtime_ns}|{fps_key}|{side_key}"
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        folder = self.root / digest[:2]  # 256 subfolders keep directory listings short
        return folder / f"{digest}.npy", folder / f"{digest}.err", folder / f"{digest}.lock"

    def _raise_recorded(self, source: Path, marker: Path) -> None:
        if not marker.exists():
            return
        try:
            reason = json.loads(marker.read_text(encoding="utf-8"))["reason"]
        except (OSError, ValueError, KeyError):
            reason = "unreadable (recorded in the frame cache)"
        self.stats.hits += 1
        self.stats.failures += 1
        raise VideoReadError(source, reason)

    @contextmanager
    def _locked(self, lock: Path, wait: bool) -> Iterator[bool]:
        """Exclusive per-entry flock (released by the OS if the process dies)."""
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.stats.waits += 1
                if not wait:
                    yield False
                    return
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def load_entry(entry: str | Path) -> np.ndarray:
    """A finished cache entry as a read-only memmap (T, H, W, 3) uint8 (reads the header only)."""
    return np.load(entry, mmap_mode="r", allow_pickle=False)


def _save_atomic(entry: Path, frames: np.ndarray) -> None:
    """np.save to a temp file in the entry's folder, fsync, rename: readers see all or nothing."""
    with atomic_output(entry) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
