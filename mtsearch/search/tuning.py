"""Optuna and ASHA as Ray Tune takes them: the searcher, the parameter space, the scheduler.

A study's searcher keeps its history in `trials/<name>/optuna.db`, so an extended study's new
trials are sampled from every earlier one, and its ASHA rungs can be seeded with the earlier
trials' values at each milestone, so new trials are compared under the same rungs.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from mtsearch.metrics import direction
from mtsearch.results.store import StudyStore
from mtsearch.space import SpaceSpec

OBJECTIVE = "objective"  # the key Tune, ASHA and Optuna optimise: the space's metric, carried forward
OPTUNA_FILE = "optuna.db"
TRIAL_ID_ATTR = "trial_id"  # the Optuna trial's user attribute naming its row in trials.parquet


class PruneAwareOptunaSearch(OptunaSearch):
    """Tells Optuna PRUNED (not COMPLETE with a low score) for trials the scheduler stopped, FAIL
    for the configuration's own failures, and nothing for faults of the machine: those trials stay
    open for `--resume` (`park_optuna_trials`). Each Optuna trial carries its Tune `trial_id`.

    `adopt` (Tune trial id -> Optuna trial id): trials Tune lost (started, never saved in its
    state) whose Optuna trials wait for them; suggested under those ids (`LostTrialsFirst`), they
    get their own Optuna trials' parameters back and report to them."""

    def __init__(self, *args: Any, adopt: dict[str, int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.adopting = dict(adopt or {})

    def next_adopted(self) -> str | None:
        return next(iter(getattr(self, "adopting", {})), None)

    def suggest(self, trial_id: str) -> dict | None:
        # a searcher pickled by an earlier version (a resumed study) has no `adopting`
        adopted = getattr(self, "adopting", {}).pop(trial_id, None)
        if adopted is not None and trial_id not in self._ot_trials:
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, adopted)
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            try:
                ot_trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
            except Exception as exc:  # noqa: BLE001 - a label must not stop the search
                logging.getLogger(__name__).warning("optuna user attr failed: %s", exc)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if "fit_status" in result or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        value = result.get(OBJECTIVE)
        if value is not None and math.isfinite(value):
            with warnings.catch_warnings():  # an adopted trial reports its lost epochs again
                warnings.filterwarnings("ignore", message=".*is already reported")
                ot_trial.report(value, int(result.get("epoch", result.get("training_iteration", 0))))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error:  # only faults of the machine end a trial in error (run_trial reports the rest)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or not result:
            return super().on_trial_complete(trial_id, result, error)
        state = None
        if result.get("fit_status") in ("diverged", "error"):
            state = optuna.trial.TrialState.FAIL
        elif int(result.get("epoch", 0)) < int(result.get("epochs_planned", 0)):
            state = optuna.trial.TrialState.PRUNED
        value = result.get(OBJECTIVE)
        if state is None and (value is None or not math.isfinite(value)):
            state = optuna.trial.TrialState.FAIL
        if state is None:
            return super().on_trial_complete(trial_id, result, error)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
        except Exception as exc:  # noqa: BLE001 - a tell that Optuna refuses must not stop the search
            logging.getLogger(__name__).warning("optuna tell failed: %s", exc)
        self._completed_trials.add(trial_id)


class LostTrialsFirst(SearchGenerator):
    """Tune's search generator, whose first trials take the ids of the trials Tune lost that the
    searcher adopts: their rows, trial folders and Optuna trials carry on under the same id."""

    def create_trial_if_possible(self, experiment_spec: dict) -> Trial | None:
        searcher = self.searcher
        while not isinstance(searcher, PruneAwareOptunaSearch):
            searcher = searcher.searcher  # through the ConcurrencyLimiter
        wanted = searcher.next_adopted()
        if wanted is None:
            return super().create_trial_if_possible(experiment_spec)
        own = Trial.__dict__["generate_id"]
        Trial.generate_id = classmethod(lambda cls: wanted)  # type: ignore[method-assign,assignment]
        try:  # Tune draws the id before asking the searcher; only Tune's own loop runs meanwhile
            return super().create_trial_if_possible(experiment_spec)
        finally:
            Trial.generate_id = own  # type: ignore[method-assign]


def search_algorithm(searcher: PruneAwareOptunaSearch, max_concurrent: int | None) -> Any:
    """What Tune's `search_alg` gets: the searcher, or with trials to adopt, `LostTrialsFirst`
    over it (Tune then leaves the concurrency limit to us)."""
    if not searcher.adopting:
        return searcher
    return LostTrialsFirst(ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher)


def adoptable_trials(spec: SpaceSpec, study_dir: Path, trial_ids: Iterable[str]) -> dict[str, int]:
    """Of the Tune trials `trial_ids`, those whose Optuna trial is running (after
    `unpark_optuna_trials`): Tune trial id -> Optuna trial id."""
    opened = _open_study(spec, study_dir)
    if opened is None:
        return {}
    wanted, found = set(trial_ids), {}
    for trial in opened[1].get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        tid = trial.user_attrs.get(TRIAL_ID_ATTR)
        if tid in wanted and tid not in found:
            found[tid] = trial._trial_id
    return found


def optuna_searcher(spec: SpaceSpec, study_dir: Path, earlier: int = 0,
                    adopt: dict[str, int] | None = None) -> PruneAwareOptunaSearch:
    """The study's sampler on its `optuna.db`. An extension (`earlier` trials already there)
    seeds it with seed + earlier: the same seed would draw the first trials' random points again.
    `adopt`: lost trials that take back their Optuna trials (`PruneAwareOptunaSearch`)."""
    seed = spec.search.seed + earlier
    if spec.search.algorithm == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif spec.search.algorithm == "cmaes":
        sampler = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    storage = optuna.storages.RDBStorage(_db_url(study_dir))
    # the space is the searcher's own (not the Tuner's param_space), so that every saved copy of
    # it, the one a `--resume` restores included, can still sample: a searcher state that a full
    # disk kept Tune from writing left the restored searcher without a space
    return PruneAwareOptunaSearch(space=param_space(spec), metric=OBJECTIVE, mode=spec.mode,
                                  sampler=sampler, study_name=spec.name, storage=storage, adopt=adopt)


def _db_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / OPTUNA_FILE).resolve()}"


@contextmanager
def optuna_db_at(study_dir: Path) -> Iterator[None]:
    """While it lasts, an Optuna storage that Tune unpickles (the searcher of a resumed study)
    opens `study_dir`'s own optuna.db: the pickle holds the absolute path the folder had when the
    study began, and a study folder may have moved since (another disk, another machine)."""
    storages = optuna.storages.RDBStorage
    original = storages.__setstate__
    url = _db_url(study_dir)

    def reopened_here(self: Any, state: dict[str, Any]) -> None:
        if str(state.get("url", "")).endswith("/" + OPTUNA_FILE):
            state = {**state, "url": url}
        original(self, state)

    storages.__setstate__ = reopened_here  # type: ignore[method-assign]
    try:
        yield
    finally:
        storages.__setstate__ = original  # type: ignore[method-assign]


def param_space(spec: SpaceSpec, seeds: Iterable[int] | None = None,
                earlier: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Tune's parameter space; a grid file's repeats run `seeds` (default 0..repeats-1); a
    population-based search's population, one tied factor of every searched key and the seed
    (`earlier`'s members first: the top of an earlier study, `run --from`)."""
    if spec.scheduler.population_based:
        from mtsearch.search.pbt import initial_population

        members = initial_population(spec, earlier)
        keys = [*spec.space, "seed"]
        return {",".join(keys): tune.grid_search([[m[k] for k in keys] for m in members])}
    space: dict[str, Any] = {}
    for key, dist in spec.space.items():
        low_high = dist.values
        if dist.kind == "uniform":
            space[key] = tune.uniform(*low_high)
        elif dist.kind == "loguniform":
            space[key] = tune.loguniform(*low_high)
        elif dist.kind == "int":
            space[key] = tune.randint(low_high[0], low_high[1] + 1)  # Tune's upper bound is exclusive
        elif dist.kind == "logint":
            space[key] = tune.lograndint(low_high[0], low_high[1] + 1)
        elif dist.kind == "choice":
            space[key] = tune.choice(list(dist.values))
        else:  # tied grid factors are lists of levels; expand_params splits them in the trial
            space[key] = tune.grid_search([list(v) if isinstance(v, tuple) else v for v in dist.values])
    if spec.is_ablation and spec.repeats > 1 and "seed" not in space:
        space["seed"] = tune.grid_search(list(seeds if seeds is not None else range(spec.repeats)))
    return space


def scheduler(spec: SpaceSpec, earlier: StudyStore | None = None) -> Any:
    """ASHA on epochs (or none); with `earlier`, its rungs hold those trials' values already."""
    if spec.scheduler.type != "asha":
        return FIFOScheduler()
    asha = ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs, grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor)
    if earlier is not None:
        sign = direction(spec.mode).sign  # ASHA records metric_op * value
        for trial_id, rows in earlier.by_ray_trial().items():
            for bracket in asha._brackets:
                for milestone, recorded in bracket._rungs:
                    value = group_objective_at(earlier, rows, spec.metric, spec.mode, milestone)
                    if value is not None:
                        recorded[trial_id] = sign * value
    return asha


def objective_at(epochs: list[dict[str, Any]], metric: str, mode: str, milestone: float) -> float | None:
    """What the trial reported as OBJECTIVE at its first epoch >= milestone: the last finite
    metric so far (the worst value before any); None if it never got there."""
    value = direction(mode).worst
    for row in epochs:
        metric_value = row.get(metric)
        if metric_value is not None and math.isfinite(metric_value):
            value = float(metric_value)
        if row["epoch"] >= milestone:
            return value
    return None


def group_objective_at(store: StudyStore, rows: list[dict[str, Any]], metric: str, mode: str,
                       milestone: float) -> float | None:
    """`objective_at` of a Ray trial: of its one row, or the mean over a seeded configuration's
    seeds (what it reported); None unless every seed got there."""
    values = [objective_at(store.trial_epochs(row["trial_id"]), metric, mode, milestone) for row in rows]
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None) / len(values)


def _open_study(spec: SpaceSpec, study_dir: Path) -> tuple[Any, Any] | None:
    if spec.is_enumerated or not (study_dir / OPTUNA_FILE).exists():
        return None
    storage = optuna.storages.RDBStorage(_db_url(study_dir))
    try:
        return storage, optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        return None


def park_optuna_trials(spec: SpaceSpec, study_dir: Path, store: StudyStore, finished: bool) -> None:
    """When a driver stops, Optuna trials still RUNNING take their state from the store: those
    `--resume` continues (interrupted, or ended by a fault of the machine) become WAITING, so no
    trial reads as running while nothing runs; finished ones get their outcome (Tune tells the
    searcher nothing about a trial rerun after a fault); on a finished study, trials Tune never
    knew become FAIL."""
    opened = _open_study(spec, study_dir)
    if opened is None:
        return
    storage, study = opened
    states = optuna.trial.TrialState
    groups = store.by_ray_trial()
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        rows = groups.get(trial.user_attrs.get(TRIAL_ID_ATTR, ""), [])
        row = rows[0] if rows else None  # a seeded configuration's seeds share their status
        status = row["status"] if row is not None else None
        if row is None and not finished:  # asked for as the driver stopped, before any row
            storage.set_trial_state_values(trial._trial_id, states.WAITING)
        elif row is not None and (status in (None, "running") or row["machine_fault"]):
            storage.set_trial_state_values(trial._trial_id, states.WAITING)
        elif status == "completed":
            value = group_objective_at(store, rows, spec.metric, spec.mode, row["epochs_done"] or 0)
            if value is not None and math.isfinite(value):
                storage.set_trial_state_values(trial._trial_id, states.COMPLETE, [value])
            else:
                storage.set_trial_state_values(trial._trial_id, states.FAIL)
        elif status == "pruned":
            storage.set_trial_state_values(trial._trial_id, states.PRUNED)
        elif row is not None or finished:
            storage.set_trial_state_values(trial._trial_id, states.FAIL)


def unpark_optuna_trials(spec: SpaceSpec, study_dir: Path) -> None:
    """On `--resume`: the trials `park_optuna_trials` left WAITING run again, as their Tune trials do."""
    opened = _open_study(spec, study_dir)
    if opened is None:
        return
    storage, study = opened
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.RUNNING)
