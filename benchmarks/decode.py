"""Training-clip throughput and cache size: decoding with PyAV for every clip vs the frame cache.

    python benchmarks/decode.py [--videos 36] [--width 320 --height 240] [--seconds 4]

Writes HMDB-like videos (320x240, 30 fps, 3-5 s, mpeg4 AVI) to a temp folder: camera-like content
by default (a smooth texture panning, a textured object crossing it, mild sensor noise; `--content
blocks` is a worst case of hard 8-pixel edges everywhere). Then, in the same run:
- decode: a loader without a cache that already stops decoding early: probe the header, pick the
  window, decode from the start of the file up to the window's last frame, crop.
- raw / jpeg: TrainClips on a warmed FrameCache in each format (`data.cache_format`), one process;
  then the jpeg cache through `make_loader` with 2 workers (what a trial's loader does on 2 cores).
Printed: `cache_bytes_per_hour` of each format (bytes of cache per hour of video at these
settings), `cached_clips_per_s` (jpeg, 2 workers) and the last line `cache_vs_decode: <ratio>x`
(the jpeg cache, one process, against decoding).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtsearch.data.cache import FrameCache
from mtsearch.data.clips import TrainClips, loop_indices, usable_videos
from mtsearch.data.frame_formats import SUFFIXES
from mtsearch.data.video import probe, read_video, write_video


@dataclass(frozen=True)
class Item:
    path: Path
    label: int
    name: str


def camera_frames(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """Camera-like (T, H, W, 3): a smooth colour texture panning, a textured object crossing it,
    and sensor noise (sd 3 levels), so that neither codec nor JPEG sees an easy flat picture."""
    y, x = np.mgrid[0 : height + 64, 0 : width + 64].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, 6)
    scene = np.stack([128 + 50 * np.sin(x / rng.uniform(9, 30) + phases[c])
                      * np.cos(y / rng.uniform(9, 30) + phases[c + 3]) for c in range(3)], axis=-1)
    thing = rng.integers(40, 220, (height // 3, width // 4, 3)).astype(np.float32)
    thing = (thing + np.roll(thing, 1, 0) + np.roll(thing, 1, 1) + np.roll(thing, 2, 1)) / 4
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    dx = rng.integers(2, 6)
    for t in range(frames):
        shift = t % 64
        frame = scene[shift // 2 : shift // 2 + height, shift : shift + width].copy()
        x0 = int((dx * t) % (width - thing.shape[1]))
        y0 = height // 3
        frame[y0 : y0 + thing.shape[0], x0 : x0 + thing.shape[1]] = thing
        frame += rng.normal(0, 3, frame.shape).astype(np.float32)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def textured_frames(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """A textured background panning slowly with a textured block moving across it (T, H, W, 3)."""
    background = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    background = np.repeat(np.repeat(background, 8, axis=0), 8, axis=1)  # blocky texture
    block = rng.integers(0, 256, (height // 3, width // 4, 3), dtype=np.uint8)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    dx, dy = rng.integers(2, 6), rng.integers(-2, 3)
    for t in range(frames):
        shift = t // 4 % 8
        out[t] = background[shift : shift + height, shift : shift + width]
        y = int(np.clip(height // 3 + dy * t, 0, height - block.shape[0]))
        x = int((dx * t) % (width - block.shape[1]))
        out[t, y : y + block.shape[0], x : x + block.shape[1]] = block
    return out


def write_videos(
    folder: Path, count: int, width: int, height: int, fps: float, seconds: float, seed: int,
    content: str = "camera",
) -> list[Item]:
    rng = np.random.default_rng(seed)
    make = camera_frames if content == "camera" else textured_frames
    items = []
    for index in range(count):
        frames = int(fps * rng.uniform(seconds * 0.75, seconds * 1.25))
        path = write_video(
            folder / f"video_{index:03d}.avi", make(rng, frames, height, width), fps=fps,
            bit_rate=2_000_000,
        )
        items.append(Item(path, index % 8, path.name))
    return items


def decode_clip(
    item: Item,
    rng: np.random.Generator,
    fps: float,
    short_side: int,
    clip_frames: int,
    crop: int,
    threads: int,
) -> tuple[torch.Tensor, int]:
    """One training clip straight from the file (no cache), same sampling as TrainClips."""
    info = probe(item.path)
    frames = max(1, round(info.duration_s * fps))
    start = int(rng.integers(0, max(frames - clip_frames, 0) + 1))
    decoded = read_video(
        item.path, fps=fps, short_side=short_side, threads=threads, max_frames=start + clip_frames
    )
    start = min(start, len(decoded) - 1)
    clip = decoded[loop_indices(start, min(start + clip_frames, len(decoded)), clip_frames)]
    height, width = clip.shape[1:3]
    y0 = int(rng.integers(0, height - crop + 1))
    x0 = int(rng.integers(0, width - crop + 1))
    clip = clip[:, y0 : y0 + crop, x0 : x0 + crop]
    if rng.random() < 0.5:
        clip = clip[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(clip)), item.label


def timed(label: str, budget_s: float, max_clips: int, sample) -> float:
    """Clips per second of `sample()` over at least 3 clips, until the budget or max_clips."""
    count, began, cpu_began = 0, time.perf_counter(), time.process_time()
    while count < max_clips and (count < 3 or time.perf_counter() - began < budget_s):
        sample()
        count += 1
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    rate = count / elapsed
    print(
        f"{label:<8} {count:6d} clips in {elapsed:6.2f} s = {rate:8.1f} clips/s "
        f"({1000 / rate:7.2f} ms/clip; {1000 * cpu / count:7.2f} ms CPU/clip)"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=36)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=4.0, help="mean video length (+-25%%)")
    parser.add_argument("--source-fps", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=30.0, help="data.fps")
    parser.add_argument("--clip-frames", type=int, default=13, help="data.clip_frames (s)")
    parser.add_argument("--crop", type=int, default=240, help="data.crop")
    parser.add_argument("--short-side", type=int, default=256, help="data.short_side")
    parser.add_argument("--threads", type=int, default=0, help="FFmpeg decoder threads (0: auto)")
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--max-clips", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--content", choices=["camera", "blocks"], default="camera",
                        help="camera-like video (default) or a worst case of hard edges")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mtsearch-bench-") as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        items = write_videos(
            folder / "videos",
            args.videos,
            args.width,
            args.height,
            args.source_fps,
            args.seconds,
            args.seed,
            args.content,
        )
        size_mb = sum(item.path.stat().st_size for item in items) / 1e6
        print(
            f"videos   {len(items)} x {args.width}x{args.height} @ {args.source_fps:g} fps, "
            f"{size_mb:.1f} MB, written in {time.perf_counter() - began:.1f} s"
        )

        rng = np.random.default_rng(args.seed)
        rates, usable = {}, items
        for fmt in ("raw", "jpeg"):
            cache = FrameCache(folder / f"frames-{fmt}", threads=args.threads, format=fmt)
            began = time.perf_counter()
            usable = usable_videos(items, cache, args.fps, args.short_side, print)
            stored = sum(p.stat().st_size for p in cache.root.rglob(f"*{SUFFIXES[fmt]}"))
            frames = sum(cache.num_frames(item.path, args.fps, args.short_side) for item in usable)
            hours = frames / args.fps / 3600
            print(f"fill     {fmt:<4} {len(usable)} videos in {time.perf_counter() - began:5.1f} s: "
                  f"{stored / 1e6:7.1f} MB for {hours * 60:.1f} min of video")
            print(f"cache_bytes_per_hour {fmt}: {stored / hours / 1e9:.2f} GB "
                  f"(short side {args.short_side}, {args.fps:g} fps, {args.content} content)")
            clips = TrainClips(
                usable, cache, args.fps, args.short_side, args.clip_frames, args.crop, seed=args.seed
            )
            draws, count = iter(range(10**9)), len(usable)
            rates[fmt] = timed(
                fmt, args.budget, args.max_clips,
                lambda clips=clips, draws=draws, count=count: clips[(next(draws), int(rng.integers(count)))],
            )
            if fmt == "jpeg":
                rates["loader"] = loader_rate(clips, args.budget, workers=2)

        decode_rate = timed(
            "decode",
            args.budget,
            args.max_clips,
            lambda: decode_clip(
                usable[int(rng.integers(len(usable)))],
                rng,
                args.fps,
                args.short_side,
                args.clip_frames,
                args.crop,
                args.threads,
            ),
        )
    print(f"cached_clips_per_s: {rates['loader']:.1f} (jpeg cache, {args.clip_frames}x{args.crop}x"
          f"{args.crop} clips, 2 loader workers)")
    print(f"raw_vs_jpeg: {rates['raw'] / rates['jpeg']:.1f}x (one process)")
    print(f"cache_vs_decode: {rates['jpeg'] / decode_rate:.1f}x")


def loader_rate(clips: TrainClips, budget_s: float, workers: int) -> float:
    """Clips per second through make_loader with `workers` processes, after the first batch
    (worker start-up is paid once per trial, not per clip)."""
    from mtsearch.data.clips import make_loader

    loader = make_loader(clips, batch_size=8, shuffle=True, workers=workers, device="cpu", seed=0)
    count, began, epoch = 0, None, 0
    while began is None or time.perf_counter() - began < budget_s:
        clips.set_epoch(epoch)
        for batch, _labels in loader:
            if began is None:
                began = time.perf_counter()
                continue
            count += len(batch)
            if time.perf_counter() - began >= budget_s:
                break
        epoch += 1
    elapsed = time.perf_counter() - began
    rate = count / elapsed
    print(f"loader   {count:6d} clips in {elapsed:6.2f} s = {rate:8.1f} clips/s ({workers} workers, jpeg)")
    return rate


if __name__ == "__main__":
    main()
