"""Small-sample statistics for ablations: Student-t intervals over seeds and paired differences.

A study has a handful of seeds per cell, so a normal interval would be far too narrow; the t
quantile is computed here (regularized incomplete beta + bisection) so scipy is not a dependency.
A cell is only said to help when its paired difference against the reference excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mtsearch.metrics import direction


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), as `betainc` needs it."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1 (the t tail is one)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df = inf: the standard normal)."""
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p, by bisection on `t_cdf` (t_{0.975, 1} = 12.706)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1) (got {p})")
    if df <= 0:
        raise ValueError(f"df must be > 0 (got {df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    high = 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    low = 0.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Interval:
    """Mean, sample sd and a two-sided Student-t interval of a few values (None where undefined)."""

    n: int
    mean: float | None
    sd: float | None
    half_width: float | None
    low: float | None
    high: float | None
    level: float = 0.95


def summarize(values: Iterable[float | None], level: float = 0.95) -> Interval:
    """n, mean, sd (n-1) and the t interval mean ± t_{(1+level)/2, n-1}·sd/√n; NaNs are dropped,
    since a diverged seed has no value to average rather than an infinitely bad one."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(0, None, None, None, None, None, level)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(1, mean, None, None, None, None, level)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, half, mean - half, mean + half, level)


def paired_differences(
    values: Mapping[Any, float | None], reference: Mapping[Any, float | None]
) -> dict[Any, float]:
    """values[k] - reference[k] for every key (seed) present and finite in both, in key order.

    Pairing on the seed removes the seed-to-seed spread both cells share, which is most of it."""
    out: dict[Any, float] = {}
    for key in sorted(set(values) & set(reference), key=lambda k: (str(type(k)), k)):
        a, b = values[key], reference[key]
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            out[key] = float(a) - float(b)
    return out


NO_DIFFERENCE = "no significant difference"


def paired_verdict(delta: Interval, mode: str) -> str:
    """helps | hurts | no significant difference | too few pairs: the paired interval must exclude
    zero, on the side that is better for `mode` (max or min), before a cell is said to change
    anything. An interval that holds zero says nothing about equivalence."""
    if delta.n < 2 or delta.low is None or delta.high is None:
        return "too few pairs"
    sign = direction(mode).sign
    good_low, good_high = sorted((sign * delta.low, sign * delta.high))
    if good_low > 0:
        return "helps"
    if good_high < 0:
        return "hurts"
    return NO_DIFFERENCE


def lattice_step(values: Iterable[float | None]) -> float | None:
    """The smallest gap between distinct finite values: a metric that moves in steps (Hit@1 on N
    videos moves by 1/N) shows its step here. None with fewer than two distinct values."""
    xs = sorted({float(v) for v in values if v is not None and math.isfinite(float(v))})
    gaps = [b - a for a, b in zip(xs, xs[1:]) if b - a > 1e-12]
    return min(gaps) if gaps else None


def paired_p_two_sided(differences: Iterable[float], sd_floor: float = 0.0) -> float | None:
    """Two-sided paired t-test p-value for mean != 0 (None with fewer than 2 pairs).

    The sd is never taken below `sd_floor`: differences of a stepped metric that happen to be all
    equal (zero spread) are evidence of a step, not certainty. With no spread and no floor, p = 1."""
    xs = [float(d) for d in differences]
    n = len(xs)
    if n < 2:
        return None
    mean = math.fsum(xs) / n
    sd = max(math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)), sd_floor)
    if sd == 0:
        return 1.0
    t = abs(mean) / (sd / math.sqrt(n))
    return min(1.0, 2.0 * (1.0 - t_cdf(t, n - 1)))


def holm(pvalues: Mapping[Any, float]) -> dict[Any, float]:
    """Holm's step-down adjusted p-values: family-wise error control over several comparisons."""
    ordered = sorted(pvalues.items(), key=lambda item: item[1])
    m = len(ordered)
    adjusted: dict[Any, float] = {}
    running = 0.0
    for i, (key, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[key] = running
    return adjusted
