"""What the driver records while Tune runs: a Tune `Callback` keeps the Parquet store current,
sorts a trial's end into result or machine fault, and hands snapshots to the caller's `on_update`
(the CLI's live display). Never prints.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from mtsearch.config import TrialConfig
from mtsearch.distributions import expand_params
from mtsearch.errors import StorageFull, storage_failure
from mtsearch.files import write_atomic
from mtsearch.metrics import SLOTS_KEY, direction
from mtsearch.records import config_from_record, stamped
from mtsearch.results.store import StudyStore, is_ranked
from mtsearch.search.packing import TrialResources, larger_share
from mtsearch.search.population import EXPLOIT_KEY
from mtsearch.search.study import TUNE_DIR
from mtsearch.search.trainable import NOTES, OOM, STORAGE, Log, last_line, shorten
from mtsearch.settings import seeds_of
from mtsearch.space import SpaceSpec


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
class Live:
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
    mirrors: Any = None  # results.mirror.Mirrors: storage.mirror's live copies, or None
    study_dir: Path = Path()
    key: str = ""  # this table's key (LIVE), which Tune's pickled callback holds
    trainer: Any = None  # the trainer each trial runs (None: run_trial's own, `fit`)
    per_process: int = 1  # resources.trials_per_process: trials of a shape side by side in one process
    population: Any = None  # population-based training: the study's PopulationCoordinator


# Tune pickles its RunConfig (with the callbacks) into the experiment folder, so the callback holds
# only a key into this table, filled for the lifetime of `run_search` and emptied afterwards.
LIVE: dict[str, Live] = {}


class StoreCallback(tune.Callback):
    """Mirrors Tune's trial events into the Parquet store, then notifies the display."""

    def __init__(self, live_key: str):
        self.live_key = live_key

    def _live(self, trial: Any = None) -> Live | None:
        """The running study; with `trial`, that trial recorded in the store first (a resumed
        driver can hear of a trial before its start event)."""
        live = LIVE.get(self.live_key)
        if live is None and len(LIVE) == 1:  # restored from a study folder that has since moved
            live = next(iter(LIVE.values()))
        if live is not None and trial is not None and row_ids(live, trial.trial_id)[0] not in live.store.trials:
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
        publish(live)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        live = self._live(trial)
        if live is None:
            return
        _show_notes(live, trial.trial_id, result.get(NOTES))
        status = result.get("fit_status")
        if status == STORAGE:  # the disk is gone for every trial: stop the study for --resume
            raise StorageFull(result.get("storage_path") or live.store.study_dir / TUNE_DIR / trial.trial_id,
                              str(result.get("storage_reason")), key=result.get("storage_key"),
                              needed=result.get("storage_needed"), free=result.get("storage_free"))
        if status == OOM:
            _grant_larger_share(live, trial)
        elif status in ("diverged", "error"):
            text = result.get("fit_traceback") or result.get("fit_error")
            for rid in row_ids(live, trial.trial_id):
                live.store.upsert_trial(rid, status=status,
                                        error=_error_cell(live, rid, result.get("fit_error"), text))
                _mirror_end(live, rid)
        elif "epoch" in result and "loss" in result:
            # a configuration's seeds: each seed's own row (their mean went to Optuna and ASHA)
            slots = result.get(SLOTS_KEY)
            pairs = ([(seed_row_id(trial.trial_id, row["seed"]), row) for row in slots] if slots
                     else [(trial.trial_id, result)])
            copy = result.get(EXPLOIT_KEY)
            if copy is not None:  # a member's first epoch after it copied another: the lineage
                live.store.add_copy(trial.trial_id, copy)
                live.store.upsert_trial(trial.trial_id, config=stamped(copy["config"]))
            for rid, row in pairs:
                live.store.add_epoch(rid, row)
                live.store.upsert_trial(rid, peak_mem_gib=result.get("peak_mem_gib"), device=result.get("device"))
                _mirror_epoch(live, rid, row)
        _touch_wall(live, trial.trial_id)
        publish(live)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live = self._live(trial)
        if live is None:
            return
        for rid in row_ids(live, trial.trial_id):
            row = live.store.trials[rid]
            if row["status"] not in ("diverged", "error"):  # those were reported before the end
                planned = json.loads(row["config"])["optim"]["epochs"] if row["config"] else live.spec.max_epochs
                done = row["epochs_done"] or 0
                row["status"] = "completed" if done >= planned else "pruned"
                row["error"] = None
                _mirror_end(live, rid)
        _touch_wall(live, trial.trial_id, end=True)
        _leave_population(live, trial.trial_id)
        retain_checkpoints(live)
        publish(live)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live = self._live(trial)
        if live is None:
            return
        # the configuration's own failures end as results (run_trial): this is the machine's
        fault = _machine_fault(live, trial, final=True)
        text = _trial_error(trial)
        for rid in row_ids(live, trial.trial_id):
            error = _error_cell(live, rid, fault, text)
            row = live.store.trials.get(rid) or {}
            restarts = max(row.get("restarts") or 0, int(trial.run_metadata.num_failures) - 1)
            live.store.upsert_trial(rid, status="error", error=error, machine_fault=True, restarts=restarts)
            _mirror_end(live, rid)
        _touch_wall(live, trial.trial_id, end=True)
        _leave_population(live, trial.trial_id)
        retain_checkpoints(live)
        publish(live)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live = self._live()
        share = live.larger_shares.pop(trial.trial_id, None) if live is not None else None
        if live is not None and share is not None:  # a requeued trial may change its request
            trial.update_resources(live.resources.request(share))
            live.log(f"trial {trial.trial_id}: out of GPU memory; retrying from its last checkpoint "
                     f"with a GPU share of {share:g}")
            for rid in _known_rows(live, trial.trial_id):
                live.store.upsert_trial(rid, gpu_share=share)
        elif live is not None:
            live.log(f"trial {trial.trial_id}: {_machine_fault(live, trial, final=False)}")
            for rid in _known_rows(live, trial.trial_id):
                restarts = live.store.trials[rid]["restarts"] or 0
                live.store.upsert_trial(rid, restarts=restarts + 1)
        if live is not None and _known_rows(live, trial.trial_id):
            for rid in _known_rows(live, trial.trial_id):
                live.store.upsert_trial(rid, status="running")
            _touch_wall(live, trial.trial_id, end=True)
            publish(live)


def _leave_population(live: Live, trial_id: str) -> None:
    """A member that ended is waited for no more at the boundaries it did not reach."""
    if live.population is not None:
        live.population.end.remote(trial_id)


def _mirror_epoch(live: Live, trial_id: str, result: dict[str, Any]) -> None:
    """An epoch row to the study's live mirrors (storage.mirror), if it has any."""
    if live.mirrors is None:
        return
    row = live.store.trials[trial_id]
    config = config_from_record(json.loads(row["config"])) if row.get("config") else None
    params = {k: row.get(k) for k in (*live.spec.searched_keys, *(["cell"] if live.spec.is_ablation else []))}
    live.mirrors.epoch(trial_id, params, config, result)


def _mirror_end(live: Live, trial_id: str) -> None:
    if live.mirrors is not None:
        row = live.store.trials.get(trial_id) or {}
        live.mirrors.trial_end(trial_id, str(row.get("status")), row.get("error"))


ERRORS_DIR = "errors"  # in the study folder: each failed trial's full error text, <trial>.txt


def _error_cell(live: Live, row_id: str, line: Any, text: Any) -> str | None:
    """The `error` column: the error's last line and, where there is more to read, the file
    under the study folder that holds its whole text (a traceback, Ray's report)."""
    short = last_line(line)
    full = str(text or "").strip()
    if not full or full == (short or ""):
        return short
    relative = f"{ERRORS_DIR}/{row_id}.txt"
    try:
        write_atomic(live.store.study_dir / relative, full + "\n")
    except OSError:  # the line alone: the search goes on
        return short
    return f"{short} (full text: {relative})" if short else f"see {relative}"


def _machine_fault(live: Live, trial: Any, final: bool) -> str:
    """A fault of the machine in a few words: `worker killed (signal 9) after epoch 1`, then
    `; retried 3 times` when the restarts ran out, or what happens next when they did not."""
    text = _trial_error(trial) or ""
    row = live.store.trials.get(row_ids(live, trial.trial_id)[0]) or {}
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
    return shorten(last_line(text) or "trial failed (no error text)")


def _grant_larger_share(live: Live, trial: Any) -> None:
    """Out of GPU memory below a whole GPU: the coming failure is not the trial's fault, so it
    does not count against `failure.max_failures`, and the retry asks for fewer neighbours."""
    share = _gpu_share(trial)
    if 0 < share < 1:
        trial.max_failures += 1
        live.larger_shares[trial.trial_id] = larger_share(share)


def _gpu_share(trial: Any) -> float:
    return float(trial.placement_group_factory.required_resources.get("GPU", 0.0))


def row_ids(live: Live, trial_id: str) -> list[str]:
    """The store rows of one Ray trial: itself, or one per seed (`search.seeds_per_trial`), named
    `<trial>-s<seed>`."""
    count = live.spec.search.seeds_per_trial
    if count <= 1:
        return [trial_id]
    return [seed_row_id(trial_id, seed) for seed in seeds_of(live.spec.base.seed, count)]


def seed_row_id(trial_id: str, seed: int) -> str:
    return f"{trial_id}-s{seed}"


def _known_rows(live: Live, trial_id: str) -> list[str]:
    return [rid for rid in row_ids(live, trial_id) if rid in live.store.trials]


def _record_start(live: Live, trial: Any) -> None:
    flat = expand_params(trial.config)
    params = {k: flat[k] for k in live.spec.searched_keys if k in flat}
    cfg = live.spec.trial_config(flat)
    ids = row_ids(live, trial.trial_id)
    seeds = seeds_of(cfg.seed, len(ids)) if len(ids) > 1 else [cfg.seed]  # also searched in repeated grids
    for rid, seed in zip(ids, seeds, strict=True):
        values: dict[str, Any] = dict(params)
        existing = live.store.trials.get(rid)
        if existing is None or existing["status"] in (None, "running", "error"):
            values["status"] = "running"
            values["error"] = None
            values["machine_fault"] = None
        if live.spec.is_ablation:
            values["cell"] = live.spec.cell_of(trial.config)
        if len(ids) > 1:
            values.update(fuse_group=trial.trial_id, fuse_k=len(ids))
        elif live.per_process > 1:
            values.update(fuse_k=live.per_process)
        values["seed"] = seed
        values["gpu_share"] = _gpu_share(trial)
        seeded = cfg.with_overrides({"seed": seed}, "<seeds_per_trial>") if seed != cfg.seed else cfg
        values["config"] = stamped(seeded.resolved().to_dict())
        if live.store.trial_copies(rid) and existing is not None and existing.get("config"):
            # a member that copied another keeps its lineage: its config and values now
            values["config"] = existing["config"]  # (its searched columns stay its grid point's)
        live.store.upsert_trial(rid, **values)
        row = live.store.trials[rid]
        if row["epochs_done"] is None:
            row["epochs_done"] = 0
    live.segment_start[trial.trial_id] = time.time()


def retain_checkpoints(live: Live) -> None:
    """Bounded disk (`storage.keep_checkpoints`): of the finished trials, only the best K completed
    ones keep their checkpoints; pruned and failed ones keep none. Running and interrupted trials
    keep theirs (Tune keeps one each), so `--resume` always finds what it needs."""
    finished: dict[str, dict[str, Any]] = {}  # Ray trial (its checkpoint folder) -> a row of it
    scores: dict[str, list[float | None]] = {}
    for rid, row in live.store.trials.items():
        if row["status"] not in (None, "running") and not row["machine_fault"]:
            folder = row.get("fuse_group") or rid
            finished.setdefault(folder, row)
            scores.setdefault(folder, []).append(_score(live.spec, live.store, rid))
    mean = {tid: _mean_or_none(values) for tid, values in scores.items()}
    ranked = [tid for tid, row in finished.items()
              if row["status"] == "completed" and is_ranked(row["status"], mean[tid])]
    ranked.sort(key=lambda tid: direction(live.spec.mode).rank_key(mean[tid]))
    kept = set(ranked[: live.spec.storage.keep_checkpoints])
    for tid in finished:
        if tid not in kept:
            for folder in (live.store.study_dir / TUNE_DIR / tid).glob("checkpoint_*"):
                shutil.rmtree(folder, ignore_errors=True)


def _mean_or_none(values: list[float | None]) -> float | None:
    """A seeded configuration's score: the mean of its seeds' (None unless every seed has one)."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None) / len(values)


def _show_notes(live: Live, trial_id: str, notes: Any) -> None:
    """Skipped videos once per study (every trial skips the same ones); other notes per trial."""
    for note in notes or ():
        if str(note).startswith("skipping "):
            if note not in live.warned:
                live.warned.add(note)
                live.log(f"warning: {note}")
        else:
            live.log(f"trial {trial_id}: {note}")


def _touch_wall(live: Live, trial_id: str, end: bool = False) -> None:
    """wall_s accumulates over a trial's running segments (a resumed trial keeps its earlier time)."""
    now = time.time()
    start = live.segment_start.get(trial_id)
    if start is None:
        return
    for rid in _known_rows(live, trial_id):
        row = live.store.trials[rid]
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


def lineage_values(spec: SpaceSpec, cfg: TrialConfig) -> dict[str, Any]:
    """A population member's searched values at its last epoch, and its seed: what the live
    leaderboard shows once it copied another. (Its trials.parquet row keeps the values it was
    started with, which name its point of the population for a resume; its config keeps the
    whole lineage.)"""
    from mtsearch.train.in_force import in_force

    flat = in_force(cfg, cfg.optim.epochs).to_flat()
    return {key: flat[key] for key in spec.searched_keys if key in flat} | {"seed": cfg.seed}


def _score(spec: SpaceSpec, store: StudyStore, trial_id: str) -> float | None:
    """The metric at the trial's last evaluated epoch so far: what Optuna and ASHA are told."""
    values = [r.get(spec.metric) for r in store.trial_epochs(trial_id)]
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def snapshot(live: Live) -> SearchProgress:
    rows = []  # one per Ray trial: a seeded configuration's seeds as one row, scored by their mean
    for ray_id, group in live.store.by_ray_trial().items():
        scores = [_score(live.spec, live.store, row["trial_id"]) for row in group]
        row = {**group[0], "trial_id": ray_id, "score": _mean_or_none(scores)}
        if live.population is not None:  # shown: its values at its last epoch, and its copies
            if row.get("config"):
                row.update(lineage_values(live.spec, config_from_record(json.loads(row["config"]))))
            row["exploits"] = len(live.store.trial_copies(ray_id))
        rows.append(row)
    return SearchProgress(
        name=live.spec.name, study_dir=live.store.study_dir, metric=live.spec.metric, mode=live.spec.mode,
        total=live.spec.total_trials, searched_keys=live.spec.searched_keys, counts=live.store.counts(),
        rows=rows, started=live.started, resumed=live.resumed, done_at_start=live.done_at_start,
    )


def publish(live: Live) -> None:
    try:
        live.store.flush()
    except OSError as exc:
        disk = storage_failure(exc)
        if disk is None:
            raise
        raise disk from None  # ends Tune's loop; run_search stops the study for --resume
    if live.on_update is not None:
        live.on_update(snapshot(live))
