"""Dataset indexes: which video files make up the train and test sets of a split, with labels.

Reads the official split files as they really ship: CRLF line ends, trailing spaces, blank
lines, a UTF-8 byte-order mark, names with `#&()!'`, UCF-101's `HandstandPushups` folder holding
`v_HandStandPushups_*` files, Kinetics' quoted CSV labels, Something-Something's JSON lists.
Class ids are stable: HMDB-51 (and the synthetic set) and Kinetics sort the class names, UCF-101
follows classInd.txt, SSv2 its labels.json ids, `list` takes the labels as written.
A wrong layout is `InvalidInput` naming what is missing; a listed video missing on disk is skipped
(named one by one, or for Kinetics and SSv2, where every copy has thousands of deleted videos,
counted in one warning; `mtsearch data check` names them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtsearch.data.layouts import (  # noqa: F401 - the index's types, read from here too
    COUNT_MISSING,
    LAYOUTS,
    VIDEO_SUFFIXES,
    DatasetIndex,
    VideoItem,
    Warn,
    check_root,
    layout_error,
)
from mtsearch.errors import InvalidInput

if TYPE_CHECKING:
    from mtsearch.config import TrialConfig

HMDB_SPLIT_DIR = "testTrainMulti_7030_splits"
UCF_LIST_DIR = "ucfTrainTestlist"


def _read_lines(path: Path, dataset: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of non-blank lines; BOM, CRLF, trailing spaces go."""
    if not path.is_file():
        raise layout_error(path, dataset, "missing file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(path, "data.root", f"cannot read file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # old list files: every byte still maps to one character
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            lines.append((number, line))
    return lines


class _Folder:
    """Finds entries on disk by name, exactly first, then case-insensitively (UCF-101's quirk)."""

    def __init__(self) -> None:
        self._listings: dict[Path, dict[str, str]] = {}

    def _listing(self, folder: Path) -> dict[str, str]:
        listing = self._listings.get(folder)
        if listing is None:
            try:
                listing = {entry.lower(): entry for entry in sorted(os.listdir(folder))}
            except OSError:
                listing = {}
            self._listings[folder] = listing
        return listing

    def find(self, folder: Path, name: str) -> Path | None:
        """The file `folder/name`, or its case-insensitive match, or None."""
        exact = folder / name
        if exact.is_file():
            return exact
        actual = self._listing(folder).get(name.lower())
        return folder / actual if actual is not None and (folder / actual).is_file() else None

    def find_dir(self, root: Path, name: str) -> Path | None:
        exact = root / name
        if exact.is_dir():
            return exact
        actual = self._listing(root).get(name.lower())
        return root / actual if actual is not None and (root / actual).is_dir() else None


def _split_label(line: str) -> tuple[str, str] | None:
    """'<name> <label>' -> (name, label); the name may itself contain spaces."""
    parts = line.rsplit(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else None


# --- HMDB-51 (and the synthetic set) --------------------------------------------------------------

def _load_hmdb(root: Path, split: int, dataset: str, warn: Warn) -> DatasetIndex:
    check_root(root, dataset)
    split_dir = root / HMDB_SPLIT_DIR
    if not split_dir.is_dir():
        raise layout_error(split_dir, dataset, "missing split folder")
    suffix = f"_test_split{split}.txt"
    split_files = {p.name[: -len(suffix)]: p for p in split_dir.iterdir()
                   if p.name.endswith(suffix) and p.is_file()}
    video_dirs = sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and p.name != HMDB_SPLIT_DIR and not p.name.startswith(".")
        and any(f.suffix.lower() in VIDEO_SUFFIXES for f in p.iterdir())
    )
    for name in video_dirs:
        if name not in split_files:
            raise layout_error(split_dir / f"{name}{suffix}", dataset,
                                f"missing split file for class {name!r}")
    if not split_files:
        raise layout_error(split_dir / f"<class>{suffix}", dataset,
                            f"no split files for split {split}")
    classes = sorted(split_files)
    folders = _Folder()
    train: list[VideoItem] = []
    test: list[VideoItem] = []
    missing: list[str] = []
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            raise layout_error(class_dir, dataset, f"missing class folder for class {name!r}")
        split_file = split_files[name]
        for number, line in _read_lines(split_file, dataset):
            parsed = _split_label(line)
            if parsed is None or parsed[1] not in ("0", "1", "2"):
                raise InvalidInput(split_file, f"line {number}",
                                   "expected '<video>.avi <tag>' with tag 0 (unused), 1 (train) "
                                   "or 2 (test)", line)
            video, tag = parsed
            if tag == "0":
                continue
            path = folders.find(class_dir, video)
            rel = f"{name}/{video}"
            if path is None:
                missing.append(rel)
                warn(f"skipping {rel}: listed in {split_file.name} but not found on disk")
                continue
            (train if tag == "1" else test).append(VideoItem(path, label, f"{name}/{path.name}"))
    return DatasetIndex(dataset, root, split, classes, train, test, missing)


# --- UCF-101 --------------------------------------------------------------------------------------

def _load_ucf(root: Path, split: int, warn: Warn) -> DatasetIndex:
    dataset = "ucf101"
    check_root(root, dataset)
    list_dir = root / UCF_LIST_DIR
    if not list_dir.is_dir():
        raise layout_error(list_dir, dataset, "missing split folder")
    class_file = list_dir / "classInd.txt"
    classes: list[str] = []
    for number, line in _read_lines(class_file, dataset):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
            expected = f"expected '{len(classes) + 1} <Class>' (ids 1, 2, ... in order)"
            raise InvalidInput(class_file, f"line {number}", expected, line)
        classes.append(parts[1])
    if not classes:
        raise layout_error(class_file, dataset, "no classes listed")
    by_name = {name.lower(): i for i, name in enumerate(classes)}
    folders = _Folder()
    class_dirs: dict[int, Path] = {}
    missing: list[str] = []

    def read(list_file: Path, labelled: bool) -> list[VideoItem]:
        items = []
        for number, line in _read_lines(list_file, dataset):
            rel = line
            if labelled:
                parsed = _split_label(line)
                if (parsed is None or not parsed[1].isdigit()
                        or not 1 <= int(parsed[1]) <= len(classes)):
                    raise InvalidInput(list_file, f"line {number}",
                                       f"expected '<Class>/<file>.avi <1..{len(classes)}>'", line)
                rel = parsed[0]
            folder, sep, video = rel.replace("\\", "/").partition("/")
            if not sep or not video or "/" in video:
                expected = "expected '<Class>/<file>.avi" + (" <id>'" if labelled else "'")
                raise InvalidInput(list_file, f"line {number}", expected, line)
            # the class is the folder part: `HandstandPushups/v_HandStandPushups_g01_c01.avi`
            label = by_name.get(folder.lower())
            if label is None:
                raise InvalidInput(list_file, f"line {number}",
                                   f"class folder {folder!r} is not in classInd.txt", line)
            class_dir = class_dirs.get(label)
            if class_dir is None:
                class_dir = folders.find_dir(root, classes[label]) or folders.find_dir(root, folder)
                if class_dir is None:
                    raise layout_error(root / classes[label], dataset,
                                        f"missing class folder for class {classes[label]!r}")
                class_dirs[label] = class_dir
            path = folders.find(class_dir, video)
            if path is None:
                missing.append(f"{folder}/{video}")
                warn(f"skipping {folder}/{video}: listed in {list_file.name} but not found on disk")
                continue
            items.append(VideoItem(path, label, f"{class_dir.name}/{path.name}"))
        return items

    train = read(list_dir / f"trainlist0{split}.txt", labelled=True)
    test = read(list_dir / f"testlist0{split}.txt", labelled=False)
    return DatasetIndex(dataset, root, split, classes, train, test, missing)


# --- list files -----------------------------------------------------------------------------------

def _load_list(root: Path, split: int, warn: Warn) -> DatasetIndex:
    """`<relative path> <0-based label>` lines; one fixed split (the split number is ignored)."""
    dataset = "list"
    check_root(root, dataset)
    names: list[str] | None = None
    class_file = root / "classes.txt"
    if class_file.is_file():
        names = [line for _, line in _read_lines(class_file, dataset)]
        if len(set(names)) != len(names):
            raise InvalidInput(class_file, "data.root", "class names must be unique")
    missing: list[str] = []
    largest = -1

    def read(list_file: Path) -> list[VideoItem]:
        nonlocal largest
        items = []
        for number, line in _read_lines(list_file, dataset):
            parsed = _split_label(line)
            if parsed is None or not parsed[1].isdigit():
                raise InvalidInput(list_file, f"line {number}",
                                   "expected '<relative path> <0-based label>'", line)
            rel, label = parsed[0], int(parsed[1])
            if names is not None and label >= len(names):
                raise InvalidInput(list_file, f"line {number}",
                                   f"label {label} has no class in classes.txt "
                                   f"({len(names)} classes, labels 0..{len(names) - 1})", line)
            path = root / rel
            if not path.is_file():
                missing.append(rel)
                warn(f"skipping {rel}: listed in {list_file.name} but not found on disk")
                continue
            largest = max(largest, label)
            items.append(VideoItem(path, label, Path(rel).as_posix()))
        return items

    train = read(root / "train.txt")
    test = read(root / "test.txt")
    classes = names if names is not None else [f"class_{n}" for n in range(largest + 1)]
    return DatasetIndex(dataset, root, split, classes, train, test, missing)


# --- entry points ---------------------------------------------------------------------------------

def detect_layout(root: str | os.PathLike[str]) -> str | None:
    """The dataset kind a folder's layout says (`synthetic`, `hmdb51`, `ucf101`, `kinetics`,
    `ssv2`, `list`), or None."""
    root = Path(root)
    if (root / "synthetic.yaml").is_file() and (root / HMDB_SPLIT_DIR).is_dir():
        return "synthetic"
    if (root / HMDB_SPLIT_DIR).is_dir():
        return "hmdb51"
    if (root / UCF_LIST_DIR).is_dir():
        return "ucf101"
    if (root / "annotations" / "train.csv").is_file():
        return "kinetics"
    if (root / "labels" / "something-something-v2-labels.json").is_file():
        return "ssv2"
    if (root / "train.txt").is_file() or (root / "test.txt").is_file():
        return "list"
    return None


def load_index(dataset: str, root: str | os.PathLike[str], split: int = 1,
               warn: Warn | None = None) -> DatasetIndex:
    """Index `root` as `dataset` for official split 1-3 (`list`, `kinetics`, `ssv2` have one
    fixed split)."""
    if dataset not in LAYOUTS:
        raise InvalidInput(None, "data.dataset", f"must be one of {', '.join(sorted(LAYOUTS))}",
                           dataset)
    if split not in (1, 2, 3):
        raise InvalidInput(None, "data.split", "must be 1, 2 or 3", split)
    warn = warn or (lambda message: None)
    path = Path(root).expanduser()
    if dataset in ("hmdb51", "synthetic"):
        return _load_hmdb(path, split, dataset, warn)
    if dataset == "ucf101":
        return _load_ucf(path, split, warn)
    if dataset in ("kinetics", "ssv2"):
        from mtsearch.data.annotated_layouts import load_kinetics, load_ssv2

        return (load_kinetics if dataset == "kinetics" else load_ssv2)(path, warn)
    return _load_list(path, split, warn)


def index_for_config(cfg: TrialConfig, warn: Warn | None = None) -> DatasetIndex:
    """The index a trial trains on; synthetic without a root: the cached set (built once)."""
    root = cfg.data.root
    if root is None:
        if cfg.data.dataset != "synthetic":
            raise InvalidInput(None, "data.root",
                               f"a dataset root is required for data.dataset {cfg.data.dataset!r} "
                               f"(expected layout: {LAYOUTS[cfg.data.dataset]})")
        from mtsearch.data.cache import CacheFull
        from mtsearch.data.synthetic import ensure_synthetic
        from mtsearch.errors import free_bytes, storage_failure
        from mtsearch.paths import cache_root

        try:
            root = ensure_synthetic(cfg.data.cache_dir, seed=0)
        except OSError as exc:  # the built-in set is written into the cache folder
            disk = storage_failure(exc)
            if disk is None:
                raise
            where = cache_root(cfg.data.cache_dir)
            raise CacheFull(where, disk.reason, free=free_bytes(where)) from None
    return load_index(cfg.data.dataset, root, cfg.data.split, warn)


# --- checking the videos of an index ------------------------------------------------------------

@dataclass(frozen=True)
class VideoCheck:
    """What `check_videos` learnt about one video: its frame count at the target fps or an error."""

    item: VideoItem
    frames: int | None  # frames at the target fps (exact when `decoded`, else from the headers)
    error: str | None  # why it cannot be used; None when usable
    decoded: bool
    size: tuple[int, int] | None = None  # (width, height) from the headers
    rate: float | None = None  # the source frame rate from the headers

    @property
    def usable(self) -> bool:
        return self.error is None


def _check_one(item: VideoItem, clip_frames: int, fps: float | None, decode: bool) -> VideoCheck:
    from mtsearch.data.video import RATE_TOLERANCE, probe, read_video
    from mtsearch.errors import VideoReadError

    try:
        info = probe(item.path)
    except VideoReadError as exc:
        return VideoCheck(item, None, exc.reason, False)
    if fps is not None and fps > info.fps * (1 + RATE_TOLERANCE):
        why = f"source rate {info.fps:g} fps is below the {fps:g} fps asked"
        return VideoCheck(item, None, why, False)
    keep_all = fps is None or fps >= info.fps * (1 - RATE_TOLERANCE)
    estimate = info.num_frames if keep_all else math.ceil(info.num_frames * fps / info.fps)
    # Headers are conclusive when they promise comfortably more than a clip; near or below the
    # limit (or with --decode) the decoder decides, since headers of damaged files can lie.
    if not decode and estimate >= clip_frames + max(2, clip_frames // 10):
        return VideoCheck(item, estimate, None, False, (info.width, info.height), info.fps)
    try:
        frames = read_video(item.path, fps=fps, threads=1,
                            max_frames=None if decode else clip_frames)
    except VideoReadError as exc:
        return VideoCheck(item, None, exc.reason, True)
    except InvalidInput as exc:  # fps above this video's rate
        return VideoCheck(item, None, exc.what, True)
    count = len(frames)
    if not decode and count >= clip_frames:
        count = max(count, estimate)  # stopped at one clip; the headers tell the rest
    return VideoCheck(item, count, None, True, (info.width, info.height), info.fps)


def check_videos(
    items: list[VideoItem],
    clip_frames: int,
    fps: float | None = None,
    decode: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[VideoCheck]:
    """Probe every video (decoding where the headers are not conclusive, or all with `decode`).

    Results come back in the order of `items`. Threads: PyAV releases the GIL while it demuxes
    and decodes, so probing thousands of files overlaps their I/O and decoding.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    results: list[VideoCheck | None] = [None] * len(items)
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(_check_one, item, clip_frames, fps, decode): i
                   for i, item in enumerate(items)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if progress:
                progress(done, len(items))
    return [r for r in results if r is not None]
