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
              max_failures: int = 0, trainer: Trainer | None = None, seeds: int = 1) -> None:
    """Tune function trainable: train one config, reporting each epoch with its checkpoint.

    A failure of the configuration (an exception in training, out of memory on a whole GPU) is
    retried here, from the trainer's last checkpoint, up to `max_failures` times, then reported
    as `fit_status: error`: it ends the trial as a result. Only faults of the machine leave as
    exceptions, for Tune to retry on a fresh worker (`failure.max_restarts`): out of memory on a
    GPU share (reported first, so the retry gets a larger share) and a failing disk (reported
    first, so the driver stops the study).
    """
    train = trainer or _default_trainer(seeds)
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
        checkpoint = None
        if ckpt_dir is not None:
            checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir))
            checkpoint.set_metadata({"epoch": last["epoch"]})  # what set_aside_checkpoint reads
        send(metrics, checkpoint)

    def final(fit_status: str, **extra: Any) -> None:
        send({"epoch": last["epoch"], "fit_status": fit_status, **extra})

    failures = 0
    work = prepare_work_dir(whole=seeds > 1)
    while True:
        try:
            result = train(cfg, work, on_epoch=on_epoch, resume=True, log=notes.append)
            break
        except Exception as exc:  # noqa: BLE001 - sorted below into the machine's and the config's
            if isinstance(exc, (ray.exceptions.RayActorError, SlotLost)):  # its process host died, or
                raise  # counted it gone: Tune restarts it from its checkpoint
            disk = storage_failure(exc)
            if disk is not None:
                final(STORAGE, fit_error=str(disk), storage_path=disk.path, storage_reason=disk.reason,
                      storage_key=disk.key or None, storage_needed=disk.needed, storage_free=disk.free)
                raise disk from None
            share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
            if is_out_of_memory(exc) and 0 < share < 1:
                final(OOM)  # the driver grants a larger share before the failure arrives
                raise GpuOutOfMemory(share, last_line(exc) or "") from None
            message = str(GpuOutOfMemory(share, last_line(exc) or "")) if is_out_of_memory(exc) \
                else error_line(exc)
            if failures >= max_failures:
                final("error", fit_error=message, fit_traceback=_traceback_text(exc))
                return
            failures += 1
            notes.append(f"failed: {message}; retry {failures} of {max_failures} from its last checkpoint")
    if getattr(result, "status", None) == "diverged":
        final("diverged", fit_error=str(result.error or "loss is not finite"))
    shutil.rmtree(work, ignore_errors=True)


def prepare_work_dir(whole: bool = False) -> Path:
    """The trainer's folder, starting from Tune's last reported checkpoint: the source of truth,
    as the trainer may have saved an epoch that was never reported, and resuming from that would
    skip its row. (A retry in the same worker goes on from the trainer's own checkpoint.)
    `whole`: the checkpoint is the whole folder (a configuration's seeds, a `seed<N>/checkpoint/` each)."""
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
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
