"""The ablation table: a grid's cells over their seeds, paired differences against the reference
cell, and the one-line reading of what helps and what hurts.

The verdicts are `compare_cells`: per cell a failure-aware paired t-test against the reference over
the seeds both ran (a failed run scored against its own cell, as in `confirm`; the spread never
below a stepped metric's step / sqrt 6), its two-sided p Holm-adjusted over the table's comparisons,
and the interval it used (95% adjusted by the same factor), so a reading and its interval agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtsearch.config import flatten_keys
from mtsearch.metrics import counterpart_on_test, direction, display_scale, worst_value
from mtsearch.presets import branches_label
from mtsearch.results.report import (
    METRIC_DIGITS,
    Study,
    best_score,
    final_score,
    fmt_number,
    last_tracking_gain,
)
from mtsearch.results.stats import (
    NO_DIFFERENCE,
    Interval,
    holm,
    lattice_step,
    mean_interval,
    paired_differences,
    paired_test,
    summarize,
)

FAILED = ("error", "diverged")  # a run that failed: counted against its cell, as in confirm
ALPHA = 0.05


@dataclass(frozen=True)
class CellScores:
    """What a cell's verdict is decided on: final scores by seed, and the seeds whose run failed."""

    scores: Mapping[Any, float | None]
    failed: frozenset[Any] = frozenset()


@dataclass(frozen=True)
class Comparison:
    """One cell against the reference: the verdict and what it rests on."""

    verdict: str  # helps | hurts | no significant difference | too few pairs
    n: int  # seeds both ran (failures included)
    mean: float | None  # cell - reference, failures scored as the test that decided chose
    p: float | None  # two-sided, this comparison alone
    p_holm: float | None  # Holm-adjusted over the table's comparisons: what the verdict reads
    interval: Interval | None  # the mean's CI at the level the verdict used (95% adjusted)


def compare_cells(reference: CellScores, cells: Mapping[str, CellScores], mode: str,
                  metric: str = "val_hit1", alpha: float = ALPHA) -> dict[str, Comparison]:
    """Each cell against the reference, Holm over the table's comparisons.

    Two one-sided failure-aware paired tests per cell (`stats.paired_test`): "it helps" with its
    failures scored against it and the reference's for it, "it hurts" the other way round; the
    two-sided p is twice the smaller. So a failed run can only make its cell look worse. The
    spread is never taken below a stepped metric's step / sqrt 6 (Hit@1 moves by 1/N videos)."""
    sign = direction(mode).sign
    every = [v for c in (reference, *cells.values()) for s, v in c.scores.items() if s not in c.failed]
    step = lattice_step(every)
    floor = step / math.sqrt(6.0) if step is not None else 0.0
    finite = [float(v) for v in every if v is not None and math.isfinite(float(v))]
    bounds = (0.0, 1.0) if worst_value(metric, mode) is not None else \
        ((min(finite), max(finite)) if finite else (0.0, 0.0))
    tests, raw = {}, {}
    for label, cell in cells.items():
        helps = paired_test(cell.scores, reference.scores, sign, ours_failed=cell.failed,
                            theirs_failed=reference.failed, bounds=bounds, sd_floor=floor)
        hurts = paired_test(reference.scores, cell.scores, sign, ours_failed=reference.failed,
                            theirs_failed=cell.failed, bounds=bounds, sd_floor=floor)
        if helps.p_better is None or hurts.p_better is None:
            tests[label] = None
            continue
        up = helps.p_better <= hurts.p_better
        tests[label] = (up, helps if up else hurts)
        raw[label] = min(1.0, 2.0 * min(helps.p_better, hurts.p_better))
    adjusted = holm(raw)
    out: dict[str, Comparison] = {}
    for label in cells:
        chosen = tests[label]
        if chosen is None:
            n = len(set(cells[label].scores) & set(reference.scores))
            out[label] = Comparison("too few pairs", n, None, None, None, None)
            continue
        up, test = chosen
        p, p_holm = raw[label], adjusted[label]
        level = 1.0 - alpha * (p / p_holm if p_holm > 0 else 1.0 / max(1, len(raw)))
        low, high = mean_interval(test, min(level, 1.0 - 1e-12)) or (None, None)
        mean = test.mean if up else -(test.mean or 0.0)  # cell - reference
        if not up and low is not None and high is not None:
            low, high = -high, -low
        half = None if low is None or high is None else (high - low) / 2
        interval = Interval(test.n, mean, test.sd, half, low, high, level)
        if p_holm < alpha:
            verdict = "helps" if up else "hurts"
        else:
            verdict = NO_DIFFERENCE
        out[label] = Comparison(verdict, test.n, mean, p, p_holm, interval)
    return out


@dataclass
class CellStats:
    """One grid cell over its seeds: statistics of the best and final metric and paired deltas."""

    cell: str
    levels: dict[str, Any]  # the factor values of this cell (keys that vary across cells)
    is_reference: bool
    n: int  # completed runs with a score
    not_counted: dict[str, int]  # runs left out, by status (error, diverged, pruned, running)
    seeds: list[int]
    best: Interval
    final: Interval
    delta_best: Interval | None  # paired (same seeds) cell - reference; None for the reference
    delta_final: Interval | None
    verdict: str | None = None  # on delta_final: helps | hurts | no significant difference | too few pairs
    comparison: Comparison | None = None  # the test behind the verdict (p, Holm's p)
    failed: list[int] = field(default_factory=list)  # seeds whose run failed: counted against the cell
    test: Interval = field(default_factory=lambda: summarize([]))  # final weights, test split
    # does its tracking branch track: the last evaluation's track_gain (built-in set)
    # or cycle_gain (other sets) per run; empty without a tracking branch
    tracking: Interval = field(default_factory=lambda: summarize([]))


@dataclass
class AblationReport:
    study: str
    metric: str
    mode: str
    reference: str | None
    factors: list[str]
    cells: list[CellStats] = field(default_factory=list)
    reading: str = ""
    tracking_gain: str | None = None  # track_gain | cycle_gain: what CellStats.tracking holds


def _flat_config(trial: Mapping[str, Any]) -> dict[str, Any]:
    config = trial.get("config")
    if not config:
        return {}
    return {k: _comparable(k, v) for k, v in flatten_keys(config, "trials.parquet").items()}


def _comparable(key: str, value: Any) -> Any:
    """A hashable, canonical form: branch masks as `cls+track`, numbers as floats, lists as tuples."""
    if key.endswith("branches") and value is not None:
        try:
            return branches_label(value)
        except ValueError:
            pass
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_comparable("", v) for v in value)
    return str(value)


def level_text(value: Any) -> str:
    """A factor level as cell labels spell it (`2` for 2.0, `[a, b]` for a tuple), so the label
    of a study without a `cell` column reads like the ones `mtsearch ablate` writes."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(level_text(v) for v in value) + "]"
    return str(value)


_IGNORED_FACTORS = {"seed", "data.root", "data.cache_dir", "device", "data.workers"}


def ablation(study: Study) -> AblationReport:
    """Per cell n, mean, sd and t interval of the best and final metric, and paired deltas against
    the reference cell over matching seeds. The verdict reads the final scores (a run as it ends),
    through `compare_cells`; the best epoch is a maximum over evaluation noise, biased toward the
    noisier cell, kept for `--optimistic`. A failed run (error, diverged) is counted against its
    cell in the verdict and named (`failed`); the means are over completed runs; pruned and
    running ones are only reported per cell as `not_counted`."""
    grouped, configs = _cells_of(study)
    factors, levels = _factors(study, configs)
    ref_label = study.space.reference_cell()
    if ref_label not in grouped:
        ref_label = None
    per_cell_scores: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
    finals: dict[str, CellScores] = {}
    cells: list[CellStats] = []
    gain_columns: list[str] = []  # which tracking gain the counted runs report
    for label, trials in grouped.items():
        cell, best_by_seed, final_by_seed, gains = _cell_stats(study, label, trials)
        cell.levels, cell.is_reference = levels.get(label, {}), label == ref_label
        per_cell_scores[label] = (best_by_seed, final_by_seed)
        finals[label] = CellScores({**final_by_seed, **dict.fromkeys(cell.failed)}, frozenset(cell.failed))
        cells.append(cell)
        gain_columns += gains

    if ref_label is not None:
        ref_best, _ = per_cell_scores[ref_label]
        others = [c for c in cells if not c.is_reference]
        comparisons = compare_cells(
            finals[ref_label], {c.cell: finals[c.cell] for c in others}, study.mode, study.metric)
        for cell in others:
            best_by_seed, _ = per_cell_scores[cell.cell]
            cell.delta_best = summarize(paired_differences(best_by_seed, ref_best).values())
            cell.comparison = comparisons[cell.cell]
            cell.delta_final = cell.comparison.interval or summarize(
                paired_differences(per_cell_scores[cell.cell][1], per_cell_scores[ref_label][1]).values())
            cell.verdict = cell.comparison.verdict

    sign = -study.direction.sign
    cells.sort(
        key=lambda c: (
            not c.is_reference,
            c.final.mean is None,
            sign * (c.final.mean if c.final.mean is not None else 0.0),
            c.cell,
        )
    )
    report = AblationReport(
        study=study.name,
        metric=study.metric,
        mode=study.mode,
        reference=ref_label,
        factors=factors,
        cells=cells,
        tracking_gain=gain_columns[0] if gain_columns else None,
    )
    report.reading = _reading(report)
    if study.selection_note:
        report.reading += ("\n" if report.reading else "") + study.selection_note
    return report


def _cells_of(study: Study) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """The trials of each cell, and their flat configs (searched values in comparable form)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, list[dict[str, Any]]] = {}
    for trial in study.trials:
        flat = _flat_config(trial)
        flat.update({k: _comparable(k, trial[k]) for k in study.params if trial.get(k) is not None})
        label = trial.get("cell")
        if label is None:
            label = (
                ",".join(f"{k}={level_text(_comparable(k, trial.get(k)))}" for k in study.params)
                or "all"
            )
        grouped.setdefault(str(label), []).append(trial)
        configs.setdefault(str(label), []).append(flat)
    return grouped, configs


def _factors(
    study: Study, configs: dict[str, list[dict[str, Any]]]
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The factors (config keys whose value differs between cells, constant within one; the
    searched keys first) and each cell's level of every factor."""
    cell_levels: dict[str, dict[str, Any]] = {}
    for label, flats in configs.items():
        common = dict(flats[0]) if flats else {}
        for flat in flats[1:]:
            common = {k: v for k, v in common.items() if flat.get(k) == v}
        cell_levels[label] = common
    all_keys = set().union(*(set(v) for v in cell_levels.values())) if cell_levels else set()
    factors = sorted(
        k
        for k in all_keys - _IGNORED_FACTORS
        if len({lv.get(k) for lv in cell_levels.values()}) > 1
    )
    preferred = [k for k in study.params if k in factors]
    factors = preferred + [k for k in factors if k not in preferred]
    return factors, {label: {k: lv.get(k) for k in factors} for label, lv in cell_levels.items()}


def _cell_stats(
    study: Study, label: str, trials: list[dict[str, Any]]
) -> tuple[CellStats, dict[int, float], dict[int, float], list[str]]:
    """One cell's statistics over its completed runs (one per seed), its best and final score by
    seed for the paired deltas, and which tracking gain column its runs reported."""
    best_by_seed: dict[int, float] = {}
    final_by_seed: dict[int, float] = {}
    test_values: list[float | None] = []
    tracking_values: list[float] = []
    gain_columns: list[str] = []
    not_counted: dict[str, int] = {}
    failed: list[int] = []
    for trial in trials:
        status = str(trial.get("status"))
        best = best_score(study, trial)
        if status in FAILED and trial.get("seed") is not None:
            failed.append(int(trial["seed"]))
        if status != "completed" or best is None:
            not_counted[status] = not_counted.get(status, 0) + 1
            continue
        seed = int(trial["seed"]) if trial.get("seed") is not None else len(best_by_seed)
        if seed in best_by_seed:  # a repeated seed: keep the first run, count the extra apart
            not_counted["duplicate seed"] = not_counted.get("duplicate seed", 0) + 1
            continue
        best_by_seed[seed] = best
        final = final_score(study, trial)
        if final is not None:
            final_by_seed[seed] = final
        test_values.append(trial.get(counterpart_on_test(study.metric)))
        gain = last_tracking_gain(study, trial)
        if gain is not None:
            tracking_values.append(gain[1])
            gain_columns.append(gain[0])
    cell = CellStats(
        cell=label,
        levels={},
        is_reference=False,
        n=len(best_by_seed),
        not_counted=not_counted,
        seeds=sorted(best_by_seed),
        best=summarize(best_by_seed.values()),
        final=summarize(final_by_seed.values()),
        delta_best=None,
        delta_final=None,
        test=summarize(test_values),
        tracking=summarize(tracking_values),
        failed=sorted(set(failed) - set(final_by_seed)),
    )
    return cell, best_by_seed, final_by_seed, gain_columns


def _reading(report: AblationReport) -> str:
    """One plain-English line: which cells beat the reference on paired seeds, which do not."""
    if report.reference is None:
        return "No reference cell: set `reference:` in the grid file to get paired comparisons."
    groups: dict[str, list[str]] = {
        "helps": [],
        "hurts": [],
        NO_DIFFERENCE: [],
        "too few pairs": [],
    }
    scale, unit = ablation_scale(report)
    pts = " points" if unit == "%" else ""

    def signed(value: float | None) -> str:
        return fmt_number(value, scale, digits=METRIC_DIGITS, signed=True)

    for cell in report.cells:
        if cell.is_reference or cell.verdict is None or cell.delta_final is None:
            continue
        d = cell.delta_final
        if cell.verdict == "too few pairs":
            groups[cell.verdict].append(cell.cell)
        else:
            c = cell.comparison
            tested = "" if c is None or c.p is None else f", p = {c.p:.2g}, Holm p = {c.p_holm:.2g}"
            failed = f", {len(cell.failed)} failed run(s) counted against it" if cell.failed else ""
            groups[cell.verdict].append(
                f"{cell.cell} ({signed(d.mean)}{pts}, 95% CI {signed(d.low)} to {signed(d.high)}"
                f"{tested}{failed})"
            )
    parts = []
    if groups["helps"]:
        parts.append("helps: " + "; ".join(groups["helps"]))
    if groups["hurts"]:
        parts.append("hurts: " + "; ".join(groups["hurts"]))
    if groups[NO_DIFFERENCE]:
        parts.append(f"{NO_DIFFERENCE}: " + "; ".join(groups[NO_DIFFERENCE]))
    if groups["too few pairs"]:
        parts.append("too few paired seeds to tell: " + ", ".join(groups["too few pairs"]))
    if not parts:
        return f"Only the reference cell {report.reference} has results."
    count = sum(1 for c in report.cells if not c.is_reference and c.comparison is not None
                and c.comparison.p is not None)
    family = f", Holm over the table's {count} comparisons; CIs adjusted to match" if count > 1 else ""
    return (
        f"Against the reference {report.reference} (final {report.metric}, paired over seeds{family}): "
        + "; ".join(parts)
        + "."
    )


def ablation_scale(report: AblationReport) -> tuple[float, str]:
    """`display_scale` decided on the observed means: CI bounds of tiny samples can leave [0, 1]
    legitimately, which must not switch the whole table out of percent."""
    return display_scale(
        report.metric, [v for c in report.cells for v in (c.best.mean, c.final.mean)]
    )


def short_labels(labels: list[str], factors: list[str]) -> tuple[str, list[str]]:
    """(column title, labels): `model.branches=cls+track` -> `cls+track` under `model.branches`
    when a single factor names every cell."""
    if len(factors) == 1:
        prefix = factors[0] + "="
        if all(label.startswith(prefix) for label in labels):
            return factors[0], [label[len(prefix) :] for label in labels]
    return "cell", labels
