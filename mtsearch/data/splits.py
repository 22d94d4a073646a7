"""A validation split carved from the training videos.

Selecting on the test split biases the reported number upwards, more with every trial a search
adds. The honest protocol selects on validation videos taken out of training and touches the test
split once. The carving is:
- stratified: each class gives about `fraction` of its training videos;
- grouped: near-duplicates never straddle train and val. UCF-101 clips of one group (`gXX`) come
  from one long video, and a group number stays on one side in every class, as the official
  splits keep it; HMDB-51 clips of one source video (the part of the file name before the class:
  `<source>_<class>_<body>_<camera>_<people>_<view>_<quality>_<n>.avi`) stay together; other
  layouts and the synthetic set group by file. A name that does not parse is its own group, and
  is counted (`unparsed`) so `data check` and the loader can say so;
- closest to the target: of the subsets of groups (one group always stays in training), the one
  whose size is nearest `fraction` of the class (`closest`; records before v6 took whole groups in
  a shuffled order until the target was met, `greedy`, which overshoots with large groups);
- seeded from the dataset, `data.split` and the class alone (SHA-256, no `random` whose sequence a
  Python version may change), so every trial of a study and every loader worker sees the same split.
A class with fewer than two groups keeps all its videos in training.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
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
    unparsed: list[str] = field(default_factory=list)  # training videos whose names give no group


def group_of(item: VideoItem, dataset: str, classes: list[str]) -> str:
    """The near-duplicate group of a video: its class plus the group or source it came from."""
    return group_and_parsed(item, dataset, classes)[0]


def group_and_parsed(item: VideoItem, dataset: str, classes: list[str]) -> tuple[str, bool]:
    """(group, whether the name parsed); an unparsed HMDB-51 or UCF-101 name is its own group."""
    cls = classes[item.label]
    stem = PurePosixPath(item.name).stem
    if dataset == "ucf101":
        match = UCF_GROUP.match(stem)
        if match:
            return f"{cls}/g{int(match['group']):02d}", True
        return f"{cls}/{item.name}", False
    if dataset == "hmdb51":
        parts = stem.split("_")
        width = len(cls.split("_"))
        tail = HMDB_FIELDS_AFTER_CLASS + width
        if len(parts) > tail and "_".join(parts[-tail:-HMDB_FIELDS_AFTER_CLASS]).lower() == cls.lower():
            return f"{cls}/{'_'.join(parts[:-tail])}", True
        marker = f"_{cls}_".lower()
        if marker in stem.lower():
            return f"{cls}/{stem[: stem.lower().rfind(marker)]}", True
        return f"{cls}/{item.name}", False
    return f"{cls}/{item.name}", True


def carve(index: DatasetIndex, fraction: float, method: str = "closest") -> Split:
    """Take about `fraction` of each class's training videos, whole groups at a time, for validation."""
    grouped = {item.name: group_and_parsed(item, index.dataset, index.classes) for item in index.train}
    unparsed = sorted(name for name, (_, parsed) in grouped.items() if not parsed)
    if fraction <= 0:
        return Split(list(index.train), [], list(index.test), unparsed=unparsed)
    by_class: dict[int, dict[str, list[VideoItem]]] = {}
    for item in index.train:
        by_class.setdefault(item.label, {}).setdefault(grouped[item.name][0], []).append(item)
    if method == "closest" and index.dataset == "ucf101" and not unparsed:
        val_groups, train_only = _ucf_group_numbers(index, by_class, fraction)
    else:
        val_groups, train_only = _per_class(index, by_class, fraction, method)
    train, val = [], []
    for item in index.train:
        (val if grouped[item.name][0] in val_groups else train).append(item)
    return Split(train, val, list(index.test), train_only, unparsed)


def _per_class(index: DatasetIndex, by_class: dict[int, dict[str, list[VideoItem]]], fraction: float,
               method: str) -> tuple[set[str], list[str]]:
    val_groups: set[str] = set()
    train_only: list[str] = []
    for label, groups in sorted(by_class.items()):
        name = index.classes[label]
        total = sum(len(v) for v in groups.values())
        target = round(fraction * total)
        if len(groups) < 2 or target < 1:
            train_only.append(name)
            continue
        if method == "greedy":
            val_groups |= _greedy(groups, target, f"val:{index.dataset}:{index.split}:{name}")
        else:
            order = _seeded_order(groups, f"val:{index.dataset}:{index.split}:{name}")
            val_groups |= closest_subset([(g, len(groups[g])) for g in order], target)
    return val_groups, train_only


def _ucf_group_numbers(index: DatasetIndex, by_class: dict[int, dict[str, list[VideoItem]]],
                       fraction: float) -> tuple[set[str], list[str]]:
    """UCF-101: the group numbers whose videos, over every class, come closest to the target; a
    group number is then validation in every class, as the official splits keep one on one side.
    A class the chosen numbers would empty, or that has a single group, stays whole in training."""
    def number(group: str) -> str:
        return group.rsplit("/", 1)[1]

    eligible = {label: groups for label, groups in by_class.items() if len(groups) >= 2}
    sizes: dict[str, int] = {}
    for groups in eligible.values():
        for group, items in groups.items():
            sizes[number(group)] = sizes.get(number(group), 0) + len(items)
    target = round(fraction * sum(sizes.values()))
    numbers = closest_subset([(n, sizes[n]) for n in _seeded_order(sizes, f"val:{index.dataset}:"
                                                                   f"{index.split}")], target)
    val_groups: set[str] = set()
    train_only = [index.classes[label] for label in sorted(by_class) if label not in eligible]
    for label, groups in sorted(eligible.items()):
        chosen = {g for g in groups if number(g) in numbers}
        if chosen and len(chosen) < len(groups):
            val_groups |= chosen
        else:
            train_only.append(index.classes[label])
    return val_groups, sorted(train_only, key=index.classes.index)


def closest_subset(sized: list[tuple[str, int]], target: int) -> set[str]:
    """The names, of (name, size) pairs in a seeded order, whose sizes sum closest to `target`,
    never all of them (one group stays in training); ties go to the smaller sum, then to the subset
    found first in that order. Sums are small (clips of one class), so every reachable sum is kept."""
    reach: dict[int, tuple[str, ...]] = {0: ()}
    for name, size in sized[:-1] if len(sized) > 1 else []:  # the last one stays in training
        for total, chosen in list(reach.items()):
            reach.setdefault(total + size, (*chosen, name))
    best = min(reach, key=lambda total: (abs(total - target), total))
    return set(reach[best])


def _greedy(groups: dict[str, list[VideoItem]], target: int, key: str) -> set[str]:
    """Records before v6: whole groups, in `random.shuffle`'s order, until the target is met."""
    order = sorted(groups)
    random.Random(key).shuffle(order)
    chosen, taken = set(), 0
    for group in order[:-1]:
        if taken >= target:
            break
        chosen.add(group)
        taken += len(groups[group])
    return chosen


def _seeded_order(names: Iterable[str], key: str) -> list[str]:
    """`names` in an order fixed by `key` (SHA-256 of key and name): the same on every Python."""
    return sorted(names, key=lambda n: hashlib.sha256(f"{key}:{n}".encode()).hexdigest())
