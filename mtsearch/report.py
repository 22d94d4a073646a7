"""Report data from a study folder: the leaderboard, the ablation table, the exported config, importances.

Everything here reads `trials/<name>/` (space.yaml through `mtsearch.space`, trials.parquet and
epochs.parquet through `mtsearch.store`, optuna.db) and returns plain values: `mtsearch.cli.render`
lays them out as text and `mtsearch.plots` as figures. The interval arithmetic lives in
`mtsearch.stats`; what is decided here is which numbers go in (completed runs, paired seeds) and how a
metric is shown (`fmt_number`; scales in `metrics.py`), since the report's reading line shows numbers too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsearch.config import TrialConfig, branches_label, flatten_keys
from mtsearch.errors import InvalidInput
from mtsearch.metrics import MAXIMISE, Direction, counterpart_on_test, direction, display_scale
from mtsearch.records import config_from_record, recorded_selection
from mtsearch.space import SpaceSpec, factor_keys, load_study_space
from mtsearch.stats import Interval, paired_differences, paired_verdict, summarize
from mtsearch.store import EPOCHS_FILE, TRIALS_FILE, epoch_rows, is_ranked, trial_rows

# ---- reading a study ---------------------------------------------------------------------------


@dataclass
class Study:
    """One study folder, read once: the space it was run with and the rows of both Parquet files."""

    path: Path
    space: SpaceSpec
    trials: list[dict[str, Any]]  # one dict per trial, `config` decoded
    epochs: dict[str, list[dict[str, Any]]]  # trial_id -> rows sorted by epoch
    params: list[str]  # searched keys that are trials.parquet columns, in the space's order

    @property
    def name(self) -> str:
        return self.space.name

    @property
    def metric(self) -> str:
        return self.space.metric

    @property
    def mode(self) -> str:  # max | min
        return self.space.mode

    @property
    def direction(self) -> Direction:
        return direction(self.space.mode)

    @property
    def spec(self) -> dict[str, Any]:
        """The space as space.yaml spells it (`space: {key: {loguniform: [lo, hi]}}`, ...)."""
        return self.space.to_dict()

    @property
    def is_ablation(self) -> bool:
        """A grid file's study (`mtsearch ablate`): trials are cells repeated over seeds."""
        return self.space.is_ablation

    @property
    def selection(self) -> str:
        """The split that selected: `val`, or `test` (data.selection: test, or a study
        recorded before validation splits existed)."""
        for trial in self.trials:
            config = trial.get("config")
            if config:
                return recorded_selection(config)
        return "val"

    @property
    def selection_note(self) -> str | None:
        """The one line every report carries when the test split did the selecting."""
        if self.selection != "test":
            return None
        return ("selection was made on the test split (data.selection: test, the thesis's protocol): "
                "val_* are test figures and the best of them is biased upwards")

    def curve(self, trial_id: str, metric: str | None = None) -> list[tuple[int, float]]:
        """(epoch, value) pairs of one trial's metric, skipping epochs without it (no eval, or a
        column older epochs.parquet files lack)."""
        metric = metric or self.metric
        return [
            (int(r["epoch"]), float(r[metric]))
            for r in self.epochs.get(str(trial_id), [])
            if _finite(r.get(metric))
        ]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_rows(read: Callable[[Path], list[dict[str, Any]]], path: Path) -> list[dict[str, Any]]:
    """Rows through the store's reader; a damaged file is `InvalidInput` naming it, not a traceback."""
    import pyarrow as pa

    try:
        return read(path.parent)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInput(path, None, f"cannot read Parquet: {exc}") from None


def load_study(path: str | Path) -> Study:
    """Read a study folder; a missing folder, trials.parquet or space.yaml is `InvalidInput`."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidInput(
            path, None, "no such study folder (expected trials/<name>/ from `mtsearch run`)"
        )
    trials_path = path / TRIALS_FILE
    if not trials_path.exists():
        raise InvalidInput(trials_path, None, "not found: this folder holds no study results yet")
    space = load_study_space(path)
    trials = _read_rows(trial_rows, trials_path)
    epochs: dict[str, list[dict[str, Any]]] = {}
    if (path / EPOCHS_FILE).exists():
        for row in _read_rows(epoch_rows, path / EPOCHS_FILE):
            epochs.setdefault(str(row["trial_id"]), []).append(row)
    for rows in epochs.values():
        rows.sort(key=lambda r: int(r["epoch"]))
    columns = trials[0].keys() if trials else ()
    params = [k for factor in space.space for k in factor_keys(factor) if k in columns]
    return Study(path=path, space=space, trials=trials, epochs=epochs, params=params)


# ---- per-trial scores --------------------------------------------------------------------------


def best_score(study: Study, trial: Mapping[str, Any]) -> float | None:
    """The trial's best value of the study metric: the trainer's `best_<metric>` column when the
    metric is val_hit1/val_hit5 maximised, otherwise the best epoch value in epochs.parquet."""
    column = f"best_{study.metric}"
    if study.direction == MAXIMISE and _finite(trial.get(column)):
        return float(trial[column])
    values = [v for _, v in study.curve(str(trial.get("trial_id")))]
    if not values:
        return None
    return study.direction.best(values)


def final_score(study: Study, trial: Mapping[str, Any]) -> float | None:
    """The metric at the trial's last evaluated epoch (what a run without early stopping ends at)."""
    curve = study.curve(str(trial.get("trial_id")))
    if curve:
        return curve[-1][1]
    return best_score(study, trial) if trial.get("status") == "completed" else None


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
    selection_note: str | None = None  # set when the test split selected


def param_display_value(value: Any) -> Any:
    """A searched value as tables and axes show it: a branch list as its label `cls+track`."""
    if isinstance(value, (list, tuple)):
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
        if not is_ranked(status, score):
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
    scored.sort(key=lambda item: (study.direction.rank_key(item[0]), item[1]))
    rows = []
    for rank, (score, _, trial) in enumerate(scored, start=1):
        row: dict[str, Any] = {
            "rank": rank,
            "trial_id": str(trial.get("trial_id")),
            "status": trial.get("status"),
            study.metric: score,
            f"final_{study.metric}": final_score(study, trial),
            "test_hit1": trial.get("test_hit1"),
        }
        if trial.get("cell") is not None:
            row["cell"] = trial["cell"]
        for key in study.params:
            row[key] = param_display_value(trial.get(key))
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
        selection_note=study.selection_note,
    )


def ranked_trial(study: Study, rank: int) -> dict[str, Any]:
    """The trial row at 1-based `rank`; out of range is `InvalidInput`."""
    board = leaderboard(study)
    if board.total_ranked == 0:
        counts = ", ".join(f"{n} {status}" for status, n in board.counts.items())
        raise InvalidInput(
            study.path,
            "--rank",
            f"no trial has a {study.metric} score yet ({len(study.trials)} trials"
            + (f": {counts}" if counts else "") + "); nothing to rank",
            rank,
        )
    if rank < 1 or rank > board.total_ranked:
        raise InvalidInput(
            study.path,
            "--rank",
            f"must be between 1 and {board.total_ranked} (the number of ranked trials)",
            rank,
        )
    trial_id = board.rows[rank - 1]["trial_id"]
    return next(t for t in study.trials if str(t.get("trial_id")) == trial_id)


def trial_config(study: Study, trial: Mapping[str, Any]) -> TrialConfig:
    """The trial's full resolved config, validated from the stored `config` column."""
    source = f"{study.path / TRIALS_FILE} (trial {trial.get('trial_id')})"
    config = trial.get("config")
    if not config:
        raise InvalidInput(source, "config", "the trial has no stored config")
    return config_from_record(config, source)


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
    the reference cell over matching seeds. Only completed runs count (a pruned or failed run has
    no comparable final value); the rest are reported per cell as `not_counted`."""
    grouped, configs = _cells_of(study)
    factors, levels = _factors(study, configs)
    ref_label = study.space.reference_cell()
    if ref_label not in grouped:
        ref_label = None
    per_cell_scores: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
    cells: list[CellStats] = []
    gain_columns: list[str] = []  # which tracking gain the counted runs report
    for label, trials in grouped.items():
        cell, best_by_seed, final_by_seed, gains = _cell_stats(study, label, trials)
        cell.levels, cell.is_reference = levels.get(label, {}), label == ref_label
        per_cell_scores[label] = (best_by_seed, final_by_seed)
        cells.append(cell)
        gain_columns += gains

    if ref_label is not None:
        ref_best, ref_final = per_cell_scores[ref_label]
        for cell in cells:
            if cell.is_reference:
                continue
            best_by_seed, final_by_seed = per_cell_scores[cell.cell]
            cell.delta_best = summarize(paired_differences(best_by_seed, ref_best).values())
            cell.delta_final = summarize(paired_differences(final_by_seed, ref_final).values())
            cell.verdict = paired_verdict(cell.delta_best, study.mode)

    sign = -study.direction.sign
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
    )
    return cell, best_by_seed, final_by_seed, gain_columns


# ---- showing numbers (tables, the reading line, figures) ---------------------------------------

METRIC_DIGITS = 3  # significant digits of a metric value that is not a percentage


TRACKING_GAINS = ("track_gain", "cycle_gain")  # ground truth where it exists


def last_tracking_gain(study: Study, trial: Mapping[str, Any]) -> tuple[str, float] | None:
    """(column, value) of a run's last evaluated track_gain, else cycle_gain; None without."""
    for column in TRACKING_GAINS:
        curve = study.curve(str(trial["trial_id"]), column)
        if curve:
            return column, curve[-1][1]
    return None


def ablation_scale(report: AblationReport) -> tuple[float, str]:
    """`display_scale` decided on the observed means: CI bounds of tiny samples can leave [0, 1]
    legitimately, which must not switch the whole table out of percent."""
    return display_scale(
        report.metric, [v for c in report.cells for v in (c.best.mean, c.final.mean)]
    )


def fmt_number(
    value: Any,
    scale: float = 1.0,
    *,
    digits: int = 4,
    decimals: int | None = None,
    signed: bool = False,
) -> str:
    """The one way a number becomes text in reports: '–' when missing, ints and non-numbers as
    they are, percent points (scale 100) with one decimal as papers print them, `decimals` fixed
    decimals (seconds), otherwise `digits` significant digits; `signed` for differences."""
    if value is None:
        return "–"
    if isinstance(value, (bool, int)) or not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    if decimals is None and scale == 100.0:
        decimals = 1
    sign = "+" if signed else ""
    precision = f".{decimals}f" if decimals is not None else f".{digits}g"
    return format(value * scale, sign + precision)


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
    scale, unit = ablation_scale(report)
    pts = " points" if unit == "%" else ""

    def signed(value: float | None) -> str:
        return fmt_number(value, scale, digits=METRIC_DIGITS, signed=True)

    for cell in report.cells:
        if cell.is_reference or cell.verdict is None or cell.delta_best is None:
            continue
        d = cell.delta_best
        if cell.verdict == "too few pairs":
            groups[cell.verdict].append(cell.cell)
        else:
            groups[cell.verdict].append(
                f"{cell.cell} ({signed(d.mean)}{pts}, 95% CI {signed(d.low)} to {signed(d.high)})"
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


def short_labels(labels: list[str], factors: list[str]) -> tuple[str, list[str]]:
    """(column title, labels): `model.branches=cls+track` -> `cls+track` under `model.branches`
    when a single factor names every cell."""
    if len(factors) == 1:
        prefix = factors[0] + "="
        if all(label.startswith(prefix) for label in labels):
            return factors[0], [label[len(prefix) :] for label in labels]
    return "cell", labels


# ---- parameter importances ---------------------------------------------------------------------

MIN_TRIALS_FOR_IMPORTANCE = 4
IMPORTANCE_EVALUATOR = "PED-ANOVA"


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
        return Importances({}, 0, IMPORTANCE_EVALUATOR, f"no Optuna study at {db}")
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = f"sqlite:///{db.resolve()}"
    try:
        names = optuna.get_all_study_names(storage=storage_url)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign sqlite file: say so, don't crash
        return Importances({}, 0, IMPORTANCE_EVALUATOR, f"cannot read {db}: {exc}")
    if not names:
        return Importances({}, 0, IMPORTANCE_EVALUATOR, f"{db} holds no study")
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
            IMPORTANCE_EVALUATOR,
            f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials (has {len(completed)})",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna flags the evaluator as experimental
        raw = optuna.importance.get_param_importances(
            ostudy, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
    values = {key.replace("/", "."): float(v) for key, v in raw.items()}
    return Importances(values, len(completed), IMPORTANCE_EVALUATOR)
