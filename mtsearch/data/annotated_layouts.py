"""Kinetics (CSV annotations, clips named by YouTube id and seconds) and Something-Something v2
(JSON lists, `<id>.webm`): the layouts whose lists name clips every real copy partly lacks.

Those deleted clips are counted in one warning and named by `mtsearch data check`, never an error.
Each has one fixed split: Kinetics' val.csv and SSv2's validation.json are the test part, the search
still carves its validation split from train.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from mtsearch.data.layouts import (
    VIDEO_SUFFIXES,
    DatasetIndex,
    VideoItem,
    Warn,
    check_root,
    layout_error,
)
from mtsearch.errors import InvalidInput

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
SSV2_VIDEOS = "20bn-something-something-v2"
SSV2_LABELS = "something-something-v2-{}.json"


# ---- Kinetics -------------------------------------------------------------------------------------

def _clip_files(folder: Path) -> dict[str, Path]:
    """Video files in `folder` and its subfolders one level down (`<label>/`), by file stem."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            for inner in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if inner.is_file() and Path(inner.name).suffix.lower() in VIDEO_SUFFIXES:
                    found.setdefault(Path(inner.name).stem, Path(inner.path))
        elif entry.is_file() and Path(entry.name).suffix.lower() in VIDEO_SUFFIXES:
            found.setdefault(Path(entry.name).stem, Path(entry.path))
    return found


def _read_kinetics_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of an annotations CSV; a wrong header names the file."""
    dataset = "kinetics"
    if not path.is_file():
        raise layout_error(path, dataset, "missing file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(path, "data.root", f"cannot read file: {exc}") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    if not all(column in header for column in KINETICS_COLUMNS[:4]):
        raise InvalidInput(path, "line 1", "expected the header label,youtube_id,time_start,time_end,"
                           "split[,is_cc]", ",".join(header))
    rows = []
    for number, values in enumerate(reader, start=2):
        if not values or not any(v.strip() for v in values):
            continue
        if len(values) < len(header):
            raise InvalidInput(path, f"line {number}", f"expected {len(header)} columns "
                               f"({','.join(header)})", ",".join(values))
        rows.append((number, {h: v.strip() for h, v in zip(header, values)}))
    return rows


def _kinetics_stem(row: dict[str, str], path: Path, number: int) -> str:
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except ValueError:
        raise InvalidInput(path, f"line {number}", "time_start and time_end must be seconds",
                           f"{row['time_start']},{row['time_end']}") from None
    return f"{row['youtube_id']}_{start:06d}_{end:06d}"


def load_kinetics(root: Path, warn: Warn) -> DatasetIndex:
    """train.csv -> train, val.csv (the official validation split) -> the test part; test.csv
    (labels withheld in most releases) is counted only. Classes: the sorted train labels."""
    dataset = "kinetics"
    check_root(root, dataset)
    annotations = root / "annotations"
    if not annotations.is_dir():
        raise layout_error(annotations, dataset, "missing annotations folder")
    train_rows = _read_kinetics_csv(annotations / "train.csv")
    val_rows = _read_kinetics_csv(annotations / "val.csv")
    classes = sorted({row["label"] for _, row in train_rows})
    if not classes:
        raise layout_error(annotations / "train.csv", dataset, "no clips listed")
    by_name = {name: label for label, name in enumerate(classes)}
    missing: list[str] = []

    def read(rows: list[tuple[int, dict[str, str]]], part: str, csv_path: Path) -> list[VideoItem]:
        files = _clip_files(root / part)
        items = []
        for number, row in rows:
            label = by_name.get(row["label"])
            if label is None:
                raise InvalidInput(csv_path, f"line {number}",
                                   "label is not a class of train.csv", row["label"])
            stem = _kinetics_stem(row, csv_path, number)
            path = files.get(stem)
            if path is None:
                missing.append(f"{part}/{stem}.mp4")
                continue
            items.append(VideoItem(path, label, path.relative_to(root).as_posix()))
        return items

    train = read(train_rows, "train", annotations / "train.csv")
    test = read(val_rows, "val", annotations / "val.csv")
    unused = {}
    if (annotations / "test.csv").is_file():
        unused["annotations/test.csv"] = len(_read_kinetics_csv(annotations / "test.csv"))
    _warn_missing(missing, dataset, warn)
    return DatasetIndex(dataset, root, 1, classes, train, test, missing,
                        listed=len(train_rows) + len(val_rows), unused=unused)


def _warn_missing(missing: list[str], dataset: str, warn: Warn) -> None:
    if missing:
        what = "listed video is" if len(missing) == 1 else "listed videos are"
        warn(f"{len(missing)} {what} missing on disk (deleted at the source, as in every copy of "
             f"{dataset}) and skipped; `mtsearch data check --dataset {dataset} ROOT` names them")


# ---- Something-Something v2 ---------------------------------------------------------------------

def ssv2_class(template: str) -> str:
    """A template as labels.json names its class: `Putting [something] on [something]` ->
    `Putting something on something`."""
    return re.sub(r"\s+", " ", template.replace("[", "").replace("]", "")).strip()


def _read_json(path: Path, dataset: str) -> object:
    if not path.is_file():
        raise layout_error(path, dataset, "missing file")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(path, "data.root", f"not readable JSON: {exc}") from None


def load_ssv2(root: Path, warn: Warn) -> DatasetIndex:
    """train.json -> train, validation.json -> the test part (test.json has no labels: counted)."""
    dataset = "ssv2"
    check_root(root, dataset)
    labels_dir = root / "labels"
    labels_file = labels_dir / SSV2_LABELS.format("labels")
    mapping = _read_json(labels_file, dataset)
    if not isinstance(mapping, dict) or not mapping:
        raise InvalidInput(labels_file, "data.root", "expected a mapping of class template to id")
    try:
        ids = {ssv2_class(str(name)): int(value) for name, value in mapping.items()}
    except (TypeError, ValueError):
        raise InvalidInput(labels_file, "data.root", "class ids must be whole numbers") from None
    if sorted(ids.values()) != list(range(len(ids))):
        raise InvalidInput(labels_file, "data.root", f"class ids must be 0..{len(ids) - 1}, each once")
    classes = [name for name, _ in sorted(ids.items(), key=lambda kv: kv[1])]
    video_dir = root / SSV2_VIDEOS
    if not video_dir.is_dir():
        raise layout_error(video_dir, dataset, "missing video folder")
    files = _clip_files(video_dir)
    missing: list[str] = []

    def read(part: str) -> tuple[list[VideoItem], int]:
        path = labels_dir / SSV2_LABELS.format(part)
        entries = _read_json(path, dataset)
        if not isinstance(entries, list):
            raise InvalidInput(path, "data.root", "expected a list of {id, label, template, placeholders}")
        items = []
        for number, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
                raise InvalidInput(path, f"entry {number}", "expected an object with id and template",
                                   str(entry)[:80])
            name = ssv2_class(str(entry["template"]))
            label = ids.get(name)
            if label is None:
                raise InvalidInput(path, f"entry {number}", "template is not a class of "
                                   f"{labels_file.name}", str(entry["template"]))
            video = files.get(str(entry["id"]))
            if video is None:
                missing.append(f"{SSV2_VIDEOS}/{entry['id']}.webm")
                continue
            items.append(VideoItem(video, label, video.relative_to(root).as_posix()))
        return items, len(entries)

    train, train_listed = read("train")
    test, test_listed = read("validation")
    unused = {}
    test_list = labels_dir / SSV2_LABELS.format("test")
    if test_list.is_file():
        entries = _read_json(test_list, dataset)
        unused[f"labels/{test_list.name}"] = len(entries) if isinstance(entries, list) else 0
    _warn_missing(missing, dataset, warn)
    return DatasetIndex(dataset, root, 1, classes, train, test, missing,
                        listed=train_listed + test_listed, unused=unused)
