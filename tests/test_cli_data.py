"""`mtsearch data synth` / `data check` end to end through `python -m mtsearch`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtsearch.data.synthetic import VERSION


def mtsearch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtsearch", *args], capture_output=True, text=True,
                          check=False, timeout=300, env={**os.environ, **(env or {})})


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "syn"
    result = mtsearch("data", "synth", str(root), "--classes", "3", "--videos-per-class", "4",
                      "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "wrote 12 videos (3 classes x 4)" in result.stdout
    assert "move_down" in result.stdout and "move_up" in result.stdout
    return root


def test_synth_then_check(synth_dir: Path) -> None:
    assert len(list(synth_dir.rglob("*.avi"))) == 12
    result = mtsearch("data", "check", "--dataset", "synthetic", str(synth_dir))
    assert result.returncode == 0, result.stderr
    assert "12 of 12 videos usable (train 6/6, val 3/3, test 3/3), 3 classes" in result.stdout
    # at 10 fps the 1.3-1.9 s videos have 13-19 frames: all shorter than a 40-frame clip, still usable
    result = mtsearch("data", "check", "--dataset", "synthetic", str(synth_dir), "--fps", "10",
                      "--clip-frames", "40", "--decode")
    assert result.returncode == 0, result.stderr
    assert "shorter than a clip of 40 frames at 10 fps (12)" in result.stdout


@pytest.mark.parametrize("args,needle", [
    (["--classes", "1"], "--classes: must be an integer from 2 to 10 (got 1)"),
    (["--videos-per-class", "0"], "--videos-per-class"),
])
def test_synth_rejects_bad_sizes(tmp_path: Path, args: list[str], needle: str) -> None:
    line = _one_error_line(mtsearch("data", "synth", str(tmp_path / "s"), *args))
    assert needle in line
    assert not (tmp_path / "s").exists()


def test_check_bad_layout_exits_2_with_one_line(tmp_path: Path, make_video) -> None:
    line = _one_error_line(mtsearch("data", "check", "--dataset", "hmdb51", str(tmp_path / "none")))
    assert str(tmp_path / "none") in line and "expected layout" in line
    make_video(tmp_path / "hmdb" / "run" / "a.avi", num_frames=3, size=(32, 32))
    line = _one_error_line(mtsearch("data", "check", str(tmp_path / "hmdb")))
    assert "testTrainMulti_7030_splits" in line and "missing split folder" in line
    line = _one_error_line(mtsearch("data", "check", "--dataset", "ucf101", str(tmp_path / "hmdb")))
    assert "ucfTrainTestlist" in line
    line = _one_error_line(mtsearch("data", "check", "--dataset", "ucf101"))
    assert "ROOT" in line and "--dataset synthetic" in line


def _hmdb_with_damage(root: Path, make_video, damage_all: bool) -> None:
    videos = {"clap": ["clap_a.avi", "clap_b.avi", "clap_c.avi"],
              "wave": ["wave_a.avi", "wave_b.avi"]}
    for cls, names in videos.items():
        for name in names:
            make_video(root / cls / name, num_frames=20, size=(32, 32))
        lines = [f"{name} {2 if i == 0 else 1} " for i, name in enumerate(names)]
        path = root / "testTrainMulti_7030_splits" / f"{cls}_test_split1.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    damaged = [root / "clap" / "clap_b.avi", root / "wave" / "wave_a.avi"]
    if damage_all:
        damaged = list(root.glob("*/*.avi"))
    for i, path in enumerate(damaged):
        data = path.read_bytes()
        path.write_bytes([b"", b"\x00garbage" * 50, data[: len(data) // 3]][i % 3])


def test_check_lists_damaged_videos_exits_0_while_some_usable(tmp_path: Path, make_video) -> None:
    root = tmp_path / "hmdb"
    _hmdb_with_damage(root, make_video, damage_all=False)
    result = mtsearch("data", "check", str(root))
    assert result.returncode == 0, result.stderr
    assert "unreadable videos (2)" in result.stdout
    assert "clap/clap_b.avi: empty file" in result.stdout
    assert "wave/wave_a.avi:" in result.stdout
    assert "3 of 5 videos usable (train 2/3, val 0/0, test 1/2)" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_exits_1_when_nothing_is_usable(tmp_path: Path, make_video) -> None:
    root = tmp_path / "hmdb"
    _hmdb_with_damage(root, make_video, damage_all=True)
    result = mtsearch("data", "check", "--dataset", "hmdb51", str(root))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "unreadable videos (5)" in result.stdout
    assert "error: no usable train and test videos" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_check_synthetic_without_root_builds_then_reuses_the_cached_set(tmp_path: Path) -> None:
    env = {"MTSEARCH_CACHE": str(tmp_path / "cache")}
    first = mtsearch("data", "check", "--dataset", "synthetic", env=env)
    assert first.returncode == 0, first.stderr
    assert "240 of 240 videos usable (train 132/132, val 36/36, test 72/72), 6 classes" in first.stdout
    built = tmp_path / "cache" / "synthetic" / f"v{VERSION}-seed0"
    assert str(built) in first.stdout
    stamp = (built / "synthetic.yaml").stat().st_mtime_ns
    again = mtsearch("data", "check", "--dataset", "synthetic", env=env)
    assert again.returncode == 0 and (built / "synthetic.yaml").stat().st_mtime_ns == stamp


def _official_hmdb(root: Path, make_video) -> None:
    """Two classes in HMDB-51's official naming: 5 source videos x 2 clips each, one source tested."""
    for cls in ("brush_hair", "shoot_ball"):
        lines = []
        for s, source in enumerate(["April_09", "Blonde_being_brushed", "Aussie_Tips", "Goodbye", "Wie_man"]):
            for k in range(2):
                name = f"{source}_{cls}_h_nm_np1_fr_goo_{k}.avi"
                make_video(root / cls / name, num_frames=16, size=(32, 32))
                lines.append(f"{name} {2 if s == 0 else 1} ")
        path = root / "testTrainMulti_7030_splits" / f"{cls}_test_split1.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


def test_check_shows_val_counts_and_lists_each_part(tmp_path: Path, make_video) -> None:
    """issue 12: `data check` has a val column; `--show-split` lists a part; sources never straddle."""
    root = tmp_path / "hmdb"
    _official_hmdb(root, make_video)
    result = mtsearch("data", "check", str(root), "--val-fraction", "0.25")
    assert result.returncode == 0, result.stderr
    assert "val" in result.stdout and "whole source videos that come closest to" in result.stdout
    parts = {}
    for part in ("train", "val", "test"):
        listed = mtsearch("data", "check", str(root), "--val-fraction", "0.25", "--show-split", part)
        assert listed.returncode == 0, listed.stderr
        parts[part] = listed.stdout.split()
    assert len(parts["train"]) + len(parts["val"]) == 16 and len(parts["test"]) == 4
    assert len(parts["val"]) == 4  # one source (2 clips) of each class's 8 training clips

    def sources(names: list[str]) -> set[str]:
        return {name.split("/")[1].rsplit("_", 7)[0] + name.split("/")[0] for name in names}

    assert not sources(parts["train"]) & sources(parts["val"])
    again = mtsearch("data", "check", str(root), "--val-fraction", "0.25", "--show-split", "val")
    assert again.stdout.split() == parts["val"]


def test_check_keeps_ucf_groups_whole(tmp_path: Path, make_video) -> None:
    """UCF-101's official layout: no gXX group is in both train and val, and a group number is
    validation in every class or in none."""
    root = tmp_path / "UCF-101"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    classes = ["ApplyEyeMakeup", "YoYo"]
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    train, test = [], []
    for i, cls in enumerate(classes, 1):
        for group in range(1, 9):
            for clip in (1, 2):
                name = f"{cls}/v_{cls}_g{group:02d}_c{clip:02d}.avi"
                make_video(root / name, num_frames=16, size=(32, 32))
                (test if group == 1 else train).append(name if group == 1 else f"{name} {i}")
    (lists / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")
    (lists / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    parts = {part: mtsearch("data", "check", str(root), "--show-split", part).stdout.split()
             for part in ("train", "val")}
    # 7 group numbers of 4 clips (2 a class), 28 clips: the target 0.2 * 28 = 5.6 -> 6 lies between
    # one number (4 clips) and two (8); the tie goes to the smaller, so one number in both classes
    assert len(parts["val"]) == 4 and len(parts["train"]) == 24
    assert len({name.rsplit("_g", 1)[1][:2] for name in parts["val"]}) == 1

    def groups(names: list[str]) -> set[str]:
        return {name.rsplit("_", 1)[0] for name in names}

    assert not groups(parts["train"]) & groups(parts["val"])
    table = mtsearch("data", "check", str(root))
    assert table.returncode == 0 and "whole gXX groups that come closest to" in table.stdout
