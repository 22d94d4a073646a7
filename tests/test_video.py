"""read_video / probe on real files written with PyAV: fps resampling, resizing, damaged input."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from conftest import frame_index

from mtsearch.data.video import probe, read_video, scaled_size
from mtsearch.errors import InvalidInput, VideoReadError


def indices(frames: np.ndarray) -> list[int]:
    return [frame_index(frame) for frame in frames]


@pytest.fixture(scope="module")
def video30(tmp_path_factory) -> Path:
    """30 frames at 30 fps whose frames carry their own index."""
    from conftest import write_pattern_video

    return write_pattern_video(tmp_path_factory.mktemp("v") / "v30.avi", 30, 30, (64, 80), "index")


def test_probe_reads_headers(video30: Path) -> None:
    info = probe(video30)
    assert (info.fps, info.num_frames, info.width, info.height) == (30.0, 30, 80, 64)
    assert info.duration_s == pytest.approx(1.0)


def test_source_rate_keeps_every_frame(video30: Path) -> None:
    frames = read_video(video30)
    assert frames.shape == (30, 64, 80, 3) and frames.dtype == np.uint8
    assert indices(frames) == list(range(30))
    assert indices(read_video(video30, fps=30)) == list(range(30))


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (15, list(range(0, 30, 2))),  # every second frame
        (10, list(range(0, 30, 3))),  # every third frame
        # t = k/12 s -> source frame 2.5k, nearest, ties to the later frame
        (12, [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]),
        (7.5, [0, 4, 8, 12, 16, 20, 24, 28]),
    ],
)
def test_resampling_by_timestamp(video30: Path, fps: float, expected: list[int]) -> None:
    frames = read_video(video30, fps=fps)
    assert frames.shape[0] == len(expected)
    assert indices(frames) == expected


def test_fps_above_source_is_invalid_input(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "v25.avi", num_frames=25, fps=25)
    assert len(read_video(path, fps=25)) == 25
    with pytest.raises(InvalidInput) as err:
        read_video(path, fps=30)
    assert err.value.key == "data.fps" and err.value.got == 30
    assert "above the video's frame rate" in str(err.value)


def test_ntsc_rate_counts_as_30(tmp_path: Path, make_video) -> None:
    path = make_video(tmp_path / "ntsc.avi", num_frames=30, fps=30000 / 1001)
    assert indices(read_video(path, fps=30)) == list(range(30))
    # 30 frames at 29.97 fps last 1.001 s, so t = 15/15 s is still inside: a 16th frame (the last).
    assert indices(read_video(path, fps=15)) == [*range(0, 30, 2), 29]


@pytest.mark.parametrize(
    ("suffix", "codec"), [("mkv", "mpeg4"), ("mp4", "libx264"), ("h264", "libx264")]
)
def test_other_containers_resample_alike(
    tmp_path: Path, make_video, suffix: str, codec: str
) -> None:
    """MKV's 1 ms clock rounds timestamps; raw H.264 has no timestamps and no frame count."""
    path = make_video(tmp_path / f"v.{suffix}", num_frames=30, fps=30, codec=codec)
    info = probe(path)
    assert (info.fps, info.num_frames) == (30.0, 30)
    assert indices(read_video(path, fps=10)) == list(range(0, 30, 3))
    assert indices(read_video(path, fps=12)) == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]


def test_short_side_resize_keeps_aspect(video30: Path) -> None:
    frames = read_video(video30, short_side=32, threads=1)
    assert frames.shape == (30, 32, 40, 3)
    assert indices(frames) == list(range(30))
    assert read_video(video30, short_side=128).shape == (30, 128, 160, 3)
    assert scaled_size(320, 240, 256) == (341, 256)
    assert scaled_size(240, 320, 256) == (256, 341)


def test_max_frames_stops_early(video30: Path) -> None:
    assert indices(read_video(video30, fps=10, max_frames=4)) == [0, 3, 6, 9]


def _damaged_files(folder: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {
        "empty": folder / "empty.avi",
        "garbage": folder / "garbage.avi",
        "text": folder / "text.avi",
        "header_only": folder / "header_only.avi",
        "folder": folder / "folder.avi",
        "missing": folder / "missing.avi",
    }
    files["empty"].write_bytes(b"")
    files["garbage"].write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
    )
    files["text"].write_text("not a video\n" * 50)
    files["header_only"].write_bytes(data[: len(data) // 50])
    files["folder"].mkdir()
    audio = folder / "audio.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    files["audio_only"] = audio
    return files


def test_damaged_files_raise_video_read_error(tmp_path: Path, make_video) -> None:
    good = make_video(tmp_path / "good.avi", num_frames=60, pattern="moving")
    for kind, path in _damaged_files(tmp_path, good).items():
        for read in (probe, read_video):
            with pytest.raises(VideoReadError) as err:
                read(path)
            assert err.value.path == path, kind
            assert err.value.reason, kind
    with pytest.raises(VideoReadError, match="no video stream"):
        read_video(tmp_path / "audio.wav")


def test_truncated_file_returns_the_frames_before_the_break(tmp_path: Path, make_video) -> None:
    good = make_video(tmp_path / "good.avi", num_frames=60, pattern="index")
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    frames = read_video(truncated)
    assert 0 < len(frames) < 60
    # The frame cut in half decodes with damaged pixels; the ones before it are intact.
    assert indices(frames[:-1]) == list(range(len(frames) - 1))
