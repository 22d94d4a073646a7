"""The trainer: `fit(config, on_epoch=...)`, a plain function that knows nothing of Ray.

One epoch = one random clip per training video (thesis §4.2). Evaluation every `eval.every`
epochs and after the last: video-level prediction by averaging softmax over all non-overlapping
centre-cropped clips, Hit@1/Hit@5 over videos, direction accuracy on the same clips.
Checkpoints (model, optimizer, scheduler, RNG states, history) are written atomically after
every epoch, so a killed run resumes from its last finished epoch and reproduces the metrics
of an uninterrupted run (same seed, CPU): every random choice is seeded from (seed, epoch).
ReduceLROnPlateau is stepped each epoch on the epoch's training loss ("the learning rate is
reduced whenever the loss plateaus", thesis §4.2), so its patience counts epochs.

On a GPU the host must never wait for the device inside an epoch: loader workers hand
over uint8 clips in pinned memory, normalised on the device; a step's random choices are drawn on
the host and copied once; losses accumulate on the device and are read every SYNC_EVERY steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtsearch.config import TrialConfig
from mtsearch.metrics import EPOCH_COLUMNS, EVALUATED, best_epoch
from mtsearch.records import adopt_recorded
from mtsearch.train.checkpoint import (
    CHECKPOINT_FILE,
    read_checkpoint,
    recorded_config,
    restore,
    save_checkpoint,
)
from mtsearch.train.device import (
    configure_torch,
    device_label,
    loader_workers,
    peak_memory_gib,
    pick_device,
    seed_everything,
)
from mtsearch.train.evaluate import evaluate, evaluate_once, named
from mtsearch.train.in_force import changes_at, in_force
from mtsearch.train.step import (
    Diverged,
    OnBatch,
    Training,
    build_training,
    put_in_force,
    step_lr_scheduler,
    train_epoch,
)

OnEpoch = Callable[[dict[str, Any], "Path | None"], "bool | None"]


@dataclass
class FitResult:
    status: str  # completed | diverged | stopped
    epochs_done: int
    best_epoch: int | None
    best_val_hit1: float | None
    best_val_hit5: float | None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    test_hit1: float | None = None  # the final weights on the test split (selection: val)
    test_hit5: float | None = None
    selection: str = "val"  # the split its evaluations ran on (a resumed older run: test)


def fit(
    cfg: TrialConfig,
    out_dir: str | Path | None = None,
    *,
    on_epoch: OnEpoch | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    on_batch: OnBatch | None = None,
    warn: Callable[[str], None] | None = None,
) -> FitResult:
    """Train `cfg` for `optim.epochs` epochs; checkpoints go to `out_dir/checkpoint/`.

    `log` gets progress notes, `warn` (default: `log`) the videos skipped as unreadable.
    """
    say = log or (lambda msg: None)
    run = prepare_run(cfg, out_dir, resume=resume, say=say, warn=warn or say)
    return train_epochs(run, on_epoch=on_epoch, on_batch=on_batch, say=say)


@dataclass
class TrialRun:
    """One trial between its epochs: built once by `prepare_run` (data, network, optimiser, the
    checkpoint it resumes), then trained by `train_epochs`. `fit` runs one; `train/slots.py` runs several side by side in one process."""

    cfg: TrialConfig  # resolved, with a resumed run's recorded defaults
    device: torch.device
    ckpt_dir: Path | None
    training: Training
    train_set: Any
    eval_set: Any  # what evaluations during training (ASHA, Optuna, best_epoch) see
    test_set: Any  # met once, by the final weights
    train_loader: Any
    eval_loader: Any
    history: list[dict[str, Any]]
    start_epoch: int


def prepare_run(
    cfg: TrialConfig, out_dir: str | Path | None, *, resume: bool,
    say: Callable[[str], None], warn: Callable[[str], None],
    global_rng: AbstractContextManager[Any] | None = None,
) -> TrialRun:
    """Everything a trial builds before its first epoch, in the order that fixes its random
    state: the data, then the weights from `seed`, then a checkpoint's state over them.
    `global_rng` (slots that join others training) is held from seeding to the restored state."""
    from mtsearch.data.clips import make_loader

    ckpt_dir = Path(out_dir) / "checkpoint" if out_dir is not None else None
    ckpt_file = ckpt_dir / CHECKPOINT_FILE if ckpt_dir is not None else None
    state = read_checkpoint(ckpt_file) if resume and ckpt_file is not None and ckpt_file.exists() else None
    if state is not None:
        cfg = adopt_recorded(cfg, recorded_config(state, ckpt_file))
    cfg = cfg.resolved()
    device = pick_device(cfg.device)
    configure_torch(device, cfg.threads)
    train_set, val_set, test_set, num_classes = load_clips(cfg, warn)
    eval_set = val_set if cfg.selection == "val" else test_set

    with global_rng if global_rng is not None else nullcontext():
        seed_everything(cfg.seed)
        training = build_training(cfg, num_classes, device, warn)
        history: list[dict[str, Any]] = []
        start_epoch = 1
        if state is not None:
            restore(state, ckpt_file, cfg, training.model, training.optimizer, training.scheduler)
            history = list(state["history"])
            start_epoch = state["epoch"] + 1
            say(f"resuming from epoch {state['epoch']} ({ckpt_dir})")

    workers = loader_workers(cfg, device)
    train_loader = make_loader(train_set, cfg.optim.batch_size, True, workers, device, cfg.seed)
    eval_loader = make_loader(eval_set, cfg.eval_batch_size, False, workers, device, cfg.seed)
    return TrialRun(cfg, device, ckpt_dir, training, train_set, eval_set, test_set,
                    train_loader, eval_loader, history, start_epoch)


def train_epochs(
    run: TrialRun, *, on_epoch: OnEpoch | None, on_batch: OnBatch | None,
    say: Callable[[str], None], warmup: AbstractContextManager[Any] | None = None,
    global_rng: AbstractContextManager[Any] | None = None,
    keep_going: Callable[[], bool] | None = None,
) -> FitResult:
    """The epochs from `run.start_epoch` on: train, step the schedule, evaluate, checkpoint and
    report each; stops early when `on_epoch` returns False, `keep_going` (asked before each
    epoch) returns False or the loss is not finite.

    `warmup` (slots sharing a GPU: a lock they share) is held through the epochs that compile,
    autotune or capture something new (the first, the first evaluated one, the one where the
    tracking warm-up ends and the last), which must not run in two threads at once.
    `global_rng` (slots that others join while they train) is held while the epoch reseeds the
    global RNG, which a joining slot's initial weights draw from.
    """
    cfg, device, ckpt_dir = run.cfg, run.device, run.ckpt_dir
    model, optimizer, scheduler, step = (run.training.model, run.training.optimizer,
                                         run.training.scheduler, run.training.step)
    history = run.history
    status, error = "completed", None
    evaluated = False
    for epoch in range(run.start_epoch, cfg.optim.epochs + 1):
        if keep_going is not None and not keep_going():
            status = "stopped"
            break
        now = in_force(cfg, epoch)  # a schedule's values for this epoch (cfg itself without one)
        put_in_force(run.training, now, changes_at(cfg, epoch))
        step.cfg = now
        do_eval = cfg.evaluates(epoch)
        flips = model.track_trains_trunk != (epoch > cfg.track.warmup_epochs)  # a new step to capture
        new_work = epoch in (run.start_epoch, cfg.optim.epochs) or (do_eval and not evaluated) or flips
        evaluated = evaluated or do_eval
        with (warmup if warmup is not None and new_work else nullcontext()):
            with global_rng if global_rng is not None else nullcontext():
                seed_everything(cfg.seed * 100_003 + epoch)
            run.train_set.set_epoch(epoch)
            if model.track_trains_trunk != (epoch > cfg.track.warmup_epochs):
                model.track_trains_trunk = epoch > cfg.track.warmup_epochs
                step.forget_graph()  # a captured step would keep the warm-up's detached trunk
            t0 = time.perf_counter()
            try:
                train_stats = train_epoch(step, model, run.train_loader, now, epoch, on_batch)
            except Diverged as exc:
                status, error = "diverged", str(exc)
                say(f"epoch {epoch}: {error}")
                break
            step_lr_scheduler(scheduler, optimizer, train_stats["loss"])
            evaluating = time.perf_counter()
            val = evaluate(model, run.eval_loader, cfg, device) if do_eval and len(run.eval_set) else {}
            spent = {"eval_clips": len(run.eval_set) if val else 0}
            test = {}
            if epoch == cfg.optim.epochs:  # the final weights meet the test split once
                test = val if run.eval_set is run.test_set else evaluate_once(model, run.test_set, cfg, device)
                spent["eval_clips"] += 0 if run.eval_set is run.test_set else len(run.test_set)
            spent["eval_s"] = time.perf_counter() - evaluating
        metrics = _epoch_row(epoch, {**train_stats, **spent}, val, test, optimizer, time.perf_counter() - t0, now)
        history.append(metrics)
        metrics = {**metrics, "peak_mem_gib": peak_memory_gib(device), "device": device_label(device)}
        if ckpt_dir is not None:
            save_checkpoint(ckpt_dir, cfg, epoch, model, optimizer, scheduler, history)
        if on_epoch is not None and on_epoch(metrics, ckpt_dir) is False:
            status = "stopped" if epoch < cfg.optim.epochs else "completed"
            break

    return _fit_result(status, error, history, cfg.selection)


def _epoch_row(epoch: int, train_stats: dict[str, Any], val: dict[str, Any], test: dict[str, Any],
               optimizer: torch.optim.Optimizer, seconds: float, now: TrialConfig) -> dict[str, Any]:
    """One epochs.parquet row: the training figures, the evaluation's (on the split it selects
    with), after the last epoch the test split's, and the loss weights and weight decay in force
    (a branch's weight where it is on)."""
    metrics = {
        "epoch": epoch,
        **train_stats,
        **{name: named("val", val).get(name) for name in EVALUATED},
        "lr": float(optimizer.param_groups[0]["lr"]),
        "epoch_s": seconds,
        **named("test", {k: test.get(k) for k in ("hit1", "hit5", "mean_class_acc")}),
        "w_track": float(now.tracking["loss.w_track"]) if now.has("track") else None,
        "w_dir": float(now.loss.w_dir) if now.has("dir") else None,
        "weight_decay": float(now.optim.weight_decay),
    }
    return {key: metrics.get(key) for key in EPOCH_COLUMNS}


def _fit_result(status: str, error: str | None, history: list[dict[str, Any]], selection: str) -> FitResult:
    best = best_epoch(history)
    return FitResult(
        status=status,
        epochs_done=len(history),
        best_epoch=best["epoch"] if best else None,
        best_val_hit1=best["val_hit1"] if best else None,
        best_val_hit5=best["val_hit5"] if best else None,
        error=error,
        history=history,
        test_hit1=history[-1].get("test_hit1") if history else None,
        test_hit5=history[-1].get("test_hit5") if history else None,
        selection=selection,
    )


def load_clips(cfg: TrialConfig, warn: Callable[[str], None]) -> tuple[Any, Any, Any, int]:
    """(training clips, validation clips, test clips, number of classes) of a resolved config.

    The validation videos are carved from the training split (`data.val_fraction`, see
    data/splits.py). Fills the frame cache; unreadable videos are skipped with `warn`.
    """
    from mtsearch.data.cache import FrameCache
    from mtsearch.data.clips import TestClips, TrainClips, usable_videos
    from mtsearch.data.datasets import index_for_config
    from mtsearch.data.splits import carve
    from mtsearch.paths import frames_dir

    index = index_for_config(cfg, warn=warn)
    split = carve(index, cfg.val_fraction, cfg.val_carving)
    if split.unparsed:
        warn(f"{len(split.unparsed)} training videos have names that do not parse into their group "
             "(source video or gXX); each is its own group for the validation split "
             "(mtsearch data check names them)")
    cache = FrameCache(frames_dir(cfg.data.cache_dir), format=cfg.cache_format,
                       quality=cfg.data.cache_quality, dataset=str(index.root))
    fps, short, frames = cfg.fps, cfg.short_side, cfg.data.clip_frames
    train_items = usable_videos(split.train, cache, fps, short, warn)
    val_items = usable_videos(split.val, cache, fps, short, warn)
    test_items = usable_videos(split.test, cache, fps, short, warn)
    if not train_items:
        raise RuntimeError(f"no usable training videos in {index.root} (split {cfg.data.split})")
    from mtsearch.data.flips import flip_targets

    train_set = TrainClips(train_items, cache, fps, short, frames, cfg.crop, cfg.seed,
                           flip_to=flip_targets(index.classes, cfg.flip))
    val_set = TestClips(val_items, cache, fps, short, frames, cfg.crop, views=cfg.val_views)
    test_set = TestClips(test_items, cache, fps, short, frames, cfg.crop, views=cfg.views)
    return train_set, val_set, test_set, len(index.classes)
