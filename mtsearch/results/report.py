"""Report data from a study folder: the leaderboard, the ablation table, the exported config, importances.

Everything here reads `trials/<name>/` (space.yaml through `mtsearch.space`, trials.parquet and
epochs.parquet through `mtsearch.results.store`, optuna.db) and returns plain values: `mtsearch.cli.render`
lays them out as text and `mtsearch.results.plots` as figures. The interval arithmetic lives in
`mtsearch.results.stats`; what is decided here is which numbers go in (completed runs, paired seeds) and how a
metric is shown (`fmt_number`; scales in `metrics.py`), since the report's reading line shows numbers too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsearch.config import TrialConfig
from mtsearch.distributions import factor_keys
from mtsearch.errors import InvalidInput
from mtsearch.metrics import MAXIMISE, Direction, direction, display_scale
from mtsearch.presets import branches_label
from mtsearch.records import config_from_record, recorded_selection
from mtsearch.results.cost import StudyCost, study_cost
from mtsearch.results.stats import summarize
from mtsearch.results.store import (
    EPOCHS_FILE,
    TRIALS_FILE,
    epoch_rows,
    is_ranked,
    lineage_rows,
    trial_rows,
)
from mtsearch.space import SpaceSpec, load_study_space

# ---- reading a study ---------------------------------------------------------------------------


@dataclass
class Study:
    """One study folder, read once: the space it was run with and the rows of both Parquet files."""

    path: Path
    space: SpaceSpec
    trials: list[dict[str, Any]]  # one dict per trial, `config` decoded
    epochs: dict[str, list[dict[str, Any]]]  # trial_id -> rows sorted by epoch
    params: list[str]  # searched keys that are trials.parquet columns, in the space's order
    lineage: list[dict[str, Any]] = field(default_factory=list)  # a population's copies (lineage.parquet)

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
        """The split that selected: `val`, or `test` when any trial selected on the test split
        (data.selection: test, or a study recorded before validation splits existed); every trial
        is read, so a study whose trials disagree is flagged."""
        selections = {recorded_selection(t["config"]) for t in self.trials if t.get("config")}
        return "test" if "test" in selections else "val"

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
    return Study(path=path, space=space, trials=trials, epochs=epochs, params=params,
                 lineage=lineage_rows(path))


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
    rows: list[dict[str, Any]]  # rank, trial_id, status, <metric> (final), best_<metric>, <params...>, ...
    unranked: list[dict[str, Any]]  # trial_id, status, error, epochs_done
    counts: dict[str, int]
    total_ranked: int
    selection_note: str | None = None  # set when the test split selected
    cost: StudyCost | None = None  # the study's summed ledger (None before the ledger existed)


def param_display_value(value: Any) -> Any:
    """A searched value as tables and axes show it: a branch list as its label `cls+track`."""
    if isinstance(value, (list, tuple)):
        try:
            return branches_label(list(value))
        except ValueError:
            return ",".join(str(v) for v in value)
    return value


def leaderboard(study: Study, top: int | None = None) -> Leaderboard:
    """Trials ranked by the study metric at their last evaluated epoch (the score Optuna was told,
    and the one `confirm` races on); ties keep trial order. The best epoch is a column of its own:
    a maximum over evaluation noise, so optimistic. With `search.seeds_per_trial` above 1 a row
    is a configuration: its seeds' mean, with the half-width of its 95% interval (`ci95`)."""
    counts: dict[str, int] = {}
    scored: list[tuple[float, int, dict[str, Any]]] = []
    unranked: list[dict[str, Any]] = []
    for order, entry in enumerate(_ranking_entries(study)):
        status = str(entry.get("status"))
        counts[status] = counts.get(status, 0) + 1
        score = entry["score"]
        if not is_ranked(status, score):
            unranked.append({"trial_id": str(entry.get("trial_id")), "status": status,
                             "error": entry.get("error"), "epochs_done": entry.get("epochs_done")})
            continue
        scored.append((score, order, entry))
    scored.sort(key=lambda item: (study.direction.rank_key(item[0]), item[1]))
    rows = []
    for rank, (score, _, entry) in enumerate(scored, start=1):
        row: dict[str, Any] = {
            "rank": rank,
            "trial_id": str(entry.get("trial_id")),
            "status": entry.get("status"),
            study.metric: score,
            **({"ci95": entry["ci95"]} if "ci95" in entry else {}),
            f"best_{study.metric}": entry["best"],
            "test_hit1": entry.get("test_hit1"),
        }
        if entry.get("cell") is not None:
            row["cell"] = entry["cell"]
        for key in study.params:
            row[key] = param_display_value(entry.get(key))
        row.update({key: entry.get(key) for key in ("seed", "epochs_done", "best_epoch", "wall_s")})
        if study.space.scheduler.population_based:  # its values are those of its last epoch
            row.update(_values_now(study, entry))
            row["exploits"] = sum(1 for c in study.lineage if c["trial_id"] == row["trial_id"])
        rows.append(row)
    total = len(rows)
    if top is not None:
        if top < 1:
            raise InvalidInput(None, "--top", "must be >= 1", top)
        rows = rows[:top]
    return Leaderboard(study=study.name, metric=study.metric, mode=study.mode, params=study.params,
                       rows=rows, unranked=unranked, counts=counts, total_ranked=total,
                       selection_note=study.selection_note, cost=study_cost(study.trials))


def _values_now(study: Study, trial: Mapping[str, Any]) -> dict[str, Any]:
    """A population member's searched values and seed at its last epoch (its config is its
    lineage; its trials.parquet columns are the values it started with)."""
    from mtsearch.train.in_force import in_force

    if not trial.get("config"):
        return {}
    cfg = trial_config(study, trial)
    flat = in_force(cfg, cfg.optim.epochs).to_flat()
    return {**{k: param_display_value(flat[k]) for k in study.params if k in flat}, "seed": cfg.seed}


def seeds_per_configuration(study: Study) -> int:
    """`search.seeds_per_trial` of a search (1 for a grid file's study, whose seeds are cells)."""
    return 1 if study.is_ablation else study.space.search.seeds_per_trial


def _ranking_entries(study: Study) -> list[dict[str, Any]]:
    """What the leaderboard ranks: each trial with its `score` and `best`, or, with seeds per
    configuration, each configuration (its seeds' rows folded: mean scores, `ci95`, seeds a..b)."""
    if seeds_per_configuration(study) <= 1:
        return [{**t, "score": final_score(study, t), "best": best_score(study, t)} for t in study.trials]
    groups: dict[str, list[dict[str, Any]]] = {}
    for trial in study.trials:
        groups.setdefault(str(trial.get("fuse_group") or trial.get("trial_id")), []).append(trial)
    entries = []
    for group_id, seeds in groups.items():
        seeds.sort(key=lambda t: t.get("seed") or 0)
        finals = [final_score(study, t) for t in seeds]
        failed = [t for t in seeds if t.get("status") in ("error", "diverged")]
        first = failed[0] if failed else seeds[0]
        entry = {**seeds[0], "trial_id": group_id, "status": first.get("status"), "error": first.get("error"),
                 "score": _mean_of_all(finals), "best": _mean_of_all([best_score(study, t) for t in seeds]),
                 "ci95": summarize(finals).half_width if None not in finals else None,
                 "test_hit1": _mean_of_all([t.get("test_hit1") for t in seeds]),
                 "seed": f"{seeds[0].get('seed')}..{seeds[-1].get('seed')}" if len(seeds) > 1 else seeds[0].get("seed")}
        entries.append(entry)
    return entries


def _mean_of_all(values: list[Any]) -> float | None:
    """The mean when every value is a finite number (every seed has it), else None."""
    if not values or not all(_finite(v) for v in values):
        return None
    return sum(float(v) for v in values) / len(values)


def seed_rows(study: Study, trial: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of the configuration `trial` is a seed of (search.seeds_per_trial), by seed; just
    `trial` when it was trained alone."""
    group = trial.get("fuse_group")
    if not group or seeds_per_configuration(study) <= 1:
        return [dict(trial)]
    return sorted((t for t in study.trials if t.get("fuse_group") == group), key=lambda t: t.get("seed") or 0)


def trial_of(study: Study, trial_id: str) -> dict[str, Any]:
    """A leaderboard row's trial: itself, or for a configuration of several seeds its first seed's
    row (whose config, seed aside, is the configuration's)."""
    rows = [t for t in study.trials if str(t.get("trial_id")) == trial_id]
    rows = rows or sorted((t for t in study.trials if str(t.get("fuse_group")) == trial_id),
                          key=lambda t: t.get("seed") or 0)
    if not rows:
        raise KeyError(trial_id)
    return rows[0]


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
    return trial_of(study, board.rows[rank - 1]["trial_id"])


def trial_config(study: Study, trial: Mapping[str, Any]) -> TrialConfig:
    """The trial's full resolved config, validated from the stored `config` column."""
    source = f"{study.path / TRIALS_FILE} (trial {trial.get('trial_id')})"
    config = trial.get("config")
    if not config:
        raise InvalidInput(source, "config", "the trial has no stored config")
    return config_from_record(config, source)


# ---- showing numbers (tables, the reading line, figures) ---------------------------------------

METRIC_DIGITS = 3  # significant digits of a metric value that is not a percentage


def metric_text(metric: str, value: Any) -> str:
    """One metric value as people read it in a sentence: `30.6%` for a fraction, else a few digits."""
    scale, unit = display_scale(metric, [value])
    return fmt_number(value, scale, digits=METRIC_DIGITS) + (unit if value is not None else "")


TRACKING_GAINS = ("track_gain", "cycle_gain")  # ground truth where it exists


def last_tracking_gain(study: Study, trial: Mapping[str, Any]) -> tuple[str, float] | None:
    """(column, value) of a run's last evaluated track_gain, else cycle_gain; None without."""
    for column in TRACKING_GAINS:
        curve = study.curve(str(trial["trial_id"]), column)
        if curve:
            return column, curve[-1][1]
    return None


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
