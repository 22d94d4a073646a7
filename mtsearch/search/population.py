"""Population-based training in a search: the driver's coordinator, and a member's side of it.

Members train as ordinary Tune trials, all at once (`scheduler.population` of them side by
side). After each boundary epoch a member keeps its weights of that epoch (a hard link to its
checkpoint: free, and safe, since checkpoints are replaced by rename) and asks the coordinator,
which answers once every live member has arrived (`pbt.decide_boundary`). A member told to copy
a donor stops its trainer, puts the donor's checkpoint in its own working folder with the new
config, and resumes from it: the trainer puts the new values in force at the next epoch, in the
optimiser's param groups and the plateau rule (`step.put_in_force`), whatever the donor's
state held. Its first report after that carries the copy, which the driver writes to
`lineage.parquet` with the epoch's row, and the member's config (its lineage) to trials.parquet.

The decisions are written to `population.json` as they are made, so a member that restarts
from the checkpoint of a decided boundary (a kill -9, a lost worker) does what was decided.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from mtsearch.config import EXECUTION_KEYS, TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.files import atomic_output, write_atomic
from mtsearch.records import stamped
from mtsearch.search.pbt import (
    Arrival,
    PopulationHistory,
    PopulationRules,
    Segment,
    decide_boundary,
)
from mtsearch.space import SpaceSpec

POPULATION_FILE = "population.json"  # the decided boundaries
KEPT_DIR = "pbt"  # in a member's trial folder: its weights of each boundary a donor may copy
INITIAL_KEY = "initial"  # in POPULATION_FILE: the members `run --from` took from an earlier study
EXPLOIT_KEY = "pbt_exploit"  # report key: the copy a member's first epoch after it trained from


@ray.remote(num_cpus=0, max_concurrency=1000)
class PopulationCoordinator:
    """Decides each boundary once all live members have arrived; remembers every decision."""

    def __init__(self, rules: PopulationRules, study_dir: str):
        self.rules, self.path = rules, Path(study_dir) / POPULATION_FILE
        self.lock = threading.Condition()
        self.arrived: dict[int, dict[str, Arrival]] = {}
        self.ended: set[str] = set()
        recorded = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.decided: dict[int, dict[str, Any]] = {int(e): d for e, d in recorded.get("decided", {}).items()}
        self.history = PopulationHistory(
            segments=[Segment(s["epoch"], s["before"], s["after"], tuple(s["values"]))
                      for s in recorded.get("segments", [])],
            start=dict(recorded.get("start", {})))
        self.kept: dict[int, list[str]] = {int(e): v for e, v in recorded.get("kept", {}).items()}
        self.initial = recorded.get(INITIAL_KEY, [])

    def decide(self, trial_id: str, epoch: int, score: float | None, config: dict[str, Any],
               checkpoint: str | None, diverged: bool = False) -> dict[str, Any] | None:
        """Blocks until boundary `epoch` is decided; this member's decision (None: train on)."""
        with self.lock:
            if epoch not in self.decided:
                self.arrived.setdefault(epoch, {})[trial_id] = Arrival(score, config, checkpoint, diverged)
                if checkpoint:
                    self.kept.setdefault(epoch, []).append(checkpoint)
                self._decide_ready()
            while epoch not in self.decided:
                self.lock.wait(timeout=5.0)
            return self.decided[epoch].get(trial_id)

    def end(self, trial_id: str) -> None:
        """A member left for good (finished, or failed past its retries): nobody waits for it."""
        with self.lock:
            self.ended.add(trial_id)
            self._decide_ready()

    def decisions(self) -> dict[int, dict[str, Any]]:
        with self.lock:
            return dict(self.decided)

    def _decide_ready(self) -> None:
        for epoch in sorted(self.arrived):
            arrivals = self.arrived[epoch]
            if epoch in self.decided or len(set(arrivals) | self.ended) < self.rules.population:
                continue
            self.decided[epoch] = decide_boundary(self.rules, epoch, arrivals, self.history)
            del self.arrived[epoch]
            self._save()
            self._drop_kept(before=epoch)
            self.lock.notify_all()

    def _drop_kept(self, before: int) -> None:
        """Weights kept for a boundary before `before`: every copy of them is done (each member has
        trained to `before` since), so they go; `before`'s own stay until the next is decided."""
        for epoch in [e for e in self.kept if e < before]:
            for path in self.kept.pop(epoch):
                Path(path).unlink(missing_ok=True)
        self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps({
            "decided": {str(e): d for e, d in sorted(self.decided.items())},
            "segments": [asdict(s) for s in self.history.segments],
            "start": self.history.start,
            "kept": {str(e): v for e, v in sorted(self.kept.items())},
            **({INITIAL_KEY: self.initial} if self.initial else {}),
        }, indent=1, sort_keys=True))


def start_population(spec: SpaceSpec, resources: Any, study_dir: Path, members: list[dict[str, Any]] | None,
                     ended: set[str], created: bool) -> Any:
    """A population-based search's coordinator (None for any other search), once the cluster is
    known to train the whole population at once and `members` (`run --from`) are recorded. The
    `ended` members (finished before a resume) keep nobody waiting at a boundary. A population
    refused here, once the GPU shares are known, leaves no new (`created`) study folder behind."""
    if not spec.scheduler.population_based:
        return None
    try:
        check_population_fits(spec, max([resources.fixed, *resources.shares.values()], default=0.0))
    except InvalidInput:
        if created:
            shutil.rmtree(study_dir, ignore_errors=True)
        raise
    keep_initial(study_dir, members or [])
    coordinator = start_coordinator(PopulationRules.of(spec), study_dir)
    ray.get([coordinator.end.remote(t) for t in ended])
    return coordinator


def keep_initial(study_dir: Path, members: list[dict[str, Any]]) -> None:
    """Record the members taken from an earlier study (`run --from`) before the first trial, so a
    resumed study draws the same population; a study that has its record keeps it."""
    path = study_dir / POPULATION_FILE
    if members and not path.exists():
        write_atomic(path, json.dumps({INITIAL_KEY: members}, indent=1, sort_keys=True))


def initial_members(study_dir: Path) -> list[dict[str, Any]]:
    """The members a study took from an earlier one ([] for a Sobol design alone)."""
    path = study_dir / POPULATION_FILE
    return list(json.loads(path.read_text()).get(INITIAL_KEY, [])) if path.exists() else []


def start_coordinator(rules: PopulationRules, study_dir: Path) -> Any:
    """The study's coordinator, on the driver's node (it writes into the study folder); it ends with the driver."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return PopulationCoordinator.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(rules, str(study_dir))


# ---- a member's side --------------------------------------------------------------------------

def keep_weights(work: Path, kept_dir: Path, epoch: int) -> str:
    """This epoch's checkpoint, kept where a donor's weights are copied from (a hard link where
    the filesystem allows: the trainer replaces its checkpoint by rename, never in place)."""
    from mtsearch.train.checkpoint import CHECKPOINT_FILE

    kept_dir.mkdir(parents=True, exist_ok=True)
    target = kept_dir / f"e{epoch:04d}.pt"
    target.unlink(missing_ok=True)
    source = work / "checkpoint" / CHECKPOINT_FILE
    try:
        os.link(source, target)
    except OSError:  # another filesystem: a copy
        with atomic_output(target) as tmp:
            shutil.copyfile(source, tmp)
    return str(target)


def take_over(work: Path, decision: dict[str, Any]) -> TrialConfig:
    """Put the donor's weights of the boundary in this member's working folder under the new
    config (its own epoch rows stay its history); returns that config, which resumes from them."""
    import torch

    from mtsearch.train.checkpoint import CHECKPOINT_FILE, read_checkpoint
    own_file = work / "checkpoint" / CHECKPOINT_FILE
    own_history = list(read_checkpoint(own_file)["history"]) if own_file.exists() else []
    donor_file = Path(decision["checkpoint"])
    state = dict(read_checkpoint(donor_file))
    cfg = TrialConfig.from_mapping(decision["config"], "<population>")
    state["config"] = stamped(cfg.resolved().to_dict())
    state["history"] = own_history
    own_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(own_file) as tmp:
        torch.save(state, tmp)
    return cfg


def member_config(cfg: TrialConfig, work: Path) -> tuple[TrialConfig, int, list[dict[str, Any]]]:
    """A member's config as its checkpoint has it (its lineage), with this run's execution keys;
    the checkpoint's epoch (0: none) and its history."""
    from mtsearch.train.checkpoint import CHECKPOINT_FILE, read_checkpoint, recorded_config
    path = work / "checkpoint" / CHECKPOINT_FILE
    if not path.exists():
        return cfg, 0, []
    state = read_checkpoint(path)
    recorded = recorded_config(state, path)
    flat = cfg.to_flat()
    recorded = recorded.with_overrides({k: flat[k] for k in EXECUTION_KEYS if flat.get(k) is not None},
                                       "<member>")
    return recorded, int(state["epoch"]), list(state["history"])


def last_score(history: list[dict[str, Any]], metric: str) -> float | None:
    """The member's score at its last epoch: the last finite value of the metric so far."""
    import math

    value = None
    for row in history:
        v = row.get(metric)
        if v is not None and math.isfinite(v):
            value = float(v)
    return value


def check_population_fits(spec: SpaceSpec, gpu_share: float | None = None) -> None:
    """A population trains side by side, each member waiting for the others at each boundary: a
    member that could not start would keep every other waiting. Refuse a population the cluster
    cannot run at once: its CPUs, and its GPU shares (`gpu_share`; by default the space's own
    number, where it gives one). Nothing for a search of another kind."""
    if not spec.scheduler.population_based:
        return
    total = ray.cluster_resources()
    count, per_trial = spec.scheduler.population, spec.resources.cpus_per_trial
    cpus = float(total.get("CPU", 0.0))
    if per_trial * count > cpus + 1e-9:
        fits = int(cpus // per_trial) if per_trial else 0
        raise InvalidInput(spec.source, "scheduler.population",
                           f"its {count} members train at once, and this Ray cluster has {cpus:g} CPUs for "
                           f"{fits} of them at resources.cpus_per_trial {per_trial:g}: lower the "
                           f"population or cpus_per_trial (e.g. {cpus / count:g})", count)
    if gpu_share is None:
        gpus_per_trial = spec.resources.gpus_per_trial
        gpu_share = gpus_per_trial if isinstance(gpus_per_trial, float) else 0.0
    gpus = float(total.get("GPU", 0.0))
    if gpu_share > 0 and gpu_share * count > gpus + 1e-9:
        raise InvalidInput(spec.source, "scheduler.population",
                           f"its {count} members train at once, and {count} GPU shares of {gpu_share:g} "
                           f"exceed this cluster's {gpus:g} GPUs: lower the population or "
                           "resources.gpus_per_trial", count)
