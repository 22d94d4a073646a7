"""How one frame-cache entry stores a video's decoded frames: JPEG per frame, or raw uint8.

- `jpeg` (the default, `data.cache_format`): each frame a baseline JPEG (libjpeg-turbo through
  simplejpeg, 4:2:0, `data.cache_quality`, default 90), all in one file:
  `MAGIC | u32 header length | JSON header | u64 offsets (frames + 1) | JPEG bytes`.
  A clip reads only its own frames (one contiguous read for a contiguous clip) and decodes them
  straight into the clip's memory: about 0.4 ms per 341x256 frame on one core (Pillow: 0.7, with
  its crop copy 0.9), at 1/15-1/25 of the raw size. The accurate DCT and upsampling, so a frame
  decodes to the same pixels on every machine.
- `raw`: a `.npy` file of uint8 (T, H, W, 3), memory-mapped: no decoding at all, H x W x 3 bytes a
  frame (about 28 GB per hour of 4:3 video at short side 256).

Both readers hand out fresh, writable clips and hold no file open between reads, so a loader
worker can serve any number of videos, and every process shares the files through the page cache.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Protocol

import numpy as np

FORMATS: tuple[str, ...] = ("jpeg", "raw")
SUFFIXES: dict[str, str] = {"jpeg": ".jpgs", "raw": ".npy"}
DEFAULT_FORMAT, DEFAULT_QUALITY = "jpeg", 90
MAGIC = b"MTSJPG1\n"
_LENGTH = struct.Struct("<I")


class StoredFrames(Protocol):
    """A cached video: `shape` (T, H, W, 3) and crops of chosen frames."""

    shape: tuple[int, int, int, int]

    def read(self, indices: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """Frames `indices` cropped to (rows, cols): a new uint8 (len(indices), h, w, 3) array."""
        ...


# --- raw ----------------------------------------------------------------------------------------

class RawFrames:
    """A `.npy` entry, memory-mapped (only the header is read until frames are asked for)."""

    def __init__(self, path: str | Path):
        self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        self.shape = tuple(int(n) for n in self.array.shape)

    def read(self, indices: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        if len(indices) > 1 and np.all(np.diff(indices) == 1):  # one slice of the memmap
            clip = self.array[indices[0] : indices[-1] + 1, rows, cols]
        else:
            clip = self.array[indices][:, rows, cols]
        # np.array copies: the clip must not be a view of the cache file
        return np.array(clip, order="C")


def raw_bytes(frames: np.ndarray) -> list[bytes | memoryview]:
    """The `.npy` file of `frames` as pieces to write (header, then the array's own memory)."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(frames))
    return [header.getvalue(), memoryview(frames).cast("B")]


# --- jpeg ---------------------------------------------------------------------------------------

def jpeg_bytes(frames: np.ndarray, quality: int) -> list[bytes]:
    """The `.jpgs` file of `frames` (T, H, W, 3) as pieces to write."""
    import simplejpeg

    encoded = [simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=int(quality), colorspace="RGB",
                                      colorsubsampling="420") for frame in frames]
    count, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    header = json.dumps({"frames": count, "height": height, "width": width,
                         "quality": int(quality)}).encode()
    offsets = np.zeros(count + 1, dtype="<u8")
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return [MAGIC, _LENGTH.pack(len(header)), header, offsets.tobytes(), *encoded]


class JpegFrames:
    """A `.jpgs` entry: the header and offsets are read once; each `read` opens the file, reads
    the bytes of the frames it needs and decodes only those."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        with open(self.path, "rb") as fh:
            start = fh.read(len(MAGIC) + _LENGTH.size)
            if len(start) < len(MAGIC) + _LENGTH.size or not start.startswith(MAGIC):
                raise ValueError(f"{self.path}: not a JPEG frame-cache entry")
            (length,) = _LENGTH.unpack(start[len(MAGIC):])
            header = json.loads(fh.read(length))
            count = int(header["frames"])
            self.offsets = np.frombuffer(fh.read(8 * (count + 1)), dtype="<u8").astype(np.int64)
        if len(self.offsets) != count + 1:
            raise ValueError(f"{self.path}: truncated JPEG frame-cache entry")
        self.data_start = len(MAGIC) + _LENGTH.size + length + 8 * (count + 1)
        self.shape = (count, int(header["height"]), int(header["width"]), 3)

    def read(self, indices: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        import simplejpeg

        indices = np.asarray(indices, dtype=np.int64)
        wanted = np.unique(indices)
        first, last = int(wanted[0]), int(wanted[-1])
        begin, end = int(self.offsets[first]), int(self.offsets[last + 1])
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, end - begin, self.data_start + begin)
        finally:
            os.close(fd)
        if len(data) != end - begin:
            raise ValueError(f"{self.path}: truncated JPEG frame-cache entry")
        view = memoryview(data)
        frame_rows, frame_cols = range(*rows.indices(self.shape[1])), range(*cols.indices(self.shape[2]))
        out = np.empty((len(indices), len(frame_rows), len(frame_cols), 3), dtype=np.uint8)
        whole = frame_rows == range(self.shape[1]) and frame_cols == range(self.shape[2])
        scratch = None if whole else np.empty(self.shape[1:], dtype=np.uint8)
        for index in wanted.tolist():
            a, b = int(self.offsets[index]) - begin, int(self.offsets[index + 1]) - begin
            places = np.flatnonzero(indices == index)
            target = out[places[0]] if whole else scratch
            simplejpeg.decode_jpeg(view[a:b], colorspace="RGB", buffer=target)
            if not whole:
                out[places[0]] = scratch[rows, cols]
            out[places[1:]] = out[places[0]]  # a frame a clip repeats (a padded tail) decodes once
        return out


def open_frames(path: str | Path) -> StoredFrames:
    """The reader for an entry, chosen by its suffix."""
    return JpegFrames(path) if str(path).endswith(SUFFIXES["jpeg"]) else RawFrames(path)
