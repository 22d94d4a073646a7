"""Video files through PyAV: writing (synthetic set, tests) and reading (see read_video).

Reading resamples by presentation timestamp (not by frame index, so variable-rate files and
files with a start offset work) and resizes in FFmpeg's scaler during the RGB conversion.
Every failure to read becomes `VideoReadError`, which callers turn into a skip with a warning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mtsearch.errors import InvalidInput, VideoReadError


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 30.0,
    codec: str = "mpeg4",
    bit_rate: int = 1_000_000,
) -> Path:
    """Encode uint8 (H, W, 3) RGB frames to a real video file (AVI/MP4/MKV by suffix).

    `mpeg4` in AVI is what HMDB-51/UCF-101 ship (xvid-like). Width and height must be even
    for yuv420p.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bit_rate
        first = True
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if first:
                stream.height, stream.width = frame.shape[:2]
                first = False
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if first:
            raise ValueError(f"{path}: no frames to write")
        container.mux(stream.encode())
    return path


# --- reading ---------------------------------------------------------------------------------

# A target rate within this relative distance of the source rate counts as the source rate
# (29.97 fps NTSC sources read at `data.fps: 30` keep every frame instead of failing).
RATE_TOLERANCE = 0.01


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns from the container headers (num_frames may be estimated, see probe)."""

    fps: float
    num_frames: int
    width: int
    height: int
    duration_s: float


def _reason(exc: BaseException) -> str:
    """One line for a decode failure (FFmpeg errors carry the path again; keep just the cause)."""
    if isinstance(exc, av.FFmpegError):
        text = exc.strerror or type(exc).__name__
        return f"{text} ({type(exc).__name__})"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a video file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


# Errors PyAV raises for unreadable input: FFmpeg errors (invalid data, EOF, ...), OS errors for
# missing or unreadable files, and ValueError/IndexError/UnicodeDecodeError for broken headers.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    av.FFmpegError,
    OSError,
    ValueError,
    IndexError,
    EOFError,
    UnicodeDecodeError,
)


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if path.is_dir():
        raise VideoReadError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file")
    try:
        return av.open(str(path), mode="r")
    except _READ_ERRORS as exc:
        raise VideoReadError(path, f"cannot open: {_reason(exc)}") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise VideoReadError(path, "no video stream")
    return container.streams.video[0]


def _stream_rate(stream: av.VideoStream) -> Fraction | None:
    """Frames per second from the headers.

    FFmpeg's guess first (what the ffmpeg tool uses: raw H.264 reports a made-up 25 fps average
    but the right guess), then the average rate, then the base rate.
    """
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def probe(path: str | Path) -> VideoInfo:
    """Read the headers only (no decoding), for indexes and `data check`.

    `num_frames` is the container's count when it has one, else duration x fps, else a count of
    the video packets (a demux pass, still no decoding). Raises VideoReadError.
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        rate = _stream_rate(stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise VideoReadError(path, "video stream has no frame size")
        duration_s = None
        if stream.duration is not None and stream.time_base is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / 1_000_000  # AV_TIME_BASE units
        num_frames = stream.frames or 0
        if num_frames <= 0 and duration_s and rate:
            num_frames = round(duration_s * rate)
        if num_frames <= 0:
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            except _READ_ERRORS as exc:
                raise VideoReadError(path, f"cannot read packets: {_reason(exc)}") from None
        if num_frames <= 0:
            raise VideoReadError(path, "no video frames")
        if rate is None:
            rate = Fraction(num_frames) / Fraction(duration_s) if duration_s else Fraction(30)
        if not duration_s:
            duration_s = float(num_frames / rate)
        return VideoInfo(float(rate), int(num_frames), int(width), int(height), float(duration_s))
    except _READ_ERRORS as exc:
        raise VideoReadError(path, _reason(exc)) from None
    finally:
        container.close()


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the shorter side set to `short_side`, aspect kept (rounded)."""
    if short_side is None or min(width, height) == short_side:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


class _NearestFrameResampler:
    """Picks, for each target time t_k = k / fps, the decoded frame whose timestamp is nearest.

    Streaming: frames arrive in presentation order; a frame is emitted once no later frame can be
    nearer to the pending target. Ties go to the later frame (FFmpeg's fps filter, round=near).
    Works in exact fractions so 30 -> 15 keeps frames 0, 2, 4, ... without float drift.
    """

    def __init__(self, target_fps: Fraction | None):
        self.step = None if target_fps is None else 1 / target_fps
        self.next_target = Fraction(0)
        self.prev_time: Fraction | None = None
        self.prev_frame = None

    def push(self, time: Fraction, frame) -> list:
        """Feed one frame (time relative to the first frame); returns the frames now decided."""
        if self.step is None:
            return [frame]
        out = []
        if self.prev_frame is not None:
            middle = (self.prev_time + time) / 2
            while self.next_target < middle:
                out.append(self.prev_frame)
                self.next_target += self.step
        self.prev_time, self.prev_frame = time, frame
        return out

    def finish(self, end_time: Fraction) -> list:
        """Targets before `end_time` (last frame's time + one source frame) get the last frame."""
        out = []
        if self.step is None or self.prev_frame is None:
            return out
        while self.next_target < end_time:
            out.append(self.prev_frame)
            self.next_target += self.step
        return out


def read_video(
    path: str | Path,
    fps: float | None = None,
    short_side: int | None = None,
    threads: int = 0,
    max_frames: int | None = None,
) -> np.ndarray:
    """Decode a video to uint8 RGB frames (T, H, W, 3), optionally resampled and resized.

    fps: target rate; frame k is the source frame nearest to time k / fps (presentation
      timestamps, or frame index / rate where a frame has none). None keeps every frame. Above
      the source rate (beyond RATE_TOLERANCE) is InvalidInput for `data.fps`.
    short_side: resize so the shorter side has this many pixels (aspect kept) in FFmpeg's
      scaler while converting to RGB, so no full-size RGB copy is made.
    threads: FFmpeg decoder threads (0: one per core; frame + slice threading).
    max_frames: stop after this many output frames (clip sampling without a cache).

    Unreadable files raise VideoReadError. A file that breaks part way (truncated) returns the
    frames decoded before the break; only a file with no decodable frame is an error.
    """
    path = Path(path)
    container = _open(path)
    try:
        return _decode(container, path, fps, short_side, threads, max_frames)
    finally:
        container.close()


def _decode(
    container: av.container.InputContainer,
    path: Path,
    fps: float | None,
    short_side: int | None,
    threads: int,
    max_frames: int | None,
) -> np.ndarray:
    stream = _video_stream(container, path)
    stream.codec_context.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    source_rate = _stream_rate(stream)
    resampler = _NearestFrameResampler(_target_rate(fps, source_rate, path))
    # Frame rate for frames without timestamps; if the headers have none either, 30 fps.
    frame_step = 1 / (source_rate or Fraction(30))
    time_base = stream.time_base

    frames: list[np.ndarray] = []
    converted: dict[int, np.ndarray] = {}  # decode number -> RGB, for a frame picked twice (VFR)
    size: tuple[int, int] | None = None
    first_pts: int | None = None
    last_time: Fraction | None = None
    decoded = 0
    broken: str | None = None

    def emit(picked: list) -> None:
        nonlocal size
        for number, frame in picked:
            if max_frames is not None and len(frames) >= max_frames:
                return
            if size is None:
                size = scaled_size(frame.width, frame.height, short_side)
            if number not in converted:
                converted.clear()  # only the latest frame can be picked again
                scaler = _interpolation(frame.width, frame.height, size)
                converted[number] = frame.to_ndarray(
                    format="rgb24", width=size[0], height=size[1], interpolation=scaler
                )
            frames.append(converted[number])

    try:
        for frame in container.decode(stream):
            if (
                frame.pts is not None
                and time_base is not None
                and first_pts is None
                and decoded == 0
            ):
                first_pts = frame.pts
            if frame.pts is not None and first_pts is not None and time_base is not None:
                time = Fraction(frame.pts - first_pts) * time_base
                # Containers with a coarse clock (MKV/WebM: 1 ms) round timestamps; snap them
                # back onto the frame grid so 30 -> 10 fps is exact there too.
                grid = round(time / frame_step) * frame_step
                if abs(time - grid) <= time_base / 2:
                    time = grid
            else:
                time = decoded * frame_step
            if last_time is not None and time <= last_time:
                time = last_time + frame_step  # repeated or missing timestamps: keep the order
            last_time = time
            emit(resampler.push(time, (decoded, frame)))
            decoded += 1
            if max_frames is not None and len(frames) >= max_frames:
                break
    except _READ_ERRORS as exc:
        broken = _reason(exc)
    if last_time is not None and (max_frames is None or len(frames) < max_frames):
        emit(resampler.finish(last_time + frame_step))
    if not frames:
        why = f"no decodable frames ({broken})" if broken else "no decodable frames"
        raise VideoReadError(path, why)
    return np.stack(frames)  # (T, H, W, 3) uint8


def _target_rate(fps: float | None, source_rate: Fraction | None, path: Path) -> Fraction | None:
    """The rate to resample to, or None to keep every frame (no fps, or the source's own rate).
    A rate above the source's is InvalidInput for `data.fps`."""
    target = None if fps is None else Fraction(fps).limit_denominator(1001)
    if target is not None and target <= 0:
        raise InvalidInput(None, "data.fps", "must be > 0", fps)
    if target is not None and source_rate is not None:
        if target > source_rate * (1 + RATE_TOLERANCE):
            raise InvalidInput(None, "data.fps",
                               f"above the video's frame rate ({float(source_rate):g} fps: {path.name})", fps)
        if target >= source_rate * (1 - RATE_TOLERANCE):
            return None  # the source rate itself: keep every frame
    return target


def _interpolation(width: int, height: int, size: tuple[int, int]) -> str | None:
    """AREA when shrinking (no aliasing from skipped pixels), BILINEAR otherwise."""
    if size == (width, height):
        return None
    return "AREA" if size[0] < width else "BILINEAR"
