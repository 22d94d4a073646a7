"""The Ray Tune driver: one validated `SpaceSpec` in, a finished (or resumable) study out.

Thin adapters around Ray Tune and Optuna:
- the trainable (`trainable.run_trial`) wraps the trainer (`mtsearch.train.fit`): one
  `tune.report` per epoch with the epoch metrics and the epoch's checkpoint;
- OptunaSearch (TPE seeded, multivariate, constant_liar; random; CMA-ES) stored in
  `trials/<name>/optuna.db`, told PRUNED for trials the scheduler stopped; grids use Tune's own
  grid search; ASHA runs on epochs;
- a Tune `Callback` (`recording.StoreCallback`) keeps the Parquet store current and hands
  snapshots to the caller's `on_update` (the CLI's live display). This module never prints.
Tune's own state lives in `trials/<name>/tune/`, which is what `--resume` restores.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray import tune

from mtsearch.distributions import Distribution, expand_params
from mtsearch.errors import (
    InvalidInput,
    StorageFull,
    free_bytes,
    storage_failure,
)
from mtsearch.files import write_atomic
from mtsearch.results.mirror import build_mirrors
from mtsearch.results.store import StudyStore, ray_trial_id
from mtsearch.search.cluster import connect_ray
from mtsearch.search.footprint import shortfall_warning
from mtsearch.search.packing import (
    Probe,
    announces_sharing,
    plan_resources,
    sharing_note,
    trials_per_process,
)
from mtsearch.search.pbt import PopulationRules
from mtsearch.search.population import (
    KEPT_DIR,
    check_population_fits,
    initial_members,
    start_population,
)
from mtsearch.search.process_hosts import hosted_trainer
from mtsearch.search.recording import (
    LIVE,
    Live,
    SearchProgress,
    StoreCallback,
    publish,
    retain_checkpoints,
    snapshot,
)
from mtsearch.search.study import (
    ADOPTED_CHECKPOINT,
    SPACE_FILE,
    TUNE_DIR,
    accept_moved_modules,
    check_study,
    drop_broken_tune_state,
    mend_tune_checkpoints,
    open_study,
    release,
    set_aside_checkpoint,
)
from mtsearch.search.trainable import Log, Trainer, last_line, run_trial
from mtsearch.search.tuning import (
    OBJECTIVE,
    LostTrialsFirst,
    adoptable_trials,
    optuna_db_at,
    optuna_searcher,
    param_space,
    park_optuna_trials,
    scheduler,
    search_algorithm,
    unpark_optuna_trials,
)
from mtsearch.settings import check_mirror_extras
from mtsearch.space import SpaceSpec


@dataclass
class SearchOutcome:
    study_dir: Path
    interrupted: bool
    progress: SearchProgress
    machine_failed: list[str] = field(default_factory=list)  # trials a machine's fault ended (rerun by --resume)
    storage: StorageFull | None = None  # the study's disk failed: stopped, to be resumed


# ---- the driver --------------------------------------------------------------------------------------

def run_search(
    spec: SpaceSpec,
    trials_dir: str | Path = "trials",
    *,
    resume: bool = False,
    address: str | None = None,
    connect_timeout: float = 30.0,
    on_update: Callable[[SearchProgress], None] | None = None,
    log: Log | None = None,
    trainer: Trainer | None = None,
    num_cpus: int | None = None,
    memory_probe: Probe | None = None,
    points: list[dict[str, Any]] | None = None,
    population_from: list[dict[str, Any]] | None = None,
) -> SearchOutcome:
    """Run (or resume) a study to the end; returns what happened, never prints.

    `points` (a one-factor grid study: values of that factor) runs only those of the grid's
    points that have no finished trial yet: one round of a race (`mtsearch confirm`).

    `trainer` replaces the trainer (same signature as `mtsearch.train.fit`); it must be
    picklable by Ray. `num_cpus` sizes a local Ray (default: all cores); ignored with `address`.
    `memory_probe` replaces the GPU memory probe of `gpus_per_trial: auto` (run in the driver).
    `population_from`: a population-based search's first members (`run --from`), recorded in the
    study before its first trial.
    """
    say = log or (lambda msg: None)
    spec = _absolute_paths(spec)
    _set_tune_defaults()
    check_mirror_extras(spec.storage, spec.source)
    check_study(spec, Path(trials_dir).resolve(), resume)  # refused in a moment, before any cluster
    # the cluster and its resources are checked before anything is written under trials/
    started_ray = connect_ray(address, num_cpus, say, connect_timeout)
    lock_fd, key = -1, None
    try:
        _check_resources(spec)
        check_population_fits(spec)  # before the study folder is made
        spec, study_dir, lock_fd, created, extend_from = open_study(spec, Path(trials_dir).resolve(), resume)
        key = str(study_dir)
        if not (study_dir / SPACE_FILE).exists():
            write_atomic(study_dir / SPACE_FILE, spec.to_yaml())
        if shortfall := shortfall_warning(spec, study_dir):
            say(f"warning: {shortfall}")
        resources = plan_resources(spec, study_dir, say, memory_probe)
        if announces_sharing(spec):
            say(sharing_note(spec, bool(resources.shares) or resources.fixed > 0))
        trainer, per_process = hosted_trainer(trials_per_process(spec), trainer)
        store = StudyStore(study_dir, spec.param_types(), with_cell=spec.is_ablation,
                           with_lineage=spec.scheduler.population_based)
        done_at_start = sum(1 for rows in store.by_ray_trial().values()
                            if rows[0]["status"] not in (None, "running"))
        # trials finished before this driver are known, whatever Tune's restored state lists
        ended = {ray_trial_id(r, t) for t, r in store.trials.items() if r["status"] not in (None, "running")}
        live = Live(spec=spec, store=store, on_update=on_update, started=time.time(),
                     resumed=resume, done_at_start=done_at_start, log=say, resources=resources,
                     study_dir=study_dir, key=key, trainer=trainer, per_process=per_process,
                     population=start_population(spec, resources, study_dir, population_from, ended, created))
        live.known_trials.update(ended)
        LIVE[key] = live
        live.mirrors = build_mirrors(spec.name, spec.metric, spec.mode, spec.storage, [
            *spec.searched_keys, *(["cell"] if spec.is_ablation else [])], study_dir, say)
        if resume:
            unpark_optuna_trials(spec, study_dir)
        try:
            with optuna_db_at(study_dir):  # a resumed study's pickled searcher opens this folder's
                return _drive(live, resume, extend_from, points)
        except Exception as exc:
            disk = storage_failure(exc)
            if disk is None:
                raise
            return _stop_on_storage(live, disk)
    finally:
        if key is not None:
            live_study = LIVE.pop(key, None)
            if live_study is not None and live_study.mirrors is not None:
                live_study.mirrors.close()
        if started_ray:
            ray.shutdown()
        if lock_fd >= 0:
            release(lock_fd)


def _drive(live: Live, resume: bool, extend_from: int | None, points: list[dict[str, Any]] | None) -> SearchOutcome:
    """Tune's part of `run_search`: the study, its resumed part, its extension or a race's round."""
    spec, store, study_dir, say = live.spec, live.store, live.study_dir, live.log
    if extend_from is None and points is None:
        restorable = resume and _tune_state_left(study_dir / TUNE_DIR, say)
        outcome = None
        if restorable or not (resume and store.trials) or spec.is_enumerated:
            tuner = _make_tuner(live, spec, resume)
            publish(live)
            grid = tuner.fit()
            outcome = _finish(live)
            ran_out = grid.num_terminated + grid.num_errors == len(grid)  # not stopped by a Ctrl-C
            if not (resume and outcome.interrupted and ran_out):
                return outcome
        else:
            say(f"resuming {study_dir} from its own records (Tune's saved state is gone)")
        return _run_missing(live) or outcome or _finish(live)
    # an extension or a race's round: finish what the study started, then run what is missing
    # as a new Tune experiment in the same folder, sharing Optuna's history and ASHA's rungs
    recorded = spec.with_count(extend_from) if extend_from is not None else spec
    if resume and tune.Tuner.can_restore(str(study_dir / TUNE_DIR)):
        _make_tuner(live, recorded, True).fit()
    if points is not None:
        return _run_points(live, points)
    before = _finish(live, recorded.total_trials)
    if before.interrupted:
        return before
    write_atomic(study_dir / SPACE_FILE, spec.to_yaml())
    say(f"extending {study_dir} from {recorded.total_trials} to {spec.total_trials} trials")
    tuner = _make_tuner(live, spec, False, fresh=False, extend_from=recorded, store=store)
    publish(live)
    tuner.fit()
    return _finish(live)


def _run_points(live: Live, points: list[dict[str, Any]]) -> SearchOutcome:
    """Run the given grid points that no finished trial covers yet, then report whether all are."""
    spec = live.spec
    (factor,) = spec.space  # a race's grid has one (tied) factor
    missing = [p for p in points if not _point_done(live, spec, p)]
    if missing:
        round_spec = replace(spec, space={factor: Distribution("grid", tuple(p[factor] for p in missing))})
        tuner = _make_tuner(live, round_spec, False, fresh=False)
        publish(live)
        tuner.fit()
    outcome = _finish(live, total=0)
    outcome.interrupted = outcome.interrupted or not all(_point_done(live, spec, p) for p in points)
    return outcome


def _point_done(live: Live, spec: SpaceSpec, point: dict[str, Any]) -> bool:
    flat = expand_params(point)
    cell = spec.cell_of(point)
    return any(row.get("cell") == cell and row.get("seed") == flat.get("seed")
               and row["status"] not in (None, "running") for row in live.store.trials.values())


def _set_tune_defaults() -> None:
    """Tune reads these at run time; set as defaults only, so a user's own setting wins: no
    per-trial JSON/CSV/TensorBoard loggers (Parquet is the record), experiment state saved every
    2 s (what a kill -9 can lose), trials keep the driver's working folder."""
    for name, value in (("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"), ("TUNE_GLOBAL_CHECKPOINT_S", "2"),
                        ("RAY_CHDIR_TO_TRIAL_DIR", "0"),
                        ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"),
                        ("RAY_AIR_NEW_OUTPUT", "0")):
        os.environ.setdefault(name, value)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def _make_tuner(
    live: Live, spec: SpaceSpec, resume: bool, *, fresh: bool = True, extend_from: SpaceSpec | None = None,
    store: StudyStore | None = None, adopt: dict[str, int] | None = None,
) -> tune.Tuner:
    """Tune's state restored from the study's `tune/` on resume, else a new Tuner for `spec` (the
    study, as it was before an extension, or a race's round). Each trial's resources are a
    function of its config (its network's GPU share).

    `fresh=False` keeps the trials folder of earlier experiments (an extension, a race's round).
    With `extend_from` (the study as it was) the new Tuner runs only the trials it lacks: the
    extra samples, or a grid's new seeds; `store` holds the earlier trials for ASHA's rungs.
    `adopt`: lost trials that run first under their own ids (`adoptable_trials`).
    """
    members = {}
    if live.population is not None:
        members = {"population": live.population, "boundaries": PopulationRules.of(spec).boundaries}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=spec.base.to_dict(), metric=spec.metric, mode=spec.mode,
                             max_failures=spec.max_failures, trainer=live.trainer,
                             seeds=spec.search.seeds_per_trial, **members),
        live.resources,
    )
    study_dir, say = live.study_dir, live.log
    tune_path = study_dir / TUNE_DIR
    if resume and tune.Tuner.can_restore(str(tune_path)):
        say(f"resuming {study_dir}")
        # errored trials are those a fault of the machine ended (run_trial reports the config's
        # own); in a study begun before that rule they may be the config's, so only when the store
        # says a machine's fault ended some
        rerun = bool(_machine_failed(live))
        accept_moved_modules()  # a study interrupted under the flat layout pickled its old paths
        for trial_id in mend_tune_checkpoints(tune_path):
            say(f"trial {trial_id}: Tune's saved state named a deleted checkpoint; resuming from the one it kept")
        return tune.Tuner.restore(str(tune_path), trainable, resume_unfinished=True, resume_errored=rerun)
    if tune_path.exists() and fresh:  # an interrupted start that never saved Tune's state
        shutil.rmtree(tune_path)
    samples, seeds = (1 if spec.is_enumerated else spec.search.num_samples), None
    if extend_from is not None:
        samples = 1 if spec.is_enumerated else spec.total_trials - extend_from.total_trials
        seeds = range(extend_from.repeats, spec.repeats) if spec.is_ablation else None
    search = None if spec.is_enumerated else search_algorithm(optuna_searcher(
        spec, study_dir, extend_from.total_trials if extend_from is not None else 0, adopt),
        spec.search.max_concurrent)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec, seeds, initial_members(study_dir)) if spec.is_enumerated else None,  # a search's: its searcher's
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode=spec.mode,
            search_alg=search,
            scheduler=scheduler(spec, store),
            num_samples=samples,
            max_concurrent_trials=(None if isinstance(search, LostTrialsFirst) else spec.scheduler.population
                                   if spec.scheduler.population_based else spec.search.max_concurrent),
            reuse_actors=False,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(study_dir), verbose=0,
            # only faults of the machine reach Tune as failures (run_trial keeps the config's own)
            failure_config=tune.FailureConfig(max_failures=spec.max_restarts),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # the experiment state (what --resume restores) is staged locally and copied
            # to trials/<name>/tune/ at most once per sync_period (default 300 s)
            sync_config=tune.SyncConfig(sync_period=2),
            callbacks=[StoreCallback(live.key)],
        ),
    )


def _finish(live: Live, total: int | None = None) -> SearchOutcome:
    """After `tuner.fit()`: interrupted or done (`total` trials known, default the spec's); a
    finished study drops what Tune never knew."""
    total = live.spec.total_trials if total is None else total
    study_dir = live.study_dir
    # a row Tune's restored state never knew (started as the disk filled, before Tune could save
    # it) is not running: it would keep every later --resume "interrupted"; it is dropped below
    running = [t for t, r in live.store.trials.items()
               if r["status"] in (None, "running") and ray_trial_id(r, t) in live.known_trials]
    interrupted = bool(running) or len(live.known_trials) < total
    if not interrupted:
        orphans = {t for t, r in live.store.trials.items() if ray_trial_id(r, t) not in live.known_trials}
        if orphans:
            live.store.forget(orphans)
    park_optuna_trials(live.spec, study_dir, live.store, finished=not interrupted)
    retain_checkpoints(live)
    live.store.flush()
    _drop_work_dirs(study_dir, live.store)
    return SearchOutcome(study_dir=study_dir, interrupted=interrupted, progress=snapshot(live),
                         machine_failed=_machine_failed(live))


def _tune_state_left(tune_dir: Path, say: Log) -> bool:
    """Whether Tune has a saved state to restore, once the sessions a full disk cut short are gone."""
    for session in drop_broken_tune_state(tune_dir):
        say(f"Tune's state saved at {session} was cut short (a full disk): set aside")
    return tune.Tuner.can_restore(str(tune_dir))


def _run_missing(live: Live) -> SearchOutcome | None:
    """A resumed search whose Tune run ended short of the study's count: trials Tune never knew
    (started as the driver died, before Tune saved them, or its saved state lost) would never run.
    Each that has an open Optuna trial goes on under its own id, into its rows and Optuna trial,
    from the newest checkpoint of an epoch it has rows for; new samples make up the rest. None
    when nothing is missing."""
    spec, study_dir, say, rows = live.spec, live.study_dir, live.log, live.store.trials
    missing = spec.total_trials - len(live.known_trials)
    if spec.is_enumerated or missing <= 0 or any(
            r["status"] in (None, "running") and ray_trial_id(r, t) in live.known_trials for t, r in rows.items()):
        return None
    unpark_optuna_trials(spec, study_dir)  # what the store does not adopt ends FAIL (_finish)
    lost = _lost_trials(live)
    adopt = adoptable_trials(spec, study_dir, list(lost)[:missing])
    for trial_id in adopt:
        epoch = set_aside_checkpoint(study_dir / TUNE_DIR / trial_id, lost[trial_id])
        earlier = (study_dir / TUNE_DIR / trial_id / ADOPTED_CHECKPOINT).is_dir()
        say(f"trial {trial_id}: missing from Tune's saved state; going on from " + (
            f"its checkpoint of epoch {epoch}" if epoch else
            "the checkpoint set aside for it before" if earlier else "its first epoch"))
    if missing > len(adopt):
        say(f"{missing - len(adopt)} trial(s) missing from Tune's saved state left nothing to go on from "
            "(no rows, or no open Optuna trial): sampling new ones")
    tuner = _make_tuner(live, spec, False, fresh=False, extend_from=spec.with_count(spec.total_trials - missing),
                        store=live.store, adopt=adopt)
    publish(live)
    tuner.fit()
    return _finish(live)


def _lost_trials(live: Live) -> dict[str, int]:
    """The Ray trials with rows that Tune does not know, and the epochs each has rows for (its
    seeds' least), those with the most first."""
    done = {ray_id: min(r["epochs_done"] or 0 for r in rows)
            for ray_id, rows in live.store.by_ray_trial().items() if ray_id not in live.known_trials}
    return {ray_id: done[ray_id] for ray_id in sorted(done, key=lambda ray_id: (-done[ray_id], ray_id))}


def _machine_failed(live: Live) -> list[str]:
    return sorted(tid for tid, row in live.store.trials.items() if row["machine_fault"])


def _stop_on_storage(live: Live, disk: StorageFull) -> SearchOutcome:
    """The study's disk failed: Tune has stopped every trial (each keeps its last reported
    checkpoint). Free the trainers' working copies, which those checkpoints make redundant, then
    save what can be saved; every step is best effort on a disk that may still be full."""
    study_dir = live.study_dir
    if not disk.path:
        disk = StorageFull(study_dir, disk.reason)
    if disk.free is None:
        disk.free = free_bytes(disk.path)
    for work in (study_dir / TUNE_DIR).glob("*/work"):
        shutil.rmtree(work, ignore_errors=True)
    for step in (live.store.flush,
                 lambda: park_optuna_trials(live.spec, study_dir, live.store, finished=False)):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the rows on disk stay as they were, readable
            live.log(f"warning: could not save the study's last changes: {last_line(exc)}")
    return SearchOutcome(study_dir=study_dir, interrupted=True, progress=snapshot(live),
                         machine_failed=_machine_failed(live), storage=disk)


def _drop_work_dirs(study_dir: Path, store: StudyStore) -> None:
    """A finished trial's working copy duplicates its last Tune checkpoint: free the disk."""
    for trial_id, row in store.trials.items():
        if row["status"] not in (None, "running"):
            for folder in ("work", ADOPTED_CHECKPOINT, KEPT_DIR):
                shutil.rmtree(study_dir / TUNE_DIR / ray_trial_id(row, trial_id) / folder, ignore_errors=True)


def _check_resources(spec: SpaceSpec) -> None:
    """A trial asking for more than the cluster has would wait forever: refuse it up front."""
    total = ray.cluster_resources()
    gpus = 0.0 if spec.resources.auto else float(spec.resources.gpus_per_trial)  # auto fits what exists
    if spec.resources.auto and spec.base.device.startswith("cuda") and not total.get("GPU"):
        raise InvalidInput(spec.source, "base.device", "cuda needs a GPU, and this Ray cluster has none",
                           spec.base.device)
    for key, name, need in (("CPU", "cpus_per_trial", spec.resources.cpus_per_trial),
                            ("GPU", "gpus_per_trial", gpus)):
        have = float(total.get(key, 0.0))
        if need > have:
            raise InvalidInput(spec.source, f"resources.{name}",
                               f"this Ray cluster has {have:g} {key}s in all; a trial cannot get {need:g}", need)


def _absolute_paths(spec: SpaceSpec) -> SpaceSpec:
    """Trials run in Ray workers with another working folder: make file paths absolute."""
    overrides = {}
    for key in ("data.root", "data.cache_dir"):
        value = spec.base.to_flat()[key]
        if value:
            overrides[key] = str(Path(value).expanduser().resolve())
    if not overrides:
        return spec
    return replace(spec, base=spec.base.with_overrides(overrides, spec.source))
