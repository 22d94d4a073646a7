"""Decode-once frame cache shared by every trial (and every process) of a search.

Each video is decoded once per (fps, short side, format) into one entry file that every trial
reads clips from (mtsearch.data.frame_formats): `jpeg` (default, `data.cache_format`) stores a
JPEG per frame, `raw` a memory-mapped `.npy` of uint8 frames (T, H, W, 3).

Where it lives: `mtsearch.paths.frames_dir(cfg.data.cache_dir)`, i.e. `<data.cache_dir>/frames`,
else `$MTSEARCH_CACHE/frames`, else `$XDG_CACHE_HOME/mtsearch/frames` (`~/.cache/mtsearch/frames`).
`mtsearch data cache` lists it per dataset and setting; `--clean` removes the entries of videos
that changed or vanished (their key no longer matches, so nothing reads them again).

Size: `raw` is H x W x 3 bytes a frame: for 4:3 video at 30 fps about 28 GB per hour of video at
short side 256 (the thesis preset), 10 GB at 154 (`small`), 4.5 GB at 102 (`tiny`). `jpeg` at
quality 90 is 1/15 to 1/25 of that on camera video (benchmarks/decode.py measures it);
`mtsearch data check` estimates a dataset's size from a sample of its own videos.

Key: the video's absolute path, size and mtime_ns, the fps, the short side, the format (and JPEG
quality) and FORMAT_VERSION, hashed into the file name, so a changed file (or a new decoder
format) is decoded again. Entries are written to a temp file in the same folder and renamed into
place (atomic), after a check that the disk has room for them; a full disk is `CacheFull`, one
line naming `data.cache_dir` with the bytes needed and free. A per-entry `fcntl.flock` lock makes
concurrent fillers decode each video once: the others wait and then read the finished file. An
unreadable video leaves a `.err` marker with the reason, so it is not decoded again by every
trial, but each `get` still raises VideoReadError. Each entry has a `.json` note beside it (the
video, its size and mtime, the settings, the dataset root) that `mtsearch data cache` reads.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtsearch.data.frame_formats import (
    DEFAULT_FORMAT,
    DEFAULT_QUALITY,
    FORMATS,
    SUFFIXES,
    StoredFrames,
    jpeg_bytes,
    open_frames,
    raw_bytes,
)
from mtsearch.errors import StorageFull, VideoReadError, free_bytes, storage_failure
from mtsearch.files import atomic_output, write_atomic

# Bump when read_video's output for the same file and settings changes (resampling, scaler).
FORMAT_VERSION = 1
CACHE_KEY = "data.cache_dir"
NOTE_SUFFIX, ERROR_SUFFIX, LOCK_SUFFIX = ".json", ".err", ".lock"


class CacheFull(StorageFull):
    """The frame cache's disk is full (or failing): one line naming `data.cache_dir`, the bytes
    the entry needed and the bytes free. A fault of the machine: a search stops for `--resume`."""

    def __init__(self, path: str | Path | None, reason: str, key: str | None = CACHE_KEY,
                 needed: int | None = None, free: int | None = None):
        super().__init__(path, reason, key or CACHE_KEY, needed, free)


@dataclass
class CacheStats:
    """What this FrameCache object did (per process): for logs, benchmarks and tests."""

    hits: int = 0  # entries found finished (frames or failure marker)
    decodes: int = 0  # videos this process decoded (successfully or not)
    failures: int = 0  # VideoReadError raised (new or recorded)
    waits: int = 0  # times another process held the entry's lock


@dataclass
class FrameCache:
    """Decoded videos, keyed by file identity and decode settings.

    `format`: `jpeg` (a JPEG per frame at `quality`) or `raw` (uint8 `.npy`). `threads` is passed
    to `read_video` (FFmpeg decoder threads, 0: one per core). `dataset` (the dataset root) is
    noted beside each new entry, for `mtsearch data cache`.
    """

    root: Path
    threads: int = 0
    format: str = DEFAULT_FORMAT
    quality: int = DEFAULT_QUALITY
    dataset: str | None = None
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        if self.format not in FORMATS:
            raise ValueError(f"cache format must be one of {FORMATS} (got {self.format!r})")

    def get(self, path: str | Path, fps: float | None, short_side: int | None) -> np.ndarray:
        """All frames (T, H, W, 3) uint8: a read-only memmap (raw) or a decoded array (jpeg)."""
        frames = self.open(path, fps, short_side)
        if hasattr(frames, "array"):
            return frames.array  # type: ignore[attr-defined]
        count, height, width = frames.shape[:3]
        return frames.read(np.arange(count), slice(0, height), slice(0, width))

    def open(self, path: str | Path, fps: float | None, short_side: int | None) -> StoredFrames:
        """The entry's reader; decodes the video on first use."""
        entry = self.fill(path, fps, short_side)
        assert entry is not None  # wait=True never returns None
        return open_frames(entry)

    def num_frames(self, path: str | Path, fps: float | None, short_side: int | None) -> int:
        """Frame count after resampling (fills the entry; reads only its header after)."""
        return int(self.open(path, fps, short_side).shape[0])

    def fill(
        self, path: str | Path, fps: float | None, short_side: int | None, wait: bool = True
    ) -> Path | None:
        """Make sure the entry exists and return its path.

        With wait=False, returns None instead of blocking when another process is decoding this
        video right now (so parallel fillers spread over different videos, see usable_videos).
        Raises VideoReadError for an unreadable video (recorded, so later calls are cheap), and
        CacheFull when the cache's disk has no room for the entry (nothing is left half-written).
        """
        from mtsearch.data.video import read_video

        source = Path(path).absolute()
        stat = self._stat(source)
        entry, marker, lock = self._paths(source, stat, fps, short_side)
        if entry.exists():
            self.stats.hits += 1
            return entry
        self._raise_recorded(source, marker)
        for folder in {entry.parent, marker.parent}:
            self._guard(lambda folder=folder: folder.mkdir(parents=True, exist_ok=True), folder)
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
                note = {"path": str(source), "reason": exc.reason, **_identity(stat)}
                self._guard(lambda: write_atomic(marker, json.dumps(note)), marker)
                raise
            pieces = raw_bytes(frames) if self.format == "raw" else jpeg_bytes(frames, self.quality)
            size = self._write(entry, pieces)
            note = {"path": str(source), **_identity(stat), "fps": fps, "short_side": short_side,
                    "format": self.format, "quality": self.quality if self.format == "jpeg" else None,
                    "frames": int(frames.shape[0]), "height": int(frames.shape[1]),
                    "width": int(frames.shape[2]), "bytes": size, "dataset": self.dataset,
                    "created": time.time()}
            try:  # the note serves `data cache` only: an entry without one is still an entry
                write_atomic(entry.with_suffix(NOTE_SUFFIX), json.dumps(note))
            except OSError:
                pass
        return entry

    def entry_path(self, path: str | Path, fps: float | None, short_side: int | None) -> Path:
        """Where this video's frames are (or would be) stored; the key reflects the file now."""
        source = Path(path).absolute()
        return self._paths(source, self._stat(source), fps, short_side)[0]

    def _stat(self, source: Path) -> os.stat_result:
        try:
            return source.stat()
        except OSError as exc:
            reason = "file not found" if isinstance(exc, FileNotFoundError) else str(exc)
            self.stats.failures += 1
            raise VideoReadError(source, reason) from None

    def _paths(
        self, source: Path, stat: os.stat_result, fps: float | None, short_side: int | None
    ) -> tuple[Path, Path, Path]:
        """(entry, failure marker, lock). The marker is keyed without the format: a video that
        cannot be read fails the same way whatever its entry would have held."""
        fps_key = "source" if fps is None else repr(float(fps))
        side_key = "source" if short_side is None else str(int(short_side))
        key = f"v{FORMAT_VERSION}|{source}|{stat.st_size}|{stat.st_mtime_ns}|{fps_key}|{side_key}"
        video = _digest(key)
        # raw keeps the key it has always had, so entries written before formats existed stay valid
        digest = video if self.format == "raw" else _digest(f"{key}|jpeg{int(self.quality)}")
        folder = self.root / digest[:2]  # 256 subfolders keep directory listings short
        marker = self.root / video[:2] / f"{video}{ERROR_SUFFIX}"
        return folder / f"{digest}{SUFFIXES[self.format]}", marker, folder / f"{digest}{LOCK_SUFFIX}"

    def _write(self, entry: Path, pieces: list) -> int:
        """Write the entry atomically after checking the room for it; returns its size."""
        size = sum(len(piece) if isinstance(piece, bytes) else piece.nbytes for piece in pieces)
        free = _free(entry.parent)
        if free is not None and free < size:
            raise CacheFull(self.root, "No space left on device", needed=size, free=free)

        def write() -> None:
            with atomic_output(entry) as tmp, open(tmp, "wb") as fh:
                for piece in pieces:
                    fh.write(piece)

        self._guard(write, entry, needed=size)
        return size

    def _guard(self, action, path: Path, needed: int | None = None) -> None:
        """Run a write; a disk fault becomes CacheFull naming the cache (temp files are gone)."""
        try:
            action()
        except OSError as exc:
            disk = storage_failure(exc)
            if disk is None and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise CacheFull(self.root, disk.reason if disk else os.strerror(exc.errno),
                            needed=needed, free=_free(path.parent)) from None

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
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if storage_failure(exc) is None:
                raise
            raise CacheFull(self.root, storage_failure(exc).reason, free=_free(lock.parent)) from None
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


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _identity(stat: os.stat_result) -> dict[str, int]:
    return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


_free = free_bytes  # a module name tests can replace with what statvfs says on a full disk


def load_entry(entry: str | Path) -> StoredFrames:
    """A finished cache entry's reader (reads the header only)."""
    return open_frames(entry)
