"""The synthetic dataset: real files, HMDB-51 layout, deterministic, safe to build concurrently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtsearch.config import TrialConfig
from mtsearch.data import synthetic, synthetic_video
from mtsearch.data.datasets import index_for_config, load_index
from mtsearch.data.synthetic import CLASS_NAMES, ensure_synthetic, render_video, write_synthetic
from mtsearch.data.video import probe, read_video
from mtsearch.errors import InvalidInput


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("syn") / "a", classes=3, videos_per_class=4,
                           seed=0, workers=1)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_layout_and_video_format(small_set: Path) -> None:
    index = load_index("synthetic", small_set, 1)
    assert index.classes == sorted(CLASS_NAMES[:3])
    assert len(index.train) == 9 and len(index.test) == 3  # 4 per class: 3 train, 1 test
    for label in range(3):
        assert sum(v.label == label for v in index.test) == 1
    info = probe(index.train[0].path)
    assert (info.width, info.height, round(info.fps)) == (112, 112, 30)
    assert synthetic_video.FRAMES_RANGE[0] <= info.num_frames <= synthetic_video.FRAMES_RANGE[1]
    frames = read_video(index.train[0].path)
    assert frames.shape[1:] == (112, 112, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # textured, not flat
    split = (small_set / "testTrainMulti_7030_splits" / "move_up_test_split1.txt").read_bytes()
    lines = split.decode().splitlines()
    assert len(lines) == 4 and all(line.endswith(" ") for line in lines)  # like the official files
    tests = [load_index("synthetic", small_set, k).test for k in (1, 2, 3)]
    partitions = {tuple(v.name for v in test) for test in tests}
    assert len(partitions) > 1  # each split is its own partition


def test_same_seed_same_files_other_seed_other_frames(small_set: Path, tmp_path: Path) -> None:
    again = write_synthetic(tmp_path / "b", classes=3, videos_per_class=4, seed=0, workers=2)
    first, second = _tree(small_set), _tree(again)
    assert first.keys() == second.keys()
    for name in first:  # byte-identical index and videos, whatever the number of workers
        assert first[name] == second[name], name
    video = "move_down/move_down_002.avi"
    np.testing.assert_array_equal(read_video(small_set / video), read_video(again / video))
    other = write_synthetic(tmp_path / "c", classes=3, videos_per_class=4, seed=1, workers=1)
    a, b = read_video(small_set / video), read_video(other / video)
    assert a.shape != b.shape or np.abs(a.astype(int) - b).mean() > 5


def test_reversed_class_is_the_forward_trajectory_backwards() -> None:
    """A reversed class plays its partner's kind of trajectory backwards, frame for frame."""
    assert synthetic_video.MOTION_PAIRS == (("move_down", "move_up"), ("grow", "shrink"),
                                      ("converge", "diverge"))
    for forward_name, backward_name in synthetic_video.MOTION_PAIRS:
        forward = synthetic_video.main_tracks(CLASS_NAMES.index(forward_name), 50,
                                        np.random.default_rng(5))
        backward = synthetic_video.main_tracks(CLASS_NAMES.index(backward_name), 50,
                                         np.random.default_rng(5))
        assert len(forward) == len(backward) >= 1
        for f, b in zip(forward, backward):
            for key in ("x", "y", "angle", "scale"):
                np.testing.assert_array_equal(f[key][::-1], b[key])
    for index in range(len(CLASS_NAMES)):  # every object stays in or right next to the frame
        for track in synthetic_video.main_tracks(index, 56, np.random.default_rng(index)):
            assert all(len(track[key]) == 56 for key in ("x", "y", "angle", "scale"))
            reach = synthetic_video._reach(track["look"]["radius"] * max(1.0, track["scale"].max()))
            for axis in ("x", "y"):
                assert track[axis].min() >= -reach and track[axis].max() <= synthetic_video.SIZE + reach
    frames = render_video(CLASS_NAMES.index("shrink"), 0, seed=0)
    assert frames.shape[1:] == (112, 112, 3)


def test_motion_is_fast_and_lasts_the_whole_video() -> None:
    """Several px/frame on the main objects in every 13-frame window (the tiny trunk's cells are
    8 px), and the class motion keeps its sign: down stays down, grow keeps growing."""
    tracks = synthetic_video.main_tracks(CLASS_NAMES.index("move_down"), 56, np.random.default_rng(1))
    for track in tracks:
        step = np.diff(track["y"])
        moving = step[np.abs(step) < synthetic_video.SIZE / 2]  # leave out the wrap-around jumps
        assert len(moving) >= 50 and np.all(moving >= synthetic_video.SPEED_RANGE[0])
    tracks = synthetic_video.main_tracks(CLASS_NAMES.index("grow"), 56, np.random.default_rng(2))
    growing = np.concatenate([np.diff(track["scale"]) for track in tracks])
    assert np.mean(growing > 0) > 0.8  # shrinking only at a respawn
    tracks = synthetic_video.main_tracks(CLASS_NAMES.index("converge"), 56, np.random.default_rng(3))
    gap = np.hypot(tracks[0]["x"] - tracks[1]["x"], tracks[0]["y"] - tracks[1]["y"])
    assert np.mean(np.diff(gap) < 0) > 0.8
    for window in range(0, 56 - 13, 13):  # every clip shows the two objects closing in
        assert np.any(np.diff(gap[window : window + 13]) < -2 * synthetic_video.SPEED_RANGE[0])


def test_no_class_has_a_left_right_or_turning_sense() -> None:
    """Training clips are mirrored left-right with p = 0.5 under the same label, so a class may
    not depend on left vs right or clockwise vs anticlockwise: both senses occur in every class."""
    def senses(name: str, key: str) -> set[float]:
        out = set()
        for video in range(40):
            rng = np.random.default_rng(video)
            track = synthetic_video.main_tracks(CLASS_NAMES.index(name), 20, rng)[0]
            step = np.diff(track[key])
            step = step[np.abs(step) < synthetic_video.SIZE / 2]  # leave out the wrap-around jumps
            out.add(float(np.sign(np.median(step))))
        return out

    assert senses("slide", "x") == {-1.0, 1.0}
    assert senses("spin", "angle") == {-1.0, 1.0}
    assert {-1.0, 1.0} <= senses("move_down", "x")  # the slight sideways drift, too


def test_invalid_sizes_and_foreign_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="--classes"):
        write_synthetic(tmp_path / "x", classes=1)
    with pytest.raises(InvalidInput, match="--classes"):
        write_synthetic(tmp_path / "x", classes=len(CLASS_NAMES) + 1)
    with pytest.raises(InvalidInput, match="--videos-per-class"):
        write_synthetic(tmp_path / "x", classes=2, videos_per_class=1)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(InvalidInput, match="not empty"):
        write_synthetic(foreign, classes=2, videos_per_class=2)
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_rewrite_replaces_an_earlier_set(small_set: Path, tmp_path: Path) -> None:
    target = write_synthetic(tmp_path / "d", classes=3, videos_per_class=4, workers=1)
    write_synthetic(target, classes=2, videos_per_class=2, workers=1)
    assert sorted(p.name for p in target.iterdir() if p.is_dir()) == [
        "move_down", "move_up", "testTrainMulti_7030_splits"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


_BUILD = """
import sys
from mtsearch.data.synthetic import ensure_synthetic
print(ensure_synthetic(sys.argv[1]))
"""


@pytest.mark.slow
def test_ensure_synthetic_two_processes_build_one_set(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    roots = {out.strip() for out, _ in outputs}
    assert len(roots) == 1
    root = Path(roots.pop())
    assert root == cache / "synthetic" / f"v{synthetic.VERSION}-seed0"
    leftovers = [p.name for p in root.parent.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [root.name]  # no half-built or duplicate sets
    index = load_index("synthetic", root, 1)
    classes, per_class = synthetic.DEFAULT_CLASSES, synthetic.DEFAULT_VIDEOS_PER_CLASS
    num_test = round(synthetic.TEST_FRACTION * per_class)
    assert index.num_classes == classes
    assert len(index.train) == classes * (per_class - num_test)
    assert len(index.test) == classes * num_test
    assert all(v.path.stat().st_size > 0 for v in index.train + index.test)
    # reused afterwards, and what data.dataset: synthetic resolves to
    mtime = (root / synthetic.INFO_FILE).stat().st_mtime_ns
    assert ensure_synthetic(cache) == root
    cfg = TrialConfig.from_mapping({"data": {"cache_dir": str(cache)}})
    assert index_for_config(cfg).root == root
    assert (root / synthetic.INFO_FILE).stat().st_mtime_ns == mtime
