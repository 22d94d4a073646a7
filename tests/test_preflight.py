"""Values a space allows but no video can satisfy are refused before anything starts (issue 9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtsearch.data.video import write_video
from mtsearch.errors import InvalidInput
from mtsearch.search.preflight import check_fps
from mtsearch.space import load_space

SPACE = """\
name: fps
base: {{data.dataset: list, data.root: {root}, model.preset: tiny, optim.epochs: 1, device: cpu}}
search: {{num_samples: 2}}
space:
  data.fps: {dist}
"""


@pytest.fixture(scope="module")
def mixed_rates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `list` dataset of four real videos: two at 30 fps, two at 15 fps."""
    root = tmp_path_factory.mktemp("mixed")
    frames = [np.full((32, 32, 3), 16 * i, np.uint8) for i in range(16)]
    lines = []
    for i, fps in enumerate((30, 30, 15, 15)):
        write_video(root / f"v{i}.avi", frames, fps=fps)
        lines.append(f"v{i}.avi {i % 2}")
    (root / "train.txt").write_text("\n".join(lines[:3]) + "\n")
    (root / "test.txt").write_text(lines[3] + "\n")
    return root


def space(tmp_path: Path, root: Path, dist: str) -> Path:
    path = tmp_path / "fps.yaml"
    path.write_text(SPACE.format(root=root, dist=dist))
    return path


def test_an_fps_above_every_video_is_one_error_line_and_nothing_written(
    tmp_path: Path, mixed_rates: Path
) -> None:
    path = space(tmp_path, mixed_rates, "{choice: [15, 240]}")
    result = subprocess.run(
        [sys.executable, "-m", "mtsearch", "run", str(path), "--trials-dir", str(tmp_path / "trials")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {path}: space.data.fps: 240 fps is above the frame rate of every video in "
        f"{mixed_rates} (the highest is 30 fps) (got 240)"
    ]
    assert not (tmp_path / "trials").exists()


def test_an_fps_above_some_videos_is_refused_naming_how_many(tmp_path: Path, mixed_rates: Path) -> None:
    """The trainer stops at the first video slower than data.fps, so run refuses it as train does."""
    check_fps(load_space(space(tmp_path, mixed_rates, "{choice: [10, 15]}"), "search"))  # every video >= 15
    with pytest.raises(InvalidInput) as caught:
        check_fps(load_space(space(tmp_path, mixed_rates, "{choice: [15, 25]}"), "search"))
    assert caught.value.key == "space.data.fps" and caught.value.got == 25
    assert caught.value.what == (f"25 fps is above the frame rate of 2 of 4 videos in {mixed_rates} "
                                 "(the lowest is 15 fps); a trial stops at the first such video")


def test_continuous_bounds_are_checked_at_both_ends(tmp_path: Path, mixed_rates: Path) -> None:
    check_fps(load_space(space(tmp_path, mixed_rates, "{uniform: [10, 15]}"), "search"))
    with pytest.raises(InvalidInput, match="22 fps is above the frame rate of 2 of 4 videos"):
        check_fps(load_space(space(tmp_path, mixed_rates, "{uniform: [10, 22]}"), "search"))
    with pytest.raises(InvalidInput, match="31 fps is above the frame rate of every video"):
        check_fps(load_space(space(tmp_path, mixed_rates, "{uniform: [31, 60]}"), "search"))
