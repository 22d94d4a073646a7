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
    """The step a metric moves in (Hit@1 on N videos moves by 1/N): the greatest common divisor
    of the gaps between distinct finite values (to 1e-9), not the smallest gap, so that one run
    more or less (a seed that failed) rarely changes it. None with fewer than two distinct values
    or gaps with no common step (a continuous metric)."""
    xs = sorted({round(float(v), 12) for v in values if v is not None and math.isfinite(float(v))})
    gaps = [b - a for a, b in zip(xs, xs[1:]) if b - a > 1e-12]
    if not gaps:
        return None
    tol = 1e-9 * max(1.0, max(abs(x) for x in xs))
    step = min(gaps)
    for gap in gaps:
        a, b = max(gap, step), min(gap, step)
        while b > tol:
            r = math.fmod(a, b)
            a, b = b, (0.0 if r < tol or b - r < tol else r)
        step = a
        if step <= 1e3 * tol:
            return None
    return step


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


# ---- paired tests in which a failed run can only count against its own configuration ----------

@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of `ours - theirs` over the seeds both ran, failures scored as the test chose.

    `differences` holds the per-seed differences the test used (a failure's imputed value in it),
    `t` the signed evidence that ours is better (positive: better in the metric's direction), `p`
    the two-sided p-value and `p_better` the one-sided P(T >= t). `sd` is the spread used (never
    below the floor)."""

    differences: dict[Any, float]
    n: int
    mean: float | None
    sd: float | None
    t: float | None
    p: float | None
    p_better: float | None


def _t_value(xs: list[float], sign: int, sd_floor: float) -> float:
    n = len(xs)
    mean = math.fsum(xs) / n
    sd = max(math.sqrt(max(0.0, math.fsum((x - mean) ** 2 for x in xs)) / (n - 1)), sd_floor)
    if sd == 0:  # no spread and no floor: no evidence either way (as paired_p_two_sided)
        return 0.0
    return sign * mean / (sd / math.sqrt(n))


def _extreme_coordinate(xs: list[float], i: int, lo: float, hi: float, sign: int, sd_floor: float,
                        maximize: bool) -> float:
    """The value of xs[i] within [lo, hi] that makes the signed t largest (or smallest).

    Without a floor, t as a function of one difference d has one turning point, d = Q/S (Q, S: the
    sum of squares and the sum of the others); the floor adds the two points where the spread meets
    it (inside them t is linear in d). So the extreme is at one of at most five candidates."""
    others = xs[:i] + xs[i + 1:]
    n = len(xs)
    s, q = math.fsum(others), math.fsum(x * x for x in others)
    candidates = [lo, hi]
    if s != 0:
        candidates.append(q / s)
    if sd_floor > 0:  # (n-1) sd^2 = q + d^2 - (s + d)^2 / n = floor^2 (n-1): a quadratic in d
        a, b, c = 1 - 1 / n, -2 * s / n, q - s * s / n - sd_floor**2 * (n - 1)
        disc = b * b - 4 * a * c
        if disc >= 0:
            root = math.sqrt(disc)
            candidates += [(-b - root) / (2 * a), (-b + root) / (2 * a)]
    best_value, best_t = xs[i], None
    for d in candidates:
        d = min(max(d, lo), hi)
        t = _t_value([*xs[:i], d, *xs[i + 1:]], sign, sd_floor)
        if best_t is None or (t > best_t if maximize else t < best_t):
            best_value, best_t = d, t
    return best_value


def paired_test(
    ours: Mapping[Any, float | None],
    theirs: Mapping[Any, float | None],
    sign: int = 1,
    *,
    ours_failed: Iterable[Any] = (),
    theirs_failed: Iterable[Any] = (),
    bounds: tuple[float, float] | None = None,
    sd_floor: float = 0.0,
) -> PairedTest:
    """Paired t-test that `ours` beats `theirs` (`sign` +1: higher is better), over the seeds both ran.

    A failed run (listed in `*_failed`, or a None or NaN score) is scored, within `bounds` (the
    metric's possible range), as the value that weighs most against its own configuration in this
    test: theirs as the value that makes t largest, ours as the one that makes it smallest. So a
    failure can never make its configuration look better than any result the run could have had:
    adding one never lowers the evidence against it. Scoring it as the worst value instead would
    widen the spread and could hide a real difference. Two failures on one seed tie (0). With one
    failure the extreme is exact; with several, a few coordinate sweeps reach it (or near it).
    """
    def failed(scores: Mapping[Any, float | None], marked: set[Any], seed: Any) -> bool:
        value = scores.get(seed)
        return seed in marked or value is None or not math.isfinite(float(value))

    ours_bad, theirs_bad = set(ours_failed), set(theirs_failed)
    seeds = sorted(set(ours) & set(theirs), key=lambda k: (str(type(k)), k))
    known = [float(v) for k in seeds for m, bad in ((ours, ours_bad), (theirs, theirs_bad))
             if not failed(m, bad, k) for v in (m[k],)]
    if bounds is None:
        bounds = (min(known), max(known)) if known else (0.0, 0.0)
    low, high = min(bounds), max(bounds)
    xs: list[float] = []
    free: list[tuple[int, float, float, bool]] = []  # (index, lo, hi, maximize)
    for seed in seeds:
        a_bad, b_bad = failed(ours, ours_bad, seed), failed(theirs, theirs_bad, seed)
        if a_bad and b_bad:
            xs.append(0.0)
        elif b_bad:  # ours - x for x in [low, high], t made largest: against theirs
            a = float(ours[seed])  # type: ignore[arg-type]
            free.append((len(xs), a - high, a - low, True))
            xs.append(a - (low if sign > 0 else high))
        elif a_bad:  # x - theirs, t made smallest: against ours
            b = float(theirs[seed])  # type: ignore[arg-type]
            free.append((len(xs), low - b, high - b, False))
            xs.append((low if sign > 0 else high) - b)
        else:
            xs.append(float(ours[seed]) - float(theirs[seed]))  # type: ignore[arg-type]
    n = len(xs)
    if n < 2:
        diffs = dict(zip(seeds, xs))
        return PairedTest(diffs, n, xs[0] if xs else None, None, None, None, None)
    for _ in range(4 if len(free) > 1 else 1):
        for i, lo, hi, maximize in free:
            xs[i] = _extreme_coordinate(xs, i, lo, hi, sign, sd_floor, maximize)
    mean = math.fsum(xs) / n
    sd = max(math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)), sd_floor)
    t = _t_value(xs, sign, sd_floor)
    if sd == 0:
        p, p_better = 1.0, 0.5
    else:
        p = min(1.0, 2.0 * (1.0 - t_cdf(abs(t), n - 1)))
        p_better = 1.0 - t_cdf(t, n - 1)
    return PairedTest(dict(zip(seeds, xs)), n, mean, sd, t, p, p_better)


def mean_interval(test: PairedTest, level: float) -> tuple[float, float] | None:
    """The t interval of a test's mean difference at `level`, with the spread the test used."""
    if test.n < 2 or test.mean is None or test.sd is None:
        return None
    half = t_quantile((1.0 + level) / 2.0, test.n - 1) * test.sd / math.sqrt(test.n)
    return test.mean - half, test.mean + half
