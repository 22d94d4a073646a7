"""stats.py: t quantiles, intervals, paired deltas and verdicts against published or hand-computed values."""

from __future__ import annotations

import math

import pytest

from mtsearch.results.stats import (
    Interval,
    betainc,
    paired_differences,
    paired_verdict,
    summarize,
    t_cdf,
    t_quantile,
)

# ---- Student t ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "df, expected",
    [
        (1, 12.706),
        (2, 4.303),
        (4, 2.776),
        (5, 2.571),
        (9, 2.262),
        (30, 2.042),
        (math.inf, 1.960),
    ],
)
def test_t_quantile_matches_tables(df: float, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_other_levels_and_symmetry() -> None:
    assert t_quantile(0.995, 3) == pytest.approx(5.841, abs=1e-3)
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=1e-3)
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 7) == 0.0
    assert t_cdf(t_quantile(0.9, 5.5), 5.5) == pytest.approx(0.9, abs=1e-10)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)


def test_betainc_known_values() -> None:
    assert betainc(2, 3, 0.5) == pytest.approx(11 / 16, abs=1e-12)  # binomial sum
    assert betainc(1, 1, 0.3) == pytest.approx(0.3, abs=1e-12)  # uniform
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5, abs=1e-12)


# ---- intervals and pairs -----------------------------------------------------------------------


def test_summarize_hand_computed() -> None:
    iv = summarize([1, 2, 3, 4])
    assert iv.n == 4 and iv.mean == 2.5
    assert iv.sd == pytest.approx(1.29099, abs=1e-5)
    assert iv.half_width == pytest.approx(3.182 * 1.29099 / 2, abs=1e-3)
    assert iv.low == pytest.approx(2.5 - iv.half_width) and iv.high == pytest.approx(
        2.5 + iv.half_width
    )


def test_summarize_known_ci() -> None:
    """Six values with mean 10 and variance 2: t_{0.975, 5} = 2.5706, half width 2.5706·√2/√6."""
    iv = summarize([8, 9, 10, 10, 11, 12], level=0.95)
    assert iv.mean == 10 and iv.sd == pytest.approx(math.sqrt(2.0))
    assert iv.half_width == pytest.approx(2.5706 * math.sqrt(2.0) / math.sqrt(6), abs=1e-4)
    assert (iv.low, iv.high) == pytest.approx((8.5159, 11.4841), abs=1e-4)
    wide = summarize([8, 9, 10, 10, 11, 12], level=0.99)
    assert wide.half_width == pytest.approx(4.0321 * math.sqrt(2.0) / math.sqrt(6), abs=1e-4)


def test_summarize_small_and_dirty_inputs() -> None:
    assert summarize([]).mean is None
    one = summarize([0.7])
    assert one.n == 1 and one.mean == 0.7 and one.sd is None and one.low is None
    two = summarize([1.0, float("nan"), 3.0, None])
    assert two.n == 2 and two.mean == 2.0
    assert two.half_width == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2), abs=1e-3)


def test_paired_differences_use_matching_seeds_only() -> None:
    deltas = paired_differences(
        {0: 0.5, 1: 0.7, 2: 0.9, 3: float("nan")}, {0: 0.4, 1: 0.5, 3: 0.1, 4: 0.2}
    )
    assert list(deltas) == [0, 1]
    assert deltas[0] == pytest.approx(0.1) and deltas[1] == pytest.approx(0.2)


def test_paired_delta_interval_by_hand() -> None:
    """Deltas 0.10, 0.11, 0.09: mean 0.10, sd 0.01, half width t_{0.975, 2} * 0.01 / sqrt(3)."""
    cell = {0: 0.50, 1: 0.61, 2: 0.54}
    reference = {0: 0.40, 1: 0.50, 2: 0.45}
    delta = summarize(paired_differences(cell, reference).values())
    assert delta.n == 3 and delta.mean == pytest.approx(0.10)
    assert delta.sd == pytest.approx(0.01)
    assert delta.half_width == pytest.approx(4.3027 * 0.01 / math.sqrt(3), abs=1e-5)


# ---- verdicts ----------------------------------------------------------------------------------


def _interval(low: float, high: float, n: int = 3) -> Interval:
    mid = (low + high) / 2
    return Interval(n, mid, 0.1, (high - low) / 2, low, high)


@pytest.mark.parametrize(
    "low, high, mode, expected",
    [
        (0.05, 0.15, "max", "helps"),
        (-0.15, -0.05, "max", "hurts"),
        (-0.05, 0.15, "max", "no significant difference"),
        (-0.15, -0.05, "min", "helps"),  # a lower loss
        (0.05, 0.15, "min", "hurts"),
    ],
)
def test_paired_verdict_needs_the_interval_to_exclude_zero(
    low: float, high: float, mode: str, expected: str
) -> None:
    assert paired_verdict(_interval(low, high), mode) == expected


def test_paired_verdict_too_few_pairs() -> None:
    assert paired_verdict(summarize([0.2]), "max") == "too few pairs"
    assert paired_verdict(summarize([]), "max") == "too few pairs"
