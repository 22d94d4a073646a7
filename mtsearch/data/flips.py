"""Horizontal flips that keep a clip's label true (`data.flip`).

A mirrored clip of "Pushing something from left to right" shows "...from right to left". With
`data.flip: swap` (the default for Something-Something v2) a flipped training clip takes its
mirrored class; a class that names a side but has no mirrored class is never flipped (its mirror
would be a clip of no class). `on` flips every class (p = 0.5, the thesis), `off` none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SIDES = re.compile(r"\b(left|right|leftward|rightward|leftwards|rightwards)\b", re.IGNORECASE)
_MIRROR = {"left": "right", "right": "left", "leftward": "rightward", "rightward": "leftward",
           "leftwards": "rightwards", "rightwards": "leftwards"}


def _mirrored(name: str) -> str:
    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        other = _MIRROR[word.lower()]
        return other.capitalize() if word[0].isupper() else other

    return _SIDES.sub(swap, name)


def mirror_pairs(classes: Sequence[str]) -> list[tuple[int, int]]:
    """(a, b) with a < b for classes whose names are each other's left-right mirror."""
    by_name = {name.lower(): label for label, name in enumerate(classes)}
    pairs = []
    for label, name in enumerate(classes):
        other = by_name.get(_mirrored(name).lower())
        if other is not None and other > label:
            pairs.append((label, other))
    return pairs


def one_sided(classes: Sequence[str]) -> list[int]:
    """Classes that name a side ("left", "right") but have no mirrored class."""
    paired = {label for pair in mirror_pairs(classes) for label in pair}
    return [label for label, name in enumerate(classes) if _SIDES.search(name) and label not in paired]


def flip_targets(classes: Sequence[str], mode: str) -> list[int | None]:
    """For each class, the label of its flipped clip, or None where a clip must not be flipped."""
    if mode == "off":
        return [None] * len(classes)
    targets: list[int | None] = list(range(len(classes)))
    if mode == "swap":
        for a, b in mirror_pairs(classes):
            targets[a], targets[b] = b, a
        for label in one_sided(classes):
            targets[label] = None
    return targets
