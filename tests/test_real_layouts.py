"""Kinetics and Something-Something v2 as they are distributed, written small with PyAV (H.264
`.mp4` and VP9 `.webm` at 12 fps), with deleted and damaged clips: the indexes, `data check`,
flip pairs, the test protocols and one `train` epoch on each; a full cache disk."""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from tmpfs import grow, mounted_tmpfs

from mtsearch.config import TrialConfig
from mtsearch.data.annotated_layouts import ssv2_class
from mtsearch.data.cache import CacheFull, FrameCache
from mtsearch.data.clips import TestClips, TrainClips
from mtsearch.data.datasets import detect_layout, load_index
from mtsearch.data.flips import flip_targets, mirror_pairs, one_sided
from mtsearch.data.video import probe, write_video
from mtsearch.errors import InvalidInput, StorageFull
from mtsearch.train.evaluate import mean_class_accuracy

KINETICS_CLASSES = ["abseiling", "playing guitar (electric)", "tying tie"]
SSV2_CLASSES = ["Pushing something from left to right", "Pushing something from right to left",
                "Putting something on a surface", "Turning the camera left while filming something"]


def _frames(label: int, count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A bright block that moves one way per class over a gradient."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    frames[:] = np.linspace(30, 90, width, dtype=np.uint8)[None, None, :, None]
    for t in range(count):
        x = (4 + 3 * t * (1 if label % 2 == 0 else -1)) % (width - 12)
        y = 8 + 10 * (label % 3)
        frames[t, y : y + 12, x : x + 12] = (220, 60 + 50 * label, 40)
    return frames


def _damage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00broken" * 300)


@pytest.fixture(scope="module")
def kinetics_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 3 train clips (one deleted), 1 val clip each (one damaged), a test.csv; clips
    flat in train/, inside <label>/ folders in val/."""
    root = tmp_path_factory.mktemp("kinetics")
    (root / "annotations").mkdir()
    rows: dict[str, list[list[str]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(KINETICS_CLASSES):
        for n in range(4 if label == 0 else 3):
            rows["train"].append([name, f"yt{label}tr{n}-_x", str(10 * n), str(10 * n + 10), "train"])
        rows["val"].append([name, f"yt{label}va", "0", "10", "val"])
    rows["test"] = [["", "ytte0", "0", "10", "test"], ["", "ytte1", "5", "15", "test"]]
    for part, lines in rows.items():
        with open(root / "annotations" / f"{part}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
            writer.writerows([line + ["0"] for line in lines])
    for part in ("train", "val"):
        for name, ytid, start, end, _ in rows[part]:
            stem = f"{ytid}_{int(start):06d}_{int(end):06d}.mp4"
            folder = root / part / (name.replace(" ", "_") if part == "val" else "")
            if ytid == "yt0tr3-_x":
                continue  # deleted from YouTube: listed, never downloaded
            if ytid == "yt2va":
                _damage(folder / stem)
                continue
            label = KINETICS_CLASSES.index(name)
            write_video(folder / stem, _frames(label, 20), fps=25, codec="libx264")
    return root


@pytest.fixture(scope="module")
def ssv2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes (0 and 1 mirrored, 3 one-sided), 3 train videos each (one deleted), 1 validation
    video each (one damaged), a test list of ids; VP9 .webm at 12 fps."""
    root = tmp_path_factory.mktemp("ssv2")
    labels = root / "labels"
    labels.mkdir()
    (labels / "something-something-v2-labels.json").write_text(
        json.dumps({name: str(i) for i, name in enumerate(SSV2_CLASSES)}))
    templates = ["Pushing [something] from left to right", "Pushing [something] from right to left",
                 "Putting [something] on a surface", "Turning the camera left while filming [something]"]
    entries: dict[str, list[dict]] = {"train": [], "validation": []}
    number = 1000
    for label, template in enumerate(templates):
        for part, count in (("train", 3), ("validation", 1)):
            for _ in range(count):
                number += 1
                entries[part].append({"id": str(number), "label": template.replace("[something]", "a cup"),
                                      "template": template, "placeholders": ["a cup"]})
                video = root / "20bn-something-something-v2" / f"{number}.webm"
                if number == 1002:
                    continue  # listed, not in this copy
                if part == "validation" and label == 2:
                    _damage(video)
                    continue
                write_video(video, _frames(label, 16), fps=12, codec="libvpx-vp9", bit_rate=400_000)
    for part, items in entries.items():
        (labels / f"something-something-v2-{part}.json").write_text(json.dumps(items))
    (labels / "something-something-v2-test.json").write_text(json.dumps([{"id": "9001"}, {"id": "9002"}]))
    return root


def test_kinetics_index_as_distributed(kinetics_root: Path) -> None:
    warnings: list[str] = []
    index = load_index("kinetics", kinetics_root, warn=warnings.append)
    assert detect_layout(kinetics_root) == "kinetics"
    assert index.classes == sorted(KINETICS_CLASSES)  # quoted labels with spaces and parentheses
    assert len(index.train) == 9 and len(index.test) == 3  # val.csv is the test part
    assert index.missing == ["train/yt0tr3-_x_000030_000040.mp4"]
    assert index.listed_count == 13 and index.unused == {"annotations/test.csv": 2}
    assert len(warnings) == 1 and warnings[0].startswith("1 listed video is missing on disk")
    val = {item.name: item.label for item in index.test}
    assert val["val/abseiling/yt0va_000000_000010.mp4"] == 0  # found inside its <label>/ folder
    assert probe(index.train[0].path).fps == pytest.approx(25)


def test_kinetics_bad_csv_names_file_and_line(kinetics_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kinetics_root / "annotations", root / "annotations")
    (root / "annotations" / "val.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                                  "surfing,abc,0,10,val\n")
    with pytest.raises(InvalidInput, match=r"val.csv: line 2: label is not a class of train.csv"):
        load_index("kinetics", root)
    (root / "annotations" / "train.csv").write_text("name,id\nx,y\n")
    with pytest.raises(InvalidInput, match=r"train.csv: line 1: expected the header"):
        load_index("kinetics", root)


def test_ssv2_index_classes_and_flip_pairs(ssv2_root: Path) -> None:
    index = load_index("ssv2", ssv2_root)
    assert detect_layout(ssv2_root) == "ssv2"
    assert index.classes == SSV2_CLASSES
    assert ssv2_class("Putting [something] on  [something]") == "Putting something on something"
    assert len(index.train) == 11 and len(index.test) == 4
    assert index.missing == ["20bn-something-something-v2/1002.webm"]
    assert index.unused == {"labels/something-something-v2-test.json": 2}
    assert mirror_pairs(index.classes) == [(0, 1)]
    assert one_sided(index.classes) == [3]  # "left" with no "right" class: never flipped
    assert flip_targets(index.classes, "swap") == [1, 0, 2, None]
    assert flip_targets(index.classes, "on") == [0, 1, 2, 3]
    assert flip_targets(index.classes, "off") == [None] * 4


def test_ssv2_defaults_source_rate_swap_and_views() -> None:
    cfg = TrialConfig.from_mapping({"data.dataset": "ssv2"})
    assert cfg.fps is None and cfg.flip == "swap" and cfg.views == "2x3" and cfg.val_views == "1x1"
    resolved = cfg.resolved()
    assert resolved.data.fps == "source" and resolved.resolved() == resolved
    kinetics = TrialConfig.from_mapping({"data.dataset": "kinetics", "eval.views": "4x1"})
    assert kinetics.fps is None and kinetics.views == "4x1" and kinetics.val_views == "4x1"
    hmdb = TrialConfig.from_mapping({"data.dataset": "hmdb51"})
    assert hmdb.fps == 30.0 and hmdb.flip == "on" and hmdb.views == hmdb.val_views == "clips"
    with pytest.raises(InvalidInput, match="eval.views: must be clips"):
        TrialConfig.from_mapping({"eval.views": "3by2"})
    with pytest.raises(InvalidInput, match="data.flip"):
        TrialConfig.from_mapping({"data.flip": "mirror"})


def test_flipped_training_clips_take_the_mirrored_class(ssv2_root: Path, tmp_path: Path) -> None:
    index = load_index("ssv2", ssv2_root)
    items = [i for i in index.train if i.label in (0, 3)]
    cache = FrameCache(tmp_path / "frames")

    def clips(mode: str | None) -> TrainClips:
        targets = None if mode is None else flip_targets(index.classes, mode)
        return TrainClips(items, cache, None, 48, 8, 32, seed=1, flip_to=targets)

    plain, swapped, unflipped = clips(None), clips("swap"), clips("off")
    flips = 0
    for epoch in range(4):
        for video, item in enumerate(items):
            (clip, label), (clip2, label2), (still, _) = (d[(epoch, video)] for d in (plain, swapped, unflipped))
            flipped = not torch.equal(clip, still)  # the same draw; `on` flipped this one
            assert label == item.label and (not flipped or torch.equal(clip, still.flip(2)))
            if item.label == 0:  # its mirror is class 1
                assert torch.equal(clip2, clip) and label2 == (1 if flipped else 0)
                flips += flipped
            else:  # class 3 names a side without a mirrored class: never flipped
                assert torch.equal(clip2, still) and label2 == 3
    assert flips > 0


def test_multi_view_test_clips(ssv2_root: Path, tmp_path: Path) -> None:
    index = load_index("ssv2", ssv2_root)
    cache = FrameCache(tmp_path / "frames")
    items = index.test[:2]
    clips = TestClips(items, cache, None, 48, 8, 32, views="2x3")
    assert clips.views == "2x3"
    frames = cache.num_frames(items[0].path, None, 48)  # 16 at 12 fps: starts 0 and 8
    for video in range(2):
        mine = [(s, c) for v, s, c in clips.clips if v == video]
        assert sorted({s for s, _ in mine}) == [0, frames - 8]
        assert sorted({c for _, c in mine}) == [(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)]  # along the width
    left, centre, right = (clips[i][0] for i in range(3))
    assert not torch.equal(left, right) and left.shape == centre.shape == (8, 32, 32, 3)
    one = TestClips(items, cache, None, 48, 8, 32, views="1x1")
    assert [(s, c) for _, s, c in one.clips] == [((frames - 8) // 2, (0.5, 0.5))] * 2


def test_mean_class_accuracy_weighs_every_class_the_same() -> None:
    scores = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1], [1, 0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # class 0: 3 of 3, class 1: 1 of 2 -> (1 + 0.5) / 2, where Hit@1 is 4 / 5
    assert mean_class_accuracy(scores, labels) == pytest.approx(0.75)


def mtsearch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtsearch", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("dataset", ["kinetics", "ssv2"])
def test_data_check_counts_listed_missing_and_damaged(dataset: str, kinetics_root: Path, ssv2_root: Path,
                                                      tmp_path: Path) -> None:
    root = kinetics_root if dataset == "kinetics" else ssv2_root
    result = mtsearch("data", "check", "--dataset", dataset, str(root), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    listed, usable = (13, 11) if dataset == "kinetics" else (16, 14)
    assert f"listed {listed}: 1 missing on disk, 1 unreadable, {usable} usable" in out, out
    assert ("yt0tr3-_x_000030_000040.mp4" if dataset == "kinetics" else "1002.webm") in out
    assert "frame cache at source fps, short side 256, jpeg q90 (measured on " in out
    if dataset == "ssv2":
        assert "flip pairs (1; data.flip: swap" in out and "default here: swap" in out
        assert "Pushing something from left to right <-> Pushing something from right to left" in out
        assert "never flipped under swap: Turning the camera left while filming something" in out
    else:
        assert "flip pairs" not in out


def _config(path: Path, dataset: str, root: Path, cache: Path, **extra: object) -> Path:
    cfg = {"model.preset": "tiny", "data.dataset": dataset, "data.root": str(root),
           "data.cache_dir": str(cache), "data.crop": 32, "data.short_side": 40,
           "data.clip_frames": 8, "track.patch": 16, "track.frame_gap": 2, "track.past_frames": 2,
           "optim.batch_size": 4, "optim.epochs": 1, "eval.every": 1, "device": "cpu", "threads": 1,
           **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("dataset", ["kinetics", "ssv2"])
def test_one_train_epoch_on_each_layout(dataset: str, kinetics_root: Path, ssv2_root: Path,
                                        tmp_path: Path) -> None:
    root = kinetics_root if dataset == "kinetics" else ssv2_root
    config = _config(tmp_path / "c.yaml", dataset, root, tmp_path / "cache")
    result = mtsearch("train", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipping" in result.stderr and "Traceback" not in result.stderr  # the damaged clip
    (row,) = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    for key in ("val_hit1", "val_mean_class_acc", "test_hit1", "test_mean_class_acc"):
        assert row[key] is not None and 0 <= row[key] <= 1, key
    assert list((tmp_path / "cache" / "frames").rglob("*.jpgs"))


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 kB tmpfs (mounted as root; skipped with the reason where that is not allowed)."""
    with mounted_tmpfs(tmp_path / "disk", "200k") as disk:
        yield disk


@pytest.mark.parametrize("fmt", ["jpeg", "raw"])
def test_a_full_cache_disk_is_one_error_line_naming_data_cache_dir(fmt: str, kinetics_root: Path,
                                                                   tmp_path: Path, tiny_disk: Path) -> None:
    config = _config(tmp_path / "c.yaml", "kinetics", kinetics_root, tiny_disk,
                     **{"data.cache_format": fmt, "data.short_side": 128, "data.crop": 96, "track.patch": 32})
    result = mtsearch("train", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith(f"error: disk full on data.cache_dir {tiny_disk / 'frames'} (needs "), errors
    assert " MB free); free space there or set data.cache_dir to a larger disk, then: mtsearch train " in errors[0]
    assert not list(tiny_disk.rglob("*.tmp")) and not list(tiny_disk.rglob(".*.tmp"))


def test_a_cache_fault_crosses_processes_with_what_it_names() -> None:
    fault = CacheFull("/data/cache/frames", "No space left on device", needed=5_000_000, free=1_000)
    again = pickle.loads(pickle.dumps(fault))
    assert isinstance(again, StorageFull) and again.key == "data.cache_dir"
    assert again.render("mtsearch run s.yaml --resume") == (
        "disk full on data.cache_dir /data/cache/frames (needs 5.0 MB, 0.001 MB free); free space there "
        "or set data.cache_dir to a larger disk, then: mtsearch run s.yaml --resume")


@pytest.mark.slow
def test_a_search_whose_cache_disk_fills_stops_with_the_resume_command_and_finishes(
        kinetics_root: Path, tmp_path: Path, tiny_disk: Path, ray_address: str) -> None:
    """A full cache disk is a fault of the machine, not of the trial: the search stops cleanly
    (exit 1, one error line naming data.cache_dir), and `--resume` on a larger disk finishes it."""
    base = yaml.safe_load(_config(tmp_path / "c.yaml", "kinetics", kinetics_root, tiny_disk).read_text())
    space = tmp_path / "cachefull.yaml"
    space.write_text(yaml.safe_dump({
        "name": "cachefull", "base": base, "scheduler": {"type": "none"},
        "search": {"algorithm": "random", "num_samples": 1, "max_concurrent": 1, "seed": 0},
        "space": {"loss.w_track": {"uniform": [1, 20]}}}))
    command = ["run", str(space), "--trials-dir", str(tmp_path / "trials"), "--address", ray_address, "--quiet"]
    first = mtsearch(*command)
    assert first.returncode == 1, first.stdout + first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in first.stderr, first.stderr
    assert errors[0].startswith(f"error: disk full on data.cache_dir {tiny_disk / 'frames'} (needs "), errors
    assert f"then: mtsearch run {space}" in errors[0] and " --resume" in errors[0], errors
    assert not list(tiny_disk.rglob("*.tmp")) and not list(tiny_disk.rglob(".*.tmp"))

    grow(tiny_disk, "64m")
    again = mtsearch(*command, "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    (row,) = pq.read_table(tmp_path / "trials" / "cachefull" / "trials.parquet").to_pylist()
    assert row["status"] == "completed" and row["test_views"] == "10x3", row  # the Kinetics default
    assert list((tiny_disk / "frames").rglob("*.jpgs"))
