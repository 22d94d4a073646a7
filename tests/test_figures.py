"""The comparison the same-run tests rely on: an absent figure matches only an absent one."""

from __future__ import annotations

import math

import pytest
from figures import assert_same_rows, same_figure


def test_absent_on_both_sides_is_equal_and_on_one_side_is_not():
    assert same_figure(None, None, rel=1e-5, abs=1e-7)
    assert not same_figure(None, 0.5, rel=1e-5, abs=1e-7)
    assert not same_figure(0.5, None, rel=1e-5, abs=1e-7)


def test_numbers_within_the_tolerance_only():
    assert same_figure(1.0 + 1e-7, 1.0, rel=1e-5, abs=1e-7)
    assert not same_figure(1.001, 1.0, rel=1e-5, abs=1e-7)
    assert same_figure(math.nan, math.nan, rel=1e-5, abs=1e-7)
    assert not same_figure(math.nan, 1.0, rel=1e-5, abs=1e-7)
    assert not same_figure(True, 1.0, rel=1e-5, abs=1e-7)
    assert same_figure(3, 3, rel=1e-5, abs=1e-7) and not same_figure("3", 3, rel=1e-5, abs=1e-7)


def test_rows_compare_every_figure_but_the_timings():
    want = [{"epoch": 1, "loss": 2.0, "val_hit1": None, "epoch_s": 3.0},
            {"epoch": 2, "loss": 1.5, "val_hit1": 0.25, "epoch_s": 3.0}]
    got = [{**want[0], "epoch_s": 9.0}, {**want[1], "epoch_s": 1.0}]
    assert_same_rows(got, want, rel=1e-5, abs=1e-7)
    with pytest.raises(AssertionError, match="val_hit1"):
        assert_same_rows([{**want[0], "val_hit1": 0.1}, want[1]], want, rel=1e-5, abs=1e-7)
    with pytest.raises(AssertionError, match="val_hit1"):
        assert_same_rows([want[0], {**want[1], "val_hit1": None}], want, rel=1e-5, abs=1e-7)
    with pytest.raises(AssertionError, match="rows against"):
        assert_same_rows(got[:1], want, rel=1e-5, abs=1e-7)
