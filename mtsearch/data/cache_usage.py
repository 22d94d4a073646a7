"""How much disk the frame cache takes: what a dataset will need before a run fills it, what the
cache holds now (per dataset and setting), and removing the entries nothing can read again.

The estimate is exact for `raw` (frames x H x W x 3). For `jpeg` the bytes a frame takes depend
on the picture, so a few frames of a few of the dataset's own videos are decoded and compressed
at the cache's settings, and their bytes per pixel scale the whole dataset's pixel count.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtsearch.data.frame_formats import SUFFIXES, jpeg_bytes
from mtsearch.errors import VideoReadError, free_bytes

_SAMPLE_VIDEOS, _SAMPLE_FRAMES = 6, 8
_NPY_HEADER = 128


@dataclass(frozen=True)
class CacheNeed:
    """The cache a dataset needs at one (fps, short side, format)."""

    total: int  # bytes of entries for every usable video
    cached: int  # bytes of those entries already in the cache
    free: int | None  # bytes free on the cache's disk
    videos: int
    sampled: int  # videos whose frames were compressed to measure (jpeg), 0 for raw

    @property
    def missing(self) -> int:
        return max(self.total - self.cached, 0)

    @property
    def fits(self) -> bool:
        return self.free is None or self.missing <= self.free


def estimate_need(checks: Sequence[Any], cache: Any, fps: float | None, short_side: int | None) -> CacheNeed:
    """The bytes `cache` (a FrameCache) needs for the usable videos of `checks` (VideoCheck)."""
    from mtsearch.data.video import read_video, scaled_size

    usable = [c for c in checks if c.usable and c.frames and c.size]
    pixels = []
    for check in usable:
        width, height = scaled_size(check.size[0], check.size[1], short_side)
        pixels.append(check.frames * width * height)
    total_pixels = float(sum(pixels))
    sampled = 0
    if cache.format == "raw":
        total = int(3 * total_pixels) + _NPY_HEADER * len(usable)
    else:
        encoded = raw = 0
        picks = np.linspace(0, len(usable) - 1, min(_SAMPLE_VIDEOS, len(usable))).round().astype(int)
        for index in sorted(set(picks.tolist())):
            try:
                frames = read_video(usable[index].item.path, fps=fps, short_side=short_side,
                                    threads=1, max_frames=_SAMPLE_FRAMES)
            except (VideoReadError, ValueError):
                continue
            encoded += sum(len(piece) for piece in jpeg_bytes(frames, cache.quality)[4:])
            raw += frames.size // 3
            sampled += 1
        per_pixel = encoded / raw if raw else 0.1
        total = int(total_pixels * per_pixel) + 8 * sum(c.frames for c in usable)
    cached = 0
    for check in usable:
        try:
            entry = cache.entry_path(check.item.path, fps, short_side)
            cached += entry.stat().st_size
        except (OSError, VideoReadError):
            continue
    return CacheNeed(total, cached, free_bytes(cache.root), len(usable), sampled)


# --- what the cache holds ---------------------------------------------------------------------

@dataclass
class CacheGroup:
    """Entries of one dataset at one setting."""

    dataset: str
    setting: str  # `30 fps, short side 256, jpeg q90`
    entries: int = 0
    bytes: int = 0
    stale: int = 0  # entries whose video changed or vanished
    stale_bytes: int = 0
    paths: list[Path] = field(default_factory=list)  # the stale entries' files


def _setting(note: dict[str, Any]) -> str:
    fps = "source fps" if note.get("fps") is None else f"{note['fps']:g} fps"
    side = "source size" if note.get("short_side") is None else f"short side {note['short_side']}"
    fmt = f"jpeg q{note.get('quality')}" if note.get("format") == "jpeg" else str(note.get("format", "raw"))
    return f"{fps}, {side}, {fmt}"


def _is_stale(note: dict[str, Any]) -> bool:
    try:
        stat = os.stat(note["path"])
    except (OSError, KeyError, TypeError):
        return True
    return stat.st_size != note.get("size") or stat.st_mtime_ns != note.get("mtime_ns")


def inventory(root: Path) -> list[CacheGroup]:
    """Every entry under `root` (a frames folder), grouped by dataset and setting; entries an
    earlier mtsearch wrote without a note form one group of their own."""
    groups: dict[tuple[str, str], CacheGroup] = {}
    if not root.is_dir():
        return []
    for entry in sorted(root.glob("*/*")):
        suffix = entry.suffix
        if suffix not in SUFFIXES.values():
            continue
        try:
            size = entry.stat().st_size
        except OSError:
            continue
        note_path = entry.with_suffix(".json")
        try:
            note = json.loads(note_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            note = None
        if note is None:
            key = ("(no note: written by an earlier mtsearch)", "raw" if suffix == ".npy" else "jpeg")
            stale = False
        else:
            key = (str(note.get("dataset") or Path(str(note.get("path", "?"))).parent), _setting(note))
            stale = _is_stale(note)
        group = groups.setdefault(key, CacheGroup(*key))
        group.entries += 1
        group.bytes += size
        if stale:
            group.stale += 1
            group.stale_bytes += size
            group.paths.append(entry)
    return sorted(groups.values(), key=lambda g: (g.dataset, g.setting))


def clean(root: Path, everything: bool = False) -> tuple[int, int]:
    """Remove stale entries (or, with `everything`, every entry) with their notes and locks, the
    failure markers of videos that changed or vanished, and temp files a killed filler left an
    hour or more ago. Returns (files removed, bytes freed). Entries being filled are untouched:
    their lock is held, and a finished entry appears by rename, all at once."""
    import fcntl

    removed = freed = 0

    def remove(path: Path) -> None:
        nonlocal removed, freed
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return
        removed += 1
        freed += size

    groups = inventory(root)
    targets = [p for g in groups for p in g.paths]
    if everything:
        targets = [e for e in root.glob("*/*") if e.suffix in SUFFIXES.values()]
    for entry in targets:
        lock = entry.with_suffix(".lock")
        fd = None
        try:
            if lock.exists():
                fd = os.open(lock, os.O_RDWR)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (OSError, BlockingIOError):
            if fd is not None:
                os.close(fd)
            continue  # being filled right now
        try:
            remove(entry)
            remove(entry.with_suffix(".json"))
            remove(lock)
        finally:
            if fd is not None:
                os.close(fd)
    for marker in root.glob("*/*.err"):
        try:
            note = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            note = {}
        if everything or ("size" in note and _is_stale(note)):
            remove(marker)
    cutoff = time.time() - 3600
    for tmp in root.glob("*/.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                remove(tmp)
        except OSError:
            continue
    return removed, freed
