"""Leaderboards, ablation statistics and parameter importances from a study folder.

Everything here reads `trials/<name>/` (space.yaml, trials.parquet, epochs.parquet, optuna.db) and
returns plain values; the CLI decides how to show them. The statistics are small-sample honest:
Student-t intervals over seeds and paired differences against the reference cell (same seeds), so a
cell is only said to help when its paired interval excludes zero. The t quantile is computed here
(regularized incomplete beta + bisection) so scipy is not a dependency.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtsearch.errors import InvalidInput
from mtsearch.store import EPOCH_METRICS

# ---- Student t ---------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
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
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


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


def summarize(values: Iterable[float], level: float = 0.95) -> Interval:
    """n, mean, sd (n-1) and the t interval mean ± t_{(1+level)/2, n-1}·sd/√n; NaNs are dropped."""
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
    values: Mapping[Any, float], reference: Mapping[Any, float]
) -> dict[Any, float]:
    """values[k] - reference[k] for every key (seed) present and finite in both, in key order."""
    out: dict[Any, float] = {}
    for key in sorted(set(values) & set(reference), key=lambda k: (str(type(k)), k)):
        a, b = values[key], reference[key]
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            out[key] = float(a) - float(b)
    return out


# ---- reading a study ---------------------------------------------------------------------------

TRIAL_COLUMNS = (
    "trial_id",
    "status",
    "error",
    "seed",
    "epochs_done",
    "best_epoch",
    "best_val_hit1",
    "best_val_hit5",
    "wall_s",
    "config",
    "cell",
)
_FINAL_STATUSES = {
    "completed": 3,
    "pruned": 3,
    "error": 3,
    "diverged": 3,
    "stopped": 3,
    "running": 1,
}


@dataclass
class Study:
    """One study folder, read once: the space file as run and the rows of both Parquet files."""

    path: Path
    name: str
    metric: str
    mode: str  # max | min
    spec: dict[str, Any]
    trials: list[dict[str, Any]]  # one dict per trial (deduplicated by trial_id)
    epochs: dict[str, list[dict[str, Any]]]  # trial_id -> rows sorted by epoch
    params: list[str]  # searched keys (dotted), in the space file's order

    @property
    def is_grid(self) -> bool:
        return "grid" in self.spec or any(t.get("cell") is not None for t in self.trials)

    def curve(self, trial_id: str, metric: str | None = None) -> list[tuple[int, float]]:
        """(epoch, value) pairs of one trial's metric, skipping epochs without it (no eval)."""
        metric = metric or self.metric
        return [
            (int(r["epoch"]), float(r[metric]))
            for r in self.epochs.get(str(trial_id), [])
            if _finite(r.get(metric))
        ]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a Parquet file or folder of part files; parts with drifting schemas are merged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as first_error:
        if not path.is_dir():
            raise InvalidInput(path, None, f"cannot read Parquet: {first_error}") from None
    parts = sorted(p for p in path.rglob("*.parquet") if p.is_file() and not p.name.startswith("."))
    tables = []
    for part in parts:
        try:
            tables.append(pq.read_table(part))
        except (pa.ArrowException, OSError):
            continue  # a part being written right now; its rows show up on the next read
    if not tables:
        return []
    return pa.concat_tables(tables, promote_options="permissive").to_pylist()


def _dedupe_trials(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial_id: a final status beats `running`, then more epochs, then the later row."""
    best: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
    for order, row in enumerate(rows):
        tid = str(row.get("trial_id"))
        key = (
            _FINAL_STATUSES.get(str(row.get("status")), 0),
            int(row.get("epochs_done") or 0),
            order,
        )
        if tid not in best or key >= best[tid][0]:
            best[tid] = (key, row)
    return [row for _, row in sorted(best.values(), key=lambda kv: kv[0][2])]


def _param_columns(spec: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    """Searched keys: the space/grid keys that are columns, else the config-key columns present."""
    from mtsearch.config import config_keys

    listed = list((spec.get("space") or {}).keys()) + list((spec.get("grid") or {}).keys())
    params = [k for k in listed if isinstance(k, str) and k in columns]
    if params:
        return params
    known = set(config_keys()) - {"seed"}
    return [c for c in columns if c in known]


def load_study(path: str | Path) -> Study:
    """Read a study folder; a missing folder or trials.parquet is `InvalidInput` naming the path."""
    from mtsearch.yamlio import read_yaml

    path = Path(path)
    if not path.is_dir():
        raise InvalidInput(
            path, None, "no such study folder (expected trials/<name>/ from `mtsearch run`)"
        )
    trials_path = path / "trials.parquet"
    if not trials_path.exists():
        raise InvalidInput(trials_path, None, "not found: this folder holds no study results yet")
    space_path = path / "space.yaml"
    spec: dict[str, Any] = {}
    if space_path.exists():
        loaded = read_yaml(space_path)
        if loaded is not None and not isinstance(loaded, Mapping):
            raise InvalidInput(space_path, None, "expected a mapping", type(loaded).__name__)
        spec = dict(loaded or {})
    metric = str(spec.get("metric", "val_hit1"))
    mode = str(spec.get("mode", "max"))
    if mode not in ("max", "min"):
        raise InvalidInput(space_path, "mode", "must be max or min", mode)
    if metric not in EPOCH_METRICS:
        raise InvalidInput(
            space_path,
            "metric",
            f"must be one of the epoch metrics {', '.join(EPOCH_METRICS)}",
            metric,
        )

    raw_trials = _read_parquet_rows(trials_path)
    trials = _dedupe_trials(raw_trials)
    columns = list(raw_trials[0].keys()) if raw_trials else []
    epochs: dict[str, dict[int, dict[str, Any]]] = {}
    epochs_path = path / "epochs.parquet"
    if epochs_path.exists():
        for row in _read_parquet_rows(epochs_path):
            if row.get("epoch") is None:
                continue
            epochs.setdefault(str(row.get("trial_id")), {})[int(row["epoch"])] = (
                row  # last write wins
            )
    sorted_epochs = {tid: [rows[e] for e in sorted(rows)] for tid, rows in epochs.items()}
    return Study(
        path=path,
        name=str(spec.get("name", path.name)),
        metric=metric,
        mode=mode,
        spec=spec,
        trials=trials,
        epochs=sorted_epochs,
        params=_param_columns(spec, columns),
    )


# ---- per-trial scores --------------------------------------------------------------------------


def best_score(study: Study, trial: Mapping[str, Any]) -> float | None:
    """The trial's best value of the study metric: the trainer's `best_<metric>` column when the
    metric is val_hit1/val_hit5 maximised, otherwise the best epoch value in epochs.parquet."""
    column = f"best_{study.metric}"
    if study.mode == "max" and _finite(trial.get(column)):
        return float(trial[column])
    values = [v for _, v in study.curve(str(trial.get("trial_id")))]
    if not values:
        return None
    return max(values) if study.mode == "max" else min(values)


def final_score(study: Study, trial: Mapping[str, Any]) -> float | None:
    """The metric at the trial's last evaluated epoch (what a run without early stopping ends at)."""
    curve = study.curve(str(trial.get("trial_id")))
    if curve:
        return curve[-1][1]
    return best_score(study, trial) if trial.get("status") == "completed" else None


def _better(mode: str, a: float, b: float) -> bool:
    return a > b if mode == "max" else a < b


# ---- leaderboard -------------------------------------------------------------------------------


@dataclass
class Leaderboard:
    """Ranked trials (those with a score) and the rest (no score yet, error, diverged).

    A trial is ranked when it has a finite value of the metric and did not fail: completed, pruned
    (a lower-fidelity score, shown with its status) and running trials alike, as Ray Tune ranks them.
    Unranked trials are listed apart with their error line, never mixed into the ranking.
    """

    study: str
    metric: str
    mode: str
    params: list[str]
    rows: list[dict[str, Any]]  # rank, trial_id, status, <metric>, final, <params...>, seed, ...
    unranked: list[dict[str, Any]]  # trial_id, status, error, epochs_done
    counts: dict[str, int]
    total_ranked: int


def _param_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        from mtsearch.config import branches_label

        try:
            return branches_label(list(value))
        except ValueError:
            return ",".join(str(v) for v in value)
    return value


def leaderboard(study: Study, top: int | None = None) -> Leaderboard:
    """Trials ranked by the study metric (best per `mode`); ties keep trial order."""
    counts: dict[str, int] = {}
    scored: list[tuple[float, int, dict[str, Any]]] = []
    unranked: list[dict[str, Any]] = []
    for order, trial in enumerate(study.trials):
        status = str(trial.get("status"))
        counts[status] = counts.get(status, 0) + 1
        score = best_score(study, trial)
        if score is None or status in ("error", "diverged"):
            unranked.append(
                {
                    "trial_id": str(trial.get("trial_id")),
                    "status": status,
                    "error": trial.get("error"),
                    "epochs_done": trial.get("epochs_done"),
                }
            )
            continue
        scored.append((score, order, trial))
    sign = -1.0 if study.mode == "max" else 1.0
    scored.sort(key=lambda item: (sign * item[0], item[1]))
    rows = []
    for rank, (score, _, trial) in enumerate(scored, start=1):
        row: dict[str, Any] = {
            "rank": rank,
            "trial_id": str(trial.get("trial_id")),
            "status": trial.get("status"),
            study.metric: score,
            f"final_{study.metric}": final_score(study, trial),
        }
        if trial.get("cell") is not None:
            row["cell"] = trial["cell"]
        for key in study.params:
            row[key] = _param_value(trial.get(key))
        row.update(
            {
                "seed": trial.get("seed"),
                "epochs_done": trial.get("epochs_done"),
                "best_epoch": trial.get("best_epoch"),
                "wall_s": trial.get("wall_s"),
            }
        )
        rows.append(row)
    total = len(rows)
    if top is not None:
        if top < 1:
            raise InvalidInput(None, "--top", "must be >= 1", top)
        rows = rows[:top]
    return Leaderboard(
        study=study.name,
        metric=study.metric,
        mode=study.mode,
        params=study.params,
        rows=rows,
        unranked=unranked,
        counts=counts,
        total_ranked=total,
    )


def ranked_trial(study: Study, rank: int) -> dict[str, Any]:
    """The trial row at 1-based `rank`; out of range is `InvalidInput`."""
    board = leaderboard(study)
    if rank < 1 or rank > board.total_ranked:
        raise InvalidInput(
            study.path,
            "--rank",
            f"must be between 1 and {board.total_ranked} (the number of ranked trials)",
            rank,
        )
    trial_id = board.rows[rank - 1]["trial_id"]
    return next(t for t in study.trials if str(t.get("trial_id")) == trial_id)


def trial_config(study: Study, trial: Mapping[str, Any]):  # -> TrialConfig
    """The trial's full resolved config, parsed and validated from the `config` JSON column."""
    from mtsearch.config import TrialConfig

    source = f"{study.path / 'trials.parquet'} (trial {trial.get('trial_id')})"
    text = trial.get("config")
    if not text:
        raise InvalidInput(source, "config", "the trial has no stored config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(source, "config", f"not valid JSON: {exc.msg}") from None
    return TrialConfig.from_mapping(data, source)


# ---- ablation ----------------------------------------------------------------------------------


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
    verdict: str | None = None  # helps | hurts | indistinguishable | too few pairs


@dataclass
class AblationReport:
    study: str
    metric: str
    mode: str
    reference: str | None
    factors: list[str]
    cells: list[CellStats] = field(default_factory=list)
    reading: str = ""


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config mapping -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _flat_config(trial: Mapping[str, Any]) -> dict[str, Any]:
    text = trial.get("config")
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return {k: _comparable(k, v) for k, v in _flatten(data).items()}


def _comparable(key: str, value: Any) -> Any:
    """A hashable, canonical form: branch masks as `cls+track`, numbers as floats, lists as tuples."""
    if key.endswith("branches") and value is not None:
        try:
            from mtsearch.config import branches_label

            return branches_label(value if isinstance(value, (list, tuple)) else str(value))
        except ValueError:
            pass
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_comparable("", v) for v in value)
    return str(value)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


_IGNORED_FACTORS = {"seed", "data.root", "data.cache_dir", "device", "data.workers"}


def _reference_cell(study: Study, cells: dict[str, dict[str, Any]]) -> str | None:
    """The cell named by the space file's `reference:` (a label or a mapping of key -> value)."""
    ref = study.spec.get("reference")
    if ref is None:
        return None
    if isinstance(ref, str):
        if ref in cells:
            return ref
        wanted = {}
        for part in ref.replace(";", ",").split(","):
            if "=" in part:
                key, _, value = part.partition("=")
                wanted[key.strip()] = value.strip()
        ref = wanted
    if isinstance(ref, Mapping):
        from mtsearch.config import flatten_keys

        try:
            wanted_flat = flatten_keys(ref, study.path / "space.yaml")
        except InvalidInput:
            wanted_flat = {str(k): v for k, v in ref.items()}
        for label, levels in cells.items():
            if all(_matches(key, value, levels.get(key)) for key, value in wanted_flat.items()):
                return label
    return None


def _matches(key: str, wanted: Any, have: Any) -> bool:
    if have is None:
        return False
    if isinstance(wanted, str) and not key.endswith("branches"):
        try:
            return float(wanted) == have
        except (TypeError, ValueError):
            return wanted == have
    return _comparable(key, wanted) == have


def ablation(study: Study) -> AblationReport:
    """Per cell n, mean, sd and t interval of the best and final metric, and paired deltas against
    the reference cell over matching seeds. Only completed runs count (a pruned or failed run has
    no comparable final value); the rest are reported per cell as `not_counted`."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, list[dict[str, Any]]] = {}
    for trial in study.trials:
        flat = _flat_config(trial)
        flat.update({k: _comparable(k, trial[k]) for k in study.params if trial.get(k) is not None})
        label = trial.get("cell")
        if label is None:
            label = (
                ",".join(f"{k}={_show(_comparable(k, trial.get(k)))}" for k in study.params)
                or "all"
            )
        grouped.setdefault(str(label), []).append(trial)
        configs.setdefault(str(label), []).append(flat)

    # factors: config keys whose value differs between cells (constant within a cell)
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
        if len({_freeze(lv.get(k)) for lv in cell_levels.values()}) > 1
    )
    preferred = [k for k in study.params if k in factors]
    factors = preferred + [k for k in factors if k not in preferred]
    levels = {label: {k: lv.get(k) for k in factors} for label, lv in cell_levels.items()}
    ref_label = _reference_cell(study, cell_levels)

    per_cell_scores: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
    cells: list[CellStats] = []
    for label, trials in grouped.items():
        best_by_seed: dict[int, float] = {}
        final_by_seed: dict[int, float] = {}
        not_counted: dict[str, int] = {}
        for trial in trials:
            status = str(trial.get("status"))
            best = best_score(study, trial)
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
        per_cell_scores[label] = (best_by_seed, final_by_seed)
        cells.append(
            CellStats(
                cell=label,
                levels=levels.get(label, {}),
                is_reference=label == ref_label,
                n=len(best_by_seed),
                not_counted=not_counted,
                seeds=sorted(best_by_seed),
                best=summarize(best_by_seed.values()),
                final=summarize(final_by_seed.values()),
                delta_best=None,
                delta_final=None,
            )
        )

    if ref_label is not None:
        ref_best, ref_final = per_cell_scores[ref_label]
        for cell in cells:
            if cell.is_reference:
                continue
            best_by_seed, final_by_seed = per_cell_scores[cell.cell]
            cell.delta_best = summarize(paired_differences(best_by_seed, ref_best).values())
            cell.delta_final = summarize(paired_differences(final_by_seed, ref_final).values())
            cell.verdict = _verdict(cell.delta_best, study.mode)

    sign = -1.0 if study.mode == "max" else 1.0
    cells.sort(
        key=lambda c: (
            not c.is_reference,
            c.best.mean is None,
            sign * (c.best.mean if c.best.mean is not None else 0.0),
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
    )
    report.reading = _reading(report)
    return report


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _verdict(delta: Interval, mode: str) -> str:
    if delta.n < 2 or delta.low is None or delta.high is None:
        return "too few pairs"
    good_low, good_high = (delta.low, delta.high) if mode == "max" else (-delta.high, -delta.low)
    if good_low > 0:
        return "helps"
    if good_high < 0:
        return "hurts"
    return "indistinguishable"


def metric_unit(metric: str, values: Iterable[float | None]) -> tuple[float, str]:
    """(scale, unit) for showing a metric: hit rates and accuracies in [0, 1] as percent points."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if ("hit" in metric or "acc" in metric) and finite and all(0.0 <= v <= 1.0 for v in finite):
        return 100.0, "%"
    return 1.0, ""


def _report_scale(report: AblationReport) -> tuple[float, str]:
    """Decided on the observed means: CI bounds of tiny samples can leave [0, 1] legitimately."""
    return metric_unit(
        report.metric, [v for c in report.cells for v in (c.best.mean, c.final.mean)]
    )


def _reading(report: AblationReport) -> str:
    """One plain-English line: which cells beat the reference on paired seeds, which do not."""
    if report.reference is None:
        return "No reference cell: set `reference:` in the grid file to get paired comparisons."
    groups: dict[str, list[str]] = {
        "helps": [],
        "hurts": [],
        "indistinguishable": [],
        "too few pairs": [],
    }
    scale, unit = _report_scale(report)
    pts = " points" if unit == "%" else ""
    for cell in report.cells:
        if cell.is_reference or cell.verdict is None or cell.delta_best is None:
            continue
        d = cell.delta_best
        if cell.verdict == "too few pairs":
            groups[cell.verdict].append(cell.cell)
        else:
            groups[cell.verdict].append(
                f"{cell.cell} ({_fmt_scaled(d.mean, scale, True)}{pts}, 95% CI "
                f"{_fmt_scaled(d.low, scale, True)} to {_fmt_scaled(d.high, scale, True)})"
            )
    parts = []
    if groups["helps"]:
        parts.append("helps: " + "; ".join(groups["helps"]))
    if groups["hurts"]:
        parts.append("hurts: " + "; ".join(groups["hurts"]))
    if groups["indistinguishable"]:
        parts.append("indistinguishable from it: " + "; ".join(groups["indistinguishable"]))
    if groups["too few pairs"]:
        parts.append("too few paired seeds to tell: " + ", ".join(groups["too few pairs"]))
    if not parts:
        return f"Only the reference cell {report.reference} has results."
    return (
        f"Against the reference {report.reference} (best {report.metric}, paired over seeds): "
        + "; ".join(parts)
        + "."
    )


# ---- parameter importances ---------------------------------------------------------------------

MIN_TRIALS_FOR_IMPORTANCE = 4


@dataclass
class Importances:
    """Optuna's PED-ANOVA importances (normalised to sum 1), or why there are none.

    PED-ANOVA is Optuna 5's default evaluator and needs no scikit-learn (fANOVA does)."""

    values: dict[str, float]
    completed_trials: int
    evaluator: str
    reason: str | None = None


def param_importances(study: Study) -> Importances:
    """Importances of the searched keys from `optuna.db`, over the study's completed trials.

    Fewer than MIN_TRIALS_FOR_IMPORTANCE completed trials give no numbers (with the reason): a
    forest fitted on two or three points ranks parameters by noise.
    """
    db = study.path / "optuna.db"
    if not db.exists():
        return Importances({}, 0, "PED-ANOVA", f"no Optuna study at {db}")
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = f"sqlite:///{db.resolve()}"
    try:
        names = optuna.get_all_study_names(storage=storage_url)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign sqlite file: say so, don't crash
        return Importances({}, 0, "PED-ANOVA", f"cannot read {db}: {exc}")
    if not names:
        return Importances({}, 0, "PED-ANOVA", f"{db} holds no study")
    name = study.name if study.name in names else names[-1]
    ostudy = optuna.load_study(study_name=name, storage=storage_url)
    completed = [
        t
        for t in ostudy.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCE:
        return Importances(
            {},
            len(completed),
            "PED-ANOVA",
            f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials (has {len(completed)})",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna flags the evaluator as experimental
        raw = optuna.importance.get_param_importances(
            ostudy, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
    used = "PED-ANOVA"
    values = {key.replace("/", "."): float(v) for key, v in raw.items()}
    return Importances(values, len(completed), used)


# ---- text renderings (markdown, csv, json) -----------------------------------------------------


def fmt_number(value: Any, scale: float = 1.0, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value * scale:.{digits}g}"


def leaderboard_columns(board: Leaderboard) -> list[str]:
    cols = ["rank", "trial_id", "status", board.metric, f"final_{board.metric}"]
    if any("cell" in r for r in board.rows):
        cols.append("cell")
    return cols + board.params + ["seed", "epochs_done", "best_epoch", "wall_s"]


def leaderboard_cells(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and rows of strings for tables (metric in percent when it is a hit rate)."""
    cols = leaderboard_columns(board)
    scale, unit = metric_unit(board.metric, [r.get(board.metric) for r in board.rows])
    header = [
        f"{c} ({unit})" if unit and c in (board.metric, f"final_{board.metric}") else c
        for c in cols
    ]
    body = []
    for row in board.rows:
        line = []
        for c in cols:
            value = row.get(c)
            if c in (board.metric, f"final_{board.metric}"):
                line.append("–" if value is None else _fmt_scaled(value, scale))
            elif c == "wall_s":
                line.append("–" if value is None else f"{value:.1f}")
            else:
                line.append(fmt_number(value))
        body.append(line)
    return header, body


def leaderboard_footer(board: Leaderboard) -> list[str]:
    """Lines under the table: status counts, trials not ranked and their error lines."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(board.counts.items(), key=lambda kv: -kv[1]))
    order = "highest" if board.mode == "max" else "lowest"
    total = sum(board.counts.values())
    lines = [
        f"{board.total_ranked} ranked of {total} trials ({counts}); ranked by {order} {board.metric}"
    ]
    if board.unranked:
        lines.append(f"not ranked (no score or failed): {len(board.unranked)}")
        for row in board.unranked[:10]:
            error = f": {row['error']}" if row.get("error") else ""
            lines.append(f"  {row['trial_id']} {row['status']}{error}")
    return lines


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align_right: Sequence[bool]
) -> str:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|")

    out = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join("---:" if r else ":---" for r in align_right) + "|",
    ]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _numeric_column(rows: Sequence[Sequence[str]], index: int) -> bool:
    def numeric(text: str) -> bool:
        try:
            float(text.replace("±", "").split()[0].strip("[]+%"))
            return True
        except (ValueError, IndexError):
            return text == "–"

    return bool(rows) and all(numeric(r[index]) for r in rows)


def leaderboard_markdown(board: Leaderboard) -> str:
    header, body = leaderboard_cells(board)
    align = [_numeric_column(body, i) for i in range(len(header))]
    text = f"**{board.study}**: trials ranked by {board.metric} ({board.mode})\n\n"
    text += markdown_table(header, body, align)
    return text + "\n" + "\n".join(f"{line}  " for line in leaderboard_footer(board)) + "\n"


def leaderboard_csv(board: Leaderboard) -> str:
    """Raw values (no scaling), one line per ranked trial, header first."""
    cols = leaderboard_columns(board)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in board.rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    return buf.getvalue()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def leaderboard_json(board: Leaderboard) -> str:
    return json.dumps(_json_safe(asdict(board)), indent=2) + "\n"


def _fmt_scaled(value: float, scale: float, signed: bool = False) -> str:
    """Percent points with one decimal (paper style), other metrics with 3 significant digits."""
    sign = "+" if signed else ""
    return f"{value * scale:{sign}.1f}" if scale == 100.0 else f"{value * scale:{sign}.3g}"


def interval_text(iv: Interval | None, scale: float, signed: bool = False) -> tuple[str, str]:
    """('mean ± sd', '[low, high]') strings; '–' where undefined."""
    if iv is None or iv.mean is None:
        return "–", "–"
    mean = _fmt_scaled(iv.mean, scale, signed)
    spread = f"{mean} ± {_fmt_scaled(iv.sd, scale)}" if iv.sd is not None else mean
    ci = (
        f"[{_fmt_scaled(iv.low, scale, signed)}, {_fmt_scaled(iv.high, scale, signed)}]"
        if iv.low is not None
        else "–"
    )
    return spread, ci


def short_labels(labels: list[str], factors: list[str]) -> tuple[str, list[str]]:
    """(column title, labels): `model.branches=cls+track` -> `cls+track` under `model.branches`
    when a single factor names every cell."""
    if len(factors) == 1:
        prefix = factors[0] + "="
        if all(label.startswith(prefix) for label in labels):
            return factors[0], [label[len(prefix) :] for label in labels]
    return "cell", labels


def ablation_cells(report: AblationReport) -> tuple[list[str], list[list[str]]]:
    scale, unit = _report_scale(report)
    u = f" ({unit})" if unit else ""
    title, names = short_labels([c.cell for c in report.cells], report.factors)
    header = [
        title,
        "n",
        f"best{u} mean ± sd",
        "best 95% CI",
        f"final{u} mean ± sd",
        "final 95% CI",
        f"Δ best vs ref{u}",
        "Δ best 95% CI",
        f"Δ final vs ref{u}",
        "Δ final 95% CI",
        "reading",
    ]
    rows = []
    for name, cell in zip(names, report.cells):
        best = interval_text(cell.best, scale)
        final = interval_text(cell.final, scale)
        if cell.is_reference:
            d_best = d_final = ("reference", "–")
        else:
            d_best = interval_text(cell.delta_best, scale, signed=True)
            d_final = interval_text(cell.delta_final, scale, signed=True)
        n = str(cell.n)
        if cell.not_counted:
            n += " (+" + ", ".join(f"{k} {v}" for k, v in sorted(cell.not_counted.items())) + ")"
        rows.append(
            [
                name + (" (ref)" if cell.is_reference else ""),
                n,
                *best,
                *final,
                *d_best,
                *d_final,
                "reference" if cell.is_reference else (cell.verdict or "–"),
            ]
        )
    return header, rows


def ablation_markdown(report: AblationReport) -> str:
    header, rows = ablation_cells(report)
    align = [False, False] + [True] * 8 + [False]
    caption = (
        f"**{report.study}**: {report.metric} ({report.mode}) per cell over seeds, mean ± sd, "
        f"95% Student-t CI; Δ = paired difference against the reference cell on the same seeds.\n\n"
    )
    return caption + markdown_table(header, rows, align) + "\n" + report.reading + "\n"


def ablation_csv(report: AblationReport) -> str:
    """Raw values, one line per cell, for spreadsheets and scripts."""
    cols = ["cell", "is_reference", "n", "seeds"]
    for part in ("best", "final", "delta_best", "delta_final"):
        cols += (
            [f"{part}_{k}" for k in ("n", "mean", "sd", "low", "high")]
            if part.startswith("delta")
            else [f"{part}_{k}" for k in ("mean", "sd", "low", "high")]
        )
    cols += ["verdict"] + [f"level:{f}" for f in report.factors]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for cell in report.cells:
        line: list[Any] = [cell.cell, cell.is_reference, cell.n, " ".join(map(str, cell.seeds))]
        for part in ("best", "final", "delta_best", "delta_final"):
            iv: Interval | None = getattr(cell, part)
            keys = (
                ("n", "mean", "sd", "low", "high")
                if part.startswith("delta")
                else ("mean", "sd", "low", "high")
            )
            line += ["" if iv is None or getattr(iv, k) is None else getattr(iv, k) for k in keys]
        line += [cell.verdict or ""] + [_show(cell.levels.get(f)) for f in report.factors]
        writer.writerow(line)
    return buf.getvalue()


def ablation_json(report: AblationReport) -> str:
    return json.dumps(_json_safe(asdict(report)), indent=2) + "\n"
