"""Comparing recorded figures of two runs that should be the same run.

An epoch without an evaluation records `None` for its validation figures, and a diverged epoch can
record NaN. `pytest.approx` with a tolerance raises on `None` (pytest 9.2), so a comparison goes
through `same_figure`: absent on both sides is equal, absent on one side is not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

# figures two runs of the same computation need not share: wall-clock ones, and the clips an epoch
# evaluated (a run cut short met the test split at its end; tests/test_cost.py checks the counts)
TIMING = frozenset({"epoch_s", "clips_per_s", "data_wait", "train_s", "eval_s", "eval_clips"})


def same_figure(got: Any, want: Any, *, rel: float, abs: float) -> bool:
    """True when both are absent, both NaN, equal non-numbers, or numbers within the tolerance."""
    if got is None or want is None:
        return got is None and want is None
    numbers = (int, float)
    if isinstance(want, bool) or not isinstance(want, numbers):
        return got == want
    if isinstance(got, bool) or not isinstance(got, numbers):
        return False
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    return got == pytest.approx(want, rel=rel, abs=abs)


def assert_same_rows(got: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]], *,
                     keys: Iterable[str] | None = None, rel: float, abs: float,
                     where: str = "") -> None:
    """Row by row, every key of `want` (or just `keys`) but the timings, as `same_figure` says.

    The two histories have the same length; a key missing from a `got` row counts as absent."""
    assert len(got) == len(want), f"{where}: {len(got)} rows against {len(want)}"
    chosen = None if keys is None else list(keys)
    for index, (row, expected) in enumerate(zip(got, want, strict=True)):
        names = chosen if chosen is not None else [k for k in expected if k not in TIMING]
        for key in names:
            have, value = row.get(key), expected.get(key)
            assert same_figure(have, value, rel=rel, abs=abs), \
                f"{where} row {index} (epoch {expected.get('epoch')}) {key}: {have!r} against {value!r}"
