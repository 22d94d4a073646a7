"""The trainable: one trial in a Ray worker, wrapping the trainer (`mtsearch.train.fit`).

One `tune.report` per epoch with the epoch's metrics and checkpoint; a resumed trial starts from
`tune.get_checkpoint()`. A failure of the configuration ends the trial as a result (`fit_status`);
only faults of the machine leave as exceptions, for Tune to retry on a fresh worker.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import ray
from ray import tune

from mtsearch.config import TrialConfig
from mtsearch.distributions import expand_params
from mtsearch.errors import GpuOutOfMemory, is_out_of_memory, storage_failure
from mtsearch.metrics import direction
from mtsearch.search.population import (
    EXPLOIT_KEY,
    KEPT_DIR,
    keep_weights,
    last_score,
    member_config,
    take_over,
)
from mtsearch.search.study import ADOPTED_CHECKPOINT
from mtsearch.search.tuning import OBJECTIVE
from mtsearch.train.slots import SlotLost

NOTES = "trainer_notes"  # report key carrying the trainer's log lines to the driver
OOM = "out_of_gpu_memory"  # fit_status of the report a trial sends before failing out of memory
STORAGE = "storage_failed"  # fit_status of the report a trial sends before failing on a bad disk


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


def _default_trainer(seeds: int = 1) -> Trainer:
    """`fit`; with `search.seeds_per_trial` above 1, the configuration's seeds side by side (`fit_seeds`)."""
    if seeds > 1:
        from functools import partial

        from mtsearch.train.side_by_side import fit_seeds

        return partial(fit_seeds, seeds=seeds)
    from mtsearch.train import fit

    return fit


def run_trial(config: dict[str, Any], *, base: dict[str, Any], metric: str, mode: str,
              max_failures: int = 0, trainer: Trainer | None = None, seeds: int = 1,
              population: Any = None, boundaries: tuple[int, ...] = ()) -> None:
    """Tune function trainable: train one config, reporting each epoch with its checkpoint.

    A failure of the configuration (an exception in training, out of memory on a whole GPU) is
    retried here, from the trainer's last checkpoint, up to `max_failures` times, then reported
    as `fit_status: error`: it ends the trial as a result. Only faults of the machine leave as
    exceptions, for Tune to retry on a fresh worker (`failure.max_restarts`): out of memory on a
    GPU share (reported first, so the retry gets a larger share) and a failing disk (reported
    first, so the driver stops the study).

    `population` (a `PopulationCoordinator`): the trial is a member of a population-based
    search, which after each of `boundaries` may copy another member (search/population.py).
    """
    train = trainer or _default_trainer(seeds)
    cfg = TrialConfig.from_mapping(base, "<study base>").with_overrides(expand_params(config), "<trial>")
    last = {"objective": direction(mode).worst, "epoch": 0}
    notes: list[str] = []  # the trainer's log (skipped videos, resumes, retries), shown by the driver

    member = _Member(population, boundaries, metric) if population is not None else None

    def send(metrics: dict[str, Any], checkpoint: Any = None) -> None:
        report = {**metrics, OBJECTIVE: last["objective"], "epochs_planned": cfg.optim.epochs}
        if member is not None and member.copied and "loss" in metrics:
            report[EXPLOIT_KEY] = member.copied.pop()
        if notes:
            report[NOTES] = list(notes)
            notes.clear()
        tune.report(report, checkpoint=checkpoint)

    def on_epoch(metrics: dict[str, Any], ckpt_dir: Path | None) -> bool | None:
        value = metrics.get(metric)
        if value is not None and math.isfinite(value):
            last["objective"] = float(value)
        last["epoch"] = int(metrics["epoch"])
        checkpoint = None
        if ckpt_dir is not None:
            checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir))
            checkpoint.set_metadata({"epoch": last["epoch"]})  # what set_aside_checkpoint reads
        send(metrics, checkpoint)
        if member is not None and ckpt_dir is not None and last["epoch"] in boundaries:
            score = last["objective"] if math.isfinite(last["objective"]) else None
            if member.arrive(work, last["epoch"], score, now["cfg"]):
                return False  # the trainer stops; the copy is put in its place below
        return None

    def final(fit_status: str, **extra: Any) -> None:
        send({"epoch": last["epoch"], "fit_status": fit_status, **extra})

    failures = 0
    work = prepare_work_dir(whole=seeds > 1)
    now = {"cfg": cfg}  # the config training now: a member's lineage changes it
    if member is not None:
        now["cfg"] = member.begin(cfg, work, last, notes)
    while True:
        try:
            result = train(now["cfg"], work, on_epoch=on_epoch, resume=True,
                           log=member.log(notes) if member is not None else notes.append)
        except Exception as exc:  # noqa: BLE001 - sorted by _ends_trial into the machine's and the config's
            if _ends_trial(exc, final, failures, max_failures):
                return
            failures += 1
            notes.append(f"failed: {error_message(exc)}; retry {failures} of {max_failures}"
                         " from its last checkpoint")
            continue
        if member is not None and member.decision is None and getattr(result, "status", None) == "diverged":
            member.diverged(last["epoch"], now["cfg"])
        if member is not None and member.decision is not None:
            now["cfg"] = member.take_over(work, now["cfg"], notes)
            continue
        break
    if getattr(result, "status", None) == "diverged":
        final("diverged", fit_error=str(result.error or "loss is not finite"))
    shutil.rmtree(work, ignore_errors=True)


def error_message(exc: BaseException) -> str:
    """A training failure in one line; out of memory says how much of a GPU the trial held."""
    if is_out_of_memory(exc):
        share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
        return str(GpuOutOfMemory(share, last_line(exc) or ""))
    return error_line(exc)


def _ends_trial(exc: Exception, final: Callable[..., None], failures: int, max_failures: int) -> bool:
    """Sort a training exception. A fault of the machine is raised for Tune to retry on a fresh
    worker (reported first where the driver acts on it); a failure of the config ends the trial
    (True) once its retries are spent."""
    if isinstance(exc, (ray.exceptions.RayActorError, SlotLost)):  # its process host died, or
        raise exc  # counted it gone: Tune restarts it from its checkpoint
    disk = storage_failure(exc)
    if disk is not None:
        final(STORAGE, fit_error=str(disk), storage_path=disk.path, storage_reason=disk.reason,
              storage_key=disk.key or None, storage_needed=disk.needed, storage_free=disk.free)
        raise disk from None
    share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    if is_out_of_memory(exc) and 0 < share < 1:
        final(OOM)  # the driver grants a larger share before the failure arrives
        raise GpuOutOfMemory(share, last_line(exc) or "") from None
    if failures >= max_failures:
        final("error", fit_error=error_message(exc), fit_traceback=_traceback_text(exc))
        return True
    return False


class _Member:
    """A trial's side of population-based training: arrive at a boundary with its weights of
    that epoch kept, hear the decision, and on a copy put the donor's state in its place."""

    def __init__(self, coordinator: Any, boundaries: tuple[int, ...], metric: str):
        self.coordinator, self.boundaries, self.metric = coordinator, boundaries, metric
        self.trial_id = tune.get_context().get_trial_id()
        self.kept_dir = Path(tune.get_context().get_storage().trial_fs_path) / KEPT_DIR
        self.decision: dict[str, Any] | None = None
        self.copied: list[dict[str, Any]] = []  # the copy the next epoch's report carries

    def log(self, notes: list[str]) -> Log:
        """The trainer's log: its "resuming from epoch" after a copy goes (the copy's note said it)."""
        def say(line: str) -> None:
            if self.copied and line.startswith("resuming from epoch"):
                return
            notes.append(line)
        return say

    def begin(self, cfg: TrialConfig, work: Path, last: dict[str, Any], notes: list[str]) -> TrialConfig:
        """The config to start on: the member's lineage so far (its checkpoint's), with what was
        decided at the boundary it restarts from done again. `last` gets the checkpoint's epoch
        and score."""
        if cfg.threads is None:  # as the study records it (SearchSpec.trial_config): a lineage's
            cfg = cfg.with_overrides({"threads": torch_threads()}, "<trial>")  # config replays it
        cfg, at, history = member_config(cfg, work)
        score = last_score(history, self.metric)
        last.update(epoch=at, **({"objective": score} if score is not None else {}))
        if at in self.boundaries:  # restarted from a boundary's checkpoint: do what was decided there
            self.arrive(work, at, score, cfg)
        return self.take_over(work, cfg, notes)

    def arrive(self, work: Path, epoch: int, score: float | None, cfg: TrialConfig) -> bool:
        """Wait at boundary `epoch` for the population; whether this member is to copy another."""
        kept = keep_weights(work, self.kept_dir, epoch)
        self.decision = ray.get(self.coordinator.decide.remote(
            self.trial_id, epoch, score, cfg.resolved().to_dict(), kept))
        return self.decision is not None

    def diverged(self, epoch: int, cfg: TrialConfig) -> None:
        """A member whose loss diverged after `epoch` copies a donor at the next boundary."""
        later = [b for b in self.boundaries if b > epoch]
        if later:
            self.decision = ray.get(self.coordinator.decide.remote(
                self.trial_id, later[0], None, cfg.resolved().to_dict(), None, True))

    def take_over(self, work: Path, cfg: TrialConfig, notes: list[str]) -> TrialConfig:
        """The config to train on: the decision's, with the donor's weights in `work`, or `cfg`."""
        decision, self.decision = self.decision, None
        if decision is None:
            return cfg
        new_cfg = take_over(work, decision)
        changes = ", ".join(f"{k} {decision['old'][k]:.4g} -> {v:.4g}" for k, v in decision["new"].items())
        notes.append(f"copies trial {decision['donor']} at epoch {decision['donor_epoch']}"
                     f" ({decision['reason']}): {changes}")
        self.copied = [{k: decision[k] for k in ("donor", "donor_epoch", "old", "new", "reason", "config")}
                       | {"epoch": decision["donor_epoch"]}]
        return new_cfg


def torch_threads() -> int:
    """The trial's torch threads: its CPUs (a share below one gets one thread)."""
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def prepare_work_dir(whole: bool = False) -> Path:
    """The trainer's folder, starting from Tune's last reported checkpoint: the source of truth,
    as the trainer may have saved an epoch that was never reported, and resuming from that would
    skip its row. (A retry in the same worker goes on from the trainer's own checkpoint.)
    `whole`: the checkpoint is the whole folder (a configuration's seeds, a `seed<N>/checkpoint/` each)."""
    threads = torch_threads()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # a trainer that does not use torch
        pass
    work = Path(tune.get_context().get_trial_dir()) / "work"
    shutil.rmtree(work, ignore_errors=True)
    checkpoint = tune.get_checkpoint()
    # a trial Tune lost goes on from the checkpoint the driver set aside in its folder on the
    # study's storage (set_aside_checkpoint), until Tune has one of its own
    adopted = Path(tune.get_context().get_storage().trial_fs_path) / ADOPTED_CHECKPOINT
    if checkpoint is not None:
        shutil.rmtree(adopted, ignore_errors=True)
        with checkpoint.as_directory() as ckpt_dir:
            shutil.copytree(ckpt_dir, work if whole else work / "checkpoint")
    elif adopted.is_dir():
        shutil.copytree(adopted, work if whole else work / "checkpoint")
    return work


def error_line(exc: BaseException) -> str:
    """`ValueError: boom`: the exception's type and the last line of its message, within 300 chars."""
    line = last_line(exc)
    text = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return shorten(text)


def shorten(text: str, limit: int = 300) -> str:
    """Cut at a word boundary, with an ellipsis, so a long message never ends mid-word."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0]
    return cut + "…"


def last_line(text: Any) -> str | None:
    """The last non-blank line, cut at a word boundary within 500 characters."""
    if text is None:
        return None
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return shorten(lines[-1], 500) if lines else None


def _traceback_text(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
