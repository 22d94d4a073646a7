"""The Ray Tune driver: one validated `SpaceSpec` in, a finished (or resumable) study out.

Thin adapters around Ray Tune and Optuna:
- the trainable wraps the trainer (`mtsearch.train.fit`): one `tune.report` per epoch with the
  epoch metrics and the epoch's checkpoint, and resumes from `tune.get_checkpoint()`;
- OptunaSearch (TPE seeded, multivariate, constant_liar; random; CMA-ES) stored in
  `trials/<name>/optuna.db`, told PRUNED for trials the scheduler stopped; grids use Tune's own
  grid search; ASHA runs on epochs;
- a Tune `Callback` keeps the Parquet store current and hands snapshots to the caller's
  `on_update` (the CLI's live display). This module never prints.
Tune's own state lives in `trials/<name>/tune/`, which is what `--resume` restores.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import ray
from ray import tune

from mtsearch.cluster import connect_ray
from mtsearch.config import TrialConfig
from mtsearch.errors import (
    GpuOutOfMemory,
    InvalidInput,
    StorageFull,
    free_bytes,
    is_out_of_memory,
    storage_failure,
)
from mtsearch.files import write_atomic
from mtsearch.footprint import shortfall_warning
from mtsearch.metrics import direction
from mtsearch.packing import Probe, TrialResources, larger_share, plan_resources
from mtsearch.records import stamped
from mtsearch.space import Distribution, SpaceSpec, expand_params
from mtsearch.store import StudyStore, is_ranked
from mtsearch.study import SPACE_FILE, open_study, release
from mtsearch.tuning import (
    OBJECTIVE,
    optuna_searcher,
    param_space,
    park_optuna_trials,
    scheduler,
    unpark_optuna_trials,
)

NOTES = "trainer_notes"  # report key carrying the trainer's log lines to the driver
OOM = "out_of_gpu_memory"  # fit_status of the report a trial sends before failing out of memory
STORAGE = "storage_failed"  # fit_status of the report a trial sends before failing on a bad disk
TUNE_DIR = "tune"

class TrainResult(Protocol):
    """What the driver reads from a trainer's result (`mtsearch.train.FitResult` has more)."""

    status: str  # completed | diverged | stopped
    error: str | None


class Trainer(Protocol):
    """The trainer's contract (`mtsearch.train.fit`): train `cfg` in `out_dir`, resuming from its
    checkpoint; call `on_epoch(metrics, checkpoint_dir)` after every epoch; `log` gets notes."""

    def __call__(
        self,
        cfg: TrialConfig,
        out_dir: str | Path | None = None,
        *,
        on_epoch: Callable[[dict[str, Any], Path | None], bool | None] | None = None,
        resume: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> TrainResult: ...
Log = Callable[[str], None]


@dataclass
class SearchProgress:
    """What a display needs, handed to `on_update` after every change of the store."""

    name: str
    study_dir: Path
    metric: str
    mode: str
    total: int
    searched_keys: list[str]
    counts: dict[str, int]
    rows: list[dict[str, Any]]  # trial rows (store columns) plus `score`: best metric so far
    started: float  # time.time() when this driver started
    resumed: bool
    done_at_start: int  # trials already finished before this driver started (for the ETA)


@dataclass
class SearchOutcome:
    study_dir: Path
    interrupted: bool
    progress: SearchProgress
    machine_failed: list[str] = field(default_factory=list)  # trials a machine's fault ended (rerun by --resume)
    storage: StorageFull | None = None  # the study's disk failed: stopped, to be resumed


@dataclass
class _Live:
    """The driver-side objects the Tune callback writes to (never pickled with Tune's state)."""

    spec: SpaceSpec
    store: StudyStore
    on_update: Callable[[SearchProgress], None] | None
    started: float
    resumed: bool
    done_at_start: int
    log: Log = lambda msg: None
    known_trials: set[str] = field(default_factory=set)
    resources: TrialResources = field(default_factory=TrialResources)
    larger_shares: dict[str, float] = field(default_factory=dict)  # trial -> share of its OOM retry
    segment_start: dict[str, float] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)


# Tune pickles its RunConfig (with the callbacks) into the experiment folder, so the callback holds
# only a key into this table, filled for the lifetime of `run_search` and emptied afterwards.
_LIVE: dict[str, _Live] = {}


# ---- the trainable (runs in a Ray worker) ------------------------------------------------------------

def _default_trainer() -> Trainer:
    from mtsearch.train import fit

    return fit


def run_trial(config: dict[str, Any], *, base: dict[str, Any], metric: str, mode: str,
              max_failures: int = 0, trainer: Trainer | None = None) -> None:
    """Tune function trainable: train one config, reporting each epoch with its checkpoint.

    A failure of the configuration (an exception in training, out of memory on a whole GPU) is
    retried here, from the trainer's last checkpoint, up to `max_failures` times, then reported
    as `fit_status: error`: it ends the trial as a result. Only faults of the machine leave as
    exceptions, for Tune to retry on a fresh worker (`failure.max_restarts`): out of memory on a
    GPU share (reported first, so the retry gets a larger share) and a failing disk (reported
    first, so the driver stops the study).
    """
    train = trainer or _default_trainer()
    cfg = TrialConfig.from_mapping(base, "<study base>").with_overrides(expand_params(config), "<trial>")
    last = {"objective": direction(mode).worst, "epoch": 0}
    notes: list[str] = []  # the trainer's log (skipped videos, resumes, retries), shown by the driver

    def send(metrics: dict[str, Any], checkpoint: Any = None) -> None:
        report = {**metrics, OBJECTIVE: last["objective"], "epochs_planned": cfg.optim.epochs}
        if notes:
            report[NOTES] = list(notes)
            notes.clear()
        tune.report(report, checkpoint=checkpoint)

    def on_epoch(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        value = metrics.get(metric)
        if value is not None and math.isfinite(value):
            last["objective"] = float(value)
        last["epoch"] = int(metrics["epoch"])
        send(metrics, tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None)

    def final(fit_status: str, **extra: Any) -> None:
        send({"epoch": last["epoch"], "fit_status": fit_status, **extra})

    failures = 0
    work = _prepare_work_dir()
    while True:
        try:
            result = train(cfg, work, on_epoch=on_epoch, resume=True, log=notes.append)
            break
        except Exception as exc:  # noqa: BLE001 - sorted below into the machine's and the config's
            disk = storage_failure(exc)
            if disk is not None:
                final(STORAGE, fit_error=str(disk), storage_path=disk.path, storage_reason=disk.reason)
                raise disk from None
            share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
            if is_out_of_memory(exc) and 0 < share < 1:
                final(OOM)  # the driver grants a larger share before the failure arrives
                raise GpuOutOfMemory(share, _last_line(exc) or "") from None
            message = str(GpuOutOfMemory(share, _last_line(exc) or "")) if is_out_of_memory(exc) \
                else _error_line(exc)
            if failures >= max_failures:
                final("error", fit_error=message)
                return
            failures += 1
            notes.append(f"failed: {message}; retry {failures} of {max_failures} from its last checkpoint")
    if getattr(result, "status", None) == "diverged":
        final("diverged", fit_error=str(result.error or "loss is not finite"))
    shutil.rmtree(work, ignore_errors=True)


def _prepare_work_dir() -> Path:
    """The trainer's folder, starting from Tune's last reported checkpoint: the source of truth,
    as the trainer may have saved an epoch that was never reported, and resuming from that would
    skip its row. (A retry in the same worker goes on from the trainer's own checkpoint.)"""
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # a trainer that does not use torch
        pass
    work = Path(tune.get_context().get_trial_dir()) / "work"
    shutil.rmtree(work, ignore_errors=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            shutil.copytree(ckpt_dir, work / "checkpoint")
    return work


def _error_line(exc: BaseException) -> str:
    """`ValueError: boom`: the exception's type and the last line of its message, within 300 chars."""
    line = _last_line(exc)
    text = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return _shorten(text)


def _shorten(text: str, limit: int = 300) -> str:
    """Cut at a word boundary, with an ellipsis, so a long message never ends mid-word."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0]
    return cut + "…"


# ---- Tune pieces --------------------------------------------------------------------------------------

def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


class StoreCallback(tune.Callback):
    """Mirrors Tune's trial events into the Parquet store, then notifies the display."""

    def __init__(self, live_key: str):
        self.live_key = live_key

    def _live(self, trial: Any = None) -> _Live | None:
        """The running study; with `trial`, that trial recorded in the store first (a resumed
        driver can hear of a trial before its start event)."""
        live = _LIVE.get(self.live_key)
        if live is not None and trial is not None and trial.trial_id not in live.store.trials:
            _record_start(live, trial)
        return live

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        live = self._live()
        if live is not None:
            live.known_trials.update(t.trial_id for t in trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live = self._live()
        if live is None:
            return
        live.known_trials.add(trial.trial_id)
        _record_start(live, trial)
        _publish(live)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        live = self._live(trial)
        if live is None:
            return
        _show_notes(live, trial.trial_id, result.get(NOTES))
        status = result.get("fit_status")
        if status == STORAGE:  # the disk is gone for every trial: stop the study for --resume
            raise StorageFull(result.get("storage_path") or live.store.study_dir / TUNE_DIR / trial.trial_id,
                              str(result.get("storage_reason")))
        if status == OOM:
            _grant_larger_share(live, trial)
        elif status in ("diverged", "error"):
            live.store.upsert_trial(trial.trial_id, status=status, error=_last_line(result.get("fit_error")))
        elif "epoch" in result and "loss" in result:
            live.store.add_epoch(trial.trial_id, result)
            live.store.upsert_trial(trial.trial_id, peak_mem_gib=result.get("peak_mem_gib"),
                                    device=result.get("device"))
        _touch_wall(live, trial.trial_id)
        _publish(live)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live = self._live(trial)
        if live is None:
            return
        row = live.store.trials[trial.trial_id]
        if row["status"] not in ("diverged", "error"):  # those were reported before the end
            planned = json.loads(row["config"])["optim"]["epochs"] if row["config"] else live.spec.max_epochs
            done = row["epochs_done"] or 0
            row["status"] = "completed" if done >= planned else "pruned"
            row["error"] = None
        _touch_wall(live, trial.trial_id, end=True)
        _retain_checkpoints(live)
        _publish(live)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live = self._live(trial)
        if live is None:
            return
        # the configuration's own failures end as results (run_trial): this is the machine's
        row = live.store.trials.get(trial.trial_id) or {}
        restarts = max(row.get("restarts") or 0, int(trial.run_metadata.num_failures) - 1)
        live.store.upsert_trial(trial.trial_id, status="error", error=_machine_fault(live, trial, final=True),
                                machine_fault=True, restarts=restarts)
        _touch_wall(live, trial.trial_id, end=True)
        _retain_checkpoints(live)
        _publish(live)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live = self._live()
        share = live.larger_shares.pop(trial.trial_id, None) if live is not None else None
        if live is not None and share is not None:  # a requeued trial may change its request
            trial.update_resources(live.resources.request(share))
            live.log(f"trial {trial.trial_id}: out of GPU memory; retrying from its last checkpoint "
                     f"with a GPU share of {share:g}")
            if trial.trial_id in live.store.trials:
                live.store.upsert_trial(trial.trial_id, gpu_share=share)
        elif live is not None:
            live.log(f"trial {trial.trial_id}: {_machine_fault(live, trial, final=False)}")
            if trial.trial_id in live.store.trials:
                restarts = live.store.trials[trial.trial_id]["restarts"] or 0
                live.store.upsert_trial(trial.trial_id, restarts=restarts + 1)
        if live is not None and trial.trial_id in live.store.trials:
            live.store.upsert_trial(trial.trial_id, status="running")
            _touch_wall(live, trial.trial_id, end=True)
            _publish(live)


def _machine_fault(live: _Live, trial: Any, final: bool) -> str:
    """A fault of the machine in a few words: `worker killed (signal 9) after epoch 1`, then
    `; retried 3 times` when the restarts ran out, or what happens next when they did not."""
    text = _trial_error(trial) or ""
    row = live.store.trials.get(trial.trial_id) or {}
    after = f" after epoch {row['epochs_done']}" if row.get("epochs_done") else " before its first epoch"
    what = _fault_words(text)
    restarts = max(0, int(trial.run_metadata.num_failures) - 1)
    if final:
        return f"{what}{after}; retried {restarts} time{'s' if restarts != 1 else ''}"
    return (f"{what}{after}; restarting from its last checkpoint "
            f"(restart {restarts + 1} of {live.spec.max_restarts})")


def _fault_words(text: str) -> str:
    """Ray's paragraph about a lost worker or node, as a user would say it. Ray names no signal
    for a worker killed from outside (kill -9, the kernel's OOM killer): only its own memory
    monitor and explicit exit signals are named."""
    lower = text.lower()
    if "NodeDiedError" in text or ("node" in lower and "died" in lower and "worker" not in lower):
        return "node lost"
    if "running low on memory" in lower:
        return "worker killed by Ray's memory monitor (host low on memory)"
    signal = re.search(r"(?:killed by|exited with|received) signal (\d+)", text)
    if signal:
        return f"worker killed (signal {signal.group(1)})"
    if "ActorDiedError" in text or "actor is dead" in lower or ("worker" in lower and "died" in lower):
        return "worker process died (killed or crashed)"
    return _shorten(_last_line(text) or "trial failed (no error text)")


def _grant_larger_share(live: _Live, trial: Any) -> None:
    """Out of GPU memory below a whole GPU: the coming failure is not the trial's fault, so it
    does not count against `failure.max_failures`, and the retry asks for fewer neighbours."""
    share = _gpu_share(trial)
    if 0 < share < 1:
        trial.max_failures += 1
        live.larger_shares[trial.trial_id] = larger_share(share)


def _gpu_share(trial: Any) -> float:
    return float(trial.placement_group_factory.required_resources.get("GPU", 0.0))


def _record_start(live: _Live, trial: Any) -> None:
    flat = expand_params(trial.config)
    params = {k: flat[k] for k in live.spec.searched_keys if k in flat}
    cfg = live.spec.trial_config(flat)
    values: dict[str, Any] = dict(params)
    existing = live.store.trials.get(trial.trial_id)
    if existing is None or existing["status"] in (None, "running", "error"):
        values["status"] = "running"
        values["error"] = None
        values["machine_fault"] = None
    if live.spec.is_ablation:
        values["cell"] = live.spec.cell_of(trial.config)
    values["seed"] = cfg.seed  # also a searched key in grids with repeats
    values["gpu_share"] = _gpu_share(trial)
    live.store.upsert_trial(trial.trial_id, config=stamped(cfg.resolved().to_dict()), **values)
    row = live.store.trials[trial.trial_id]
    if row["epochs_done"] is None:
        row["epochs_done"] = 0
    live.segment_start[trial.trial_id] = time.time()


def _retain_checkpoints(live: _Live) -> None:
    """Bounded disk (`storage.keep_checkpoints`): of the finished trials, only the best K completed
    ones keep their checkpoints; pruned and failed ones keep none. Running and interrupted trials
    keep theirs (Tune keeps one each), so `--resume` always finds what it needs."""
    finished = {tid: row for tid, row in live.store.trials.items()
                if row["status"] not in (None, "running") and not row["machine_fault"]}
    scores = {tid: _score(live.spec, live.store, tid) for tid in finished}
    ranked = [tid for tid, row in finished.items()
              if row["status"] == "completed" and is_ranked(row["status"], scores[tid])]
    ranked.sort(key=lambda tid: direction(live.spec.mode).rank_key(scores[tid]))
    kept = set(ranked[: live.spec.keep_checkpoints])
    for tid in finished:
        if tid not in kept:
            for folder in (live.store.study_dir / TUNE_DIR / tid).glob("checkpoint_*"):
                shutil.rmtree(folder, ignore_errors=True)


def _show_notes(live: _Live, trial_id: str, notes: Any) -> None:
    """Skipped videos once per study (every trial skips the same ones); other notes per trial."""
    for note in notes or ():
        if str(note).startswith("skipping "):
            if note not in live.warned:
                live.warned.add(note)
                live.log(f"warning: {note}")
        else:
            live.log(f"trial {trial_id}: {note}")


def _touch_wall(live: _Live, trial_id: str, end: bool = False) -> None:
    """wall_s accumulates over a trial's running segments (a resumed trial keeps its earlier time)."""
    now = time.time()
    start = live.segment_start.get(trial_id)
    if start is None:
        return
    row = live.store.trials[trial_id]
    row["wall_s"] = (row["wall_s"] or 0.0) + (now - start)
    if end:
        live.segment_start.pop(trial_id, None)
    else:
        live.segment_start[trial_id] = now


def _trial_error(trial: Any) -> str | None:
    """The trial's error text: Tune writes it locally first and copies it to storage later."""
    try:
        local = trial.error_file
        if local and Path(local).exists():
            return Path(local).read_text(errors="replace")
        return trial.get_error()
    except Exception:  # noqa: BLE001 - an unreadable error file must not stop the search
        return None


def _last_line(text: Any) -> str | None:
    if text is None:
        return None
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1][:500] if lines else None


def _score(spec: SpaceSpec, store: StudyStore, trial_id: str) -> float | None:
    values = [r.get(spec.metric) for r in store.trial_epochs(trial_id)]
    values = [v for v in values if v is not None]
    if not values:
        return None
    return direction(spec.mode).best(values)


def _snapshot(live: _Live) -> SearchProgress:
    rows = []
    for tid, row in live.store.trials.items():
        rows.append({**row, "score": _score(live.spec, live.store, tid)})
    return SearchProgress(
        name=live.spec.name, study_dir=live.store.study_dir, metric=live.spec.metric, mode=live.spec.mode,
        total=live.spec.total_trials, searched_keys=live.spec.searched_keys, counts=live.store.counts(),
        rows=rows, started=live.started, resumed=live.resumed, done_at_start=live.done_at_start,
    )


def _publish(live: _Live) -> None:
    try:
        live.store.flush()
    except OSError as exc:
        disk = storage_failure(exc)
        if disk is None:
            raise
        raise disk from None  # ends Tune's loop; run_search stops the study for --resume
    if live.on_update is not None:
        live.on_update(_snapshot(live))


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
    trainable_fn: Trainer | None = None,
    num_cpus: int | None = None,
    memory_probe: Probe | None = None,
    points: list[dict[str, Any]] | None = None,
) -> SearchOutcome:
    """Run (or resume) a study to the end; returns what happened, never prints.

    `points` (a one-factor grid study: values of that factor) runs only those of the grid's
    points that have no finished trial yet: one round of a race (`mtsearch confirm`).

    `trainable_fn` replaces the trainer (same signature as `mtsearch.train.fit`); it must be
    picklable by Ray. `num_cpus` sizes a local Ray (default: all cores); ignored with `address`.
    `memory_probe` replaces the GPU memory probe of `gpus_per_trial: auto` (run in the driver).
    """
    say = log or (lambda msg: None)
    spec = _absolute_paths(spec)
    _set_tune_defaults()
    # the cluster and its resources are checked before anything is written under trials/
    started_ray = connect_ray(address, num_cpus, say, connect_timeout)
    lock_fd, key = -1, None
    try:
        _check_resources(spec)
        spec, study_dir, lock_fd, _, extend_from = open_study(spec, Path(trials_dir).resolve(), resume)
        key = str(study_dir)
        if not (study_dir / SPACE_FILE).exists():
            write_atomic(study_dir / SPACE_FILE, spec.to_yaml())
        shortfall = shortfall_warning(spec, study_dir)
        if shortfall:
            say(f"warning: {shortfall}")
        resources = plan_resources(spec, study_dir, say, memory_probe)
        store = StudyStore(study_dir, spec.param_types(), with_cell=spec.is_ablation)
        done_at_start = sum(1 for r in store.trials.values() if r["status"] not in (None, "running"))
        live = _Live(spec=spec, store=store, on_update=on_update, started=time.time(),
                     resumed=resume, done_at_start=done_at_start, log=say, resources=resources)
        # trials finished before this driver are known, whatever Tune's restored state lists
        live.known_trials.update(t for t, r in store.trials.items() if r["status"] not in (None, "running"))
        _LIVE[key] = live
        if resume:
            unpark_optuna_trials(spec, study_dir)
        try:
            return _drive(live, spec, study_dir, key, resume, extend_from, points, trainable_fn, resources, say)
        except Exception as exc:
            disk = storage_failure(exc)
            if disk is None:
                raise
            return _stop_on_storage(live, study_dir, disk)
    finally:
        if key is not None:
            _LIVE.pop(key, None)
        if started_ray:
            ray.shutdown()
        if lock_fd >= 0:
            release(lock_fd)


def _drive(
    live: _Live, spec: SpaceSpec, study_dir: Path, key: str, resume: bool, extend_from: int | None,
    points: list[dict[str, Any]] | None, trainable_fn: Trainer | None, resources: TrialResources,
    say: Log,
) -> SearchOutcome:
    """Tune's part of `run_search`: the study, its resumed part, its extension or a race's round."""
    store = live.store
    if extend_from is None and points is None:
        tuner = _make_tuner(spec, study_dir, key, resume, trainable_fn, resources, say)
        _publish(live)
        tuner.fit()
        return _finish(live, study_dir)
    # an extension or a race's round: finish what the study started, then run what is missing
    # as a new Tune experiment in the same folder, sharing Optuna's history and ASHA's rungs
    recorded = spec.with_count(extend_from) if extend_from is not None else spec
    if resume and tune.Tuner.can_restore(str(study_dir / TUNE_DIR)):
        _make_tuner(recorded, study_dir, key, True, trainable_fn, resources, say).fit()
    if points is not None:
        return _run_points(live, spec, study_dir, points, trainable_fn, resources, say)
    before = _finish(live, study_dir, recorded.total_trials)
    if before.interrupted:
        return before
    write_atomic(study_dir / SPACE_FILE, spec.to_yaml())
    say(f"extending {study_dir} from {recorded.total_trials} to {spec.total_trials} trials")
    tuner = _make_tuner(spec, study_dir, key, False, trainable_fn, resources, say,
                        fresh=False, extend_from=recorded, store=store)
    _publish(live)
    tuner.fit()
    return _finish(live, study_dir)


def _run_points(
    live: _Live, spec: SpaceSpec, study_dir: Path, points: list[dict[str, Any]],
    trainer: Trainer | None, resources: TrialResources, say: Log,
) -> SearchOutcome:
    """Run the given grid points that no finished trial covers yet, then report whether all are."""
    (factor,) = spec.space  # a race's grid has one (tied) factor
    missing = [p for p in points if not _point_done(live, spec, p)]
    if missing:
        round_spec = replace(spec, space={factor: Distribution("grid", tuple(p[factor] for p in missing))})
        tuner = _make_tuner(round_spec, study_dir, str(study_dir), False, trainer, resources, say,
                            fresh=False)
        _publish(live)
        tuner.fit()
    outcome = _finish(live, study_dir, total=0)
    outcome.interrupted = outcome.interrupted or not all(_point_done(live, spec, p) for p in points)
    return outcome


def _point_done(live: _Live, spec: SpaceSpec, point: dict[str, Any]) -> bool:
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


def _make_tuner(
    spec: SpaceSpec, study_dir: Path, live_key: str, resume: bool, trainer: Trainer | None,
    resources: TrialResources, say: Log, *, fresh: bool = True, extend_from: SpaceSpec | None = None,
    store: StudyStore | None = None,
) -> tune.Tuner:
    """Tune's state restored from `study_dir/tune` on resume, else a new Tuner for the study.
    Each trial's resources are a function of its config (its network's GPU share).

    `fresh=False` keeps the trials folder of earlier experiments (an extension, a race's round).
    With `extend_from` (the study as it was) the new Tuner runs only the trials it lacks: the
    extra samples, or a grid's new seeds; `store` holds the earlier trials for ASHA's rungs.
    """
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=spec.base.to_dict(), metric=spec.metric, mode=spec.mode,
                             max_failures=spec.max_failures, trainer=trainer),
        resources,
    )
    tune_path = study_dir / TUNE_DIR
    if resume and tune.Tuner.can_restore(str(tune_path)):
        say(f"resuming {study_dir}")
        # errored trials are those a fault of the machine ended (run_trial reports the config's
        # own); in a study begun before that rule they may be the config's, so only when the store
        # says a machine's fault ended some
        live = _LIVE.get(live_key)
        rerun = live is not None and bool(_machine_failed(live))
        return tune.Tuner.restore(str(tune_path), trainable, resume_unfinished=True, resume_errored=rerun)
    if tune_path.exists() and fresh:  # an interrupted start that never saved Tune's state
        shutil.rmtree(tune_path)
    samples, seeds = (1 if spec.is_enumerated else spec.search.num_samples), None
    if extend_from is not None:
        samples = 1 if spec.is_enumerated else spec.total_trials - extend_from.total_trials
        seeds = range(extend_from.repeats, spec.repeats) if spec.is_ablation else None
    return tune.Tuner(
        trainable,
        param_space=param_space(spec, seeds) if spec.is_enumerated else None,  # a search's: its searcher's
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode=spec.mode,
            search_alg=None if spec.is_enumerated else optuna_searcher(
                spec, study_dir, extend_from.total_trials if extend_from is not None else 0),
            scheduler=scheduler(spec, store),
            num_samples=samples,
            max_concurrent_trials=spec.search.max_concurrent,
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
            callbacks=[StoreCallback(live_key)],
        ),
    )


def _finish(live: _Live, study_dir: Path, total: int | None = None) -> SearchOutcome:
    """After `tuner.fit()`: interrupted or done (`total` trials known, default the spec's); a
    finished study drops what Tune never knew."""
    counts = live.store.counts()
    total = live.spec.total_trials if total is None else total
    interrupted = counts["running"] > 0 or len(live.known_trials) < total
    if not interrupted:
        orphans = set(live.store.trials) - live.known_trials
        if orphans:
            live.store.forget(orphans)
    park_optuna_trials(live.spec, study_dir, live.store, finished=not interrupted)
    _retain_checkpoints(live)
    live.store.flush()
    _drop_work_dirs(study_dir, live.store)
    return SearchOutcome(study_dir=study_dir, interrupted=interrupted, progress=_snapshot(live),
                         machine_failed=_machine_failed(live))


def _machine_failed(live: _Live) -> list[str]:
    return sorted(tid for tid, row in live.store.trials.items() if row["machine_fault"])


def _stop_on_storage(live: _Live, study_dir: Path, disk: StorageFull) -> SearchOutcome:
    """The study's disk failed: Tune has stopped every trial (each keeps its last reported
    checkpoint). Free the trainers' working copies, which those checkpoints make redundant, then
    save what can be saved; every step is best effort on a disk that may still be full."""
    if not disk.path:
        disk = StorageFull(study_dir, disk.reason)
    disk.free = free_bytes(disk.path)
    for work in (study_dir / TUNE_DIR).glob("*/work"):
        shutil.rmtree(work, ignore_errors=True)
    for step in (live.store.flush,
                 lambda: park_optuna_trials(live.spec, study_dir, live.store, finished=False)):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the rows on disk stay as they were, readable
            live.log(f"warning: could not save the study's last changes: {_last_line(exc)}")
    return SearchOutcome(study_dir=study_dir, interrupted=True, progress=_snapshot(live),
                         machine_failed=_machine_failed(live), storage=disk)


def _drop_work_dirs(study_dir: Path, store: StudyStore) -> None:
    """A finished trial's working copy duplicates its last Tune checkpoint: free the disk."""
    for trial_id, row in store.trials.items():
        if row["status"] not in (None, "running"):
            shutil.rmtree(study_dir / TUNE_DIR / trial_id / "work", ignore_errors=True)


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
