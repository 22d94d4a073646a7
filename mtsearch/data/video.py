"""Video files through PyAV: writing (synthetic set, tests) and reading (see read_video)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


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
