"""A validation split carved from the training videos.

Selecting on the test split biases the reported number upwards, more with every trial a search
adds. The honest protocol selects on validation videos taken out of training and touches the test
split once. The carving is:
- stratified: each class gives about `fraction` of its training videos;
- grouped: near-duplicates never straddle train and val. UCF-101 clips of one group (`gXX`) come
  from one long video, as do HMDB-51 clips of one source video (the part of the file name before
  the class: `<source>_<class>_<body>_<camera>_<people>_<view>_<quality>_<n>.avi`); other layouts
  and the synthetic set group by file;
- seeded from the dataset and `data.split` alone, so every trial of a study, whatever its seed,
  and every loader worker sees the same split.
A class with fewer than two groups keeps all its videos in training.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from mtsearch.data.datasets import DatasetIndex, VideoItem

HMDB_FIELDS_AFTER_CLASS = 6  # body parts, camera motion, people, viewpoint, quality, clip number
UCF_GROUP = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class Split:
    """Training, validation and test videos, and the classes too small to give validation videos."""

    train: list[VideoItem]
    val: list[VideoItem]
    test: list[VideoItem]
    train_only: list[str] = field(default_factory=list)  # class names kept whole in training


def group_of(item: VideoItem, dataset: str, classes: list[str]) -> str:
    """The near-duplicate group of a video: its class plus the group or source it came from."""
    cls = classes[item.label]
    stem = PurePosixPath(item.name).stem
    if dataset == "ucf101":
        match = UCF_GROUP.match(stem)
        if match:
            return f"{cls}/g{int(match['group']):02d}"
    elif dataset == "hmdb51":
        parts = stem.split("_")
        width = len(cls.split("_"))
        tail = HMDB_FIELDS_AFTER_CLASS + width
        if len(parts) > tail and "_".join(parts[-tail:-HMDB_FIELDS_AFTER_CLASS]).lower() == cls.lower():
            return f"{cls}/{'_'.join(parts[:-tail])}"
        marker = f"_{cls}_".lower()
        if marker in stem.lower():
            return f"{cls}/{stem[: stem.lower().rfind(marker)]}"
    return f"{cls}/{item.name}"


def carve(index: DatasetIndex, fraction: float) -> Split:
    """Take about `fraction` of each class's training videos, whole groups at a time, for validation."""
    if fraction <= 0:
        return Split(list(index.train), [], list(index.test))
    by_class: dict[int, dict[str, list[VideoItem]]] = {}
    for item in index.train:
        groups = by_class.setdefault(item.label, {})
        groups.setdefault(group_of(item, index.dataset, index.classes), []).append(item)
    val_groups: set[str] = set()
    train_only: list[str] = []
    for label, groups in sorted(by_class.items()):
        name = index.classes[label]
        total = sum(len(v) for v in groups.values())
        target = round(fraction * total)
        if len(groups) < 2 or target < 1:
            train_only.append(name)
            continue
        order = sorted(groups)
        random.Random(f"val:{index.dataset}:{index.split}:{name}").shuffle(order)
        taken = 0
        for group in order[:-1]:  # whole groups until the target is met; one stays in training
            if taken >= target:
                break
            val_groups.add(group)
            taken += len(groups[group])
    train, val = [], []
    for item in index.train:
        (val if group_of(item, index.dataset, index.classes) in val_groups else train).append(item)
    return Split(train, val, list(index.test), train_only)
