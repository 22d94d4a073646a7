"""Trials side by side in one process: K trials of one network shape, or one configuration's seeds.

One small trial leaves most of a machine idle (a `tiny` step on two cores spends much of its time
in ops too small to share out over threads; a thesis trial at batch 4 leaves an H100's streams
room between its kernels), and separate processes only take turns. Here each slot is still its
own trial, everything a trial owns is its own: weights from its seed, data stream, optimiser
state and schedule, loss weights, checkpoint, history and stop decision. What the slots share is
the process (one import, one frame cache) and the machine, which their steps use at the same
time: each slot trains on its own thread with an equal share of the CPU threads (on a GPU, on its
own CUDA stream, so the slots' kernels overlap). This is concurrent execution, not kernel
fusion: each slot launches its own kernels.

Both functions here are owners of slots of the one engine, `train/slots.py` (a search's trials
are owned by Ray Tune trials instead, `search/process_hosts.py`). Exactness is the contract: a
slot computes exactly what its run alone computes, with the same kernels on the same shapes
(tests/test_side_by_side.py checks it on the CPU).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mtsearch.config import SHAPE_KEYS, TrialConfig, shape_key
from mtsearch.errors import InvalidInput
from mtsearch.metrics import SLOTS_KEY
from mtsearch.settings import seeds_of
from mtsearch.train.checkpoint import checkpoint_history
from mtsearch.train.fit import FitResult, OnEpoch
from mtsearch.train.slots import SlotEvent, SlotHost
from mtsearch.train.step import OnBatch


def slot_threads(slots: int, cores: int) -> int:
    """Torch threads per slot: the cores shared out evenly, at least one each."""
    return max(1, cores // max(1, slots))


def check_one_shape(cfgs: Sequence[TrialConfig]) -> None:
    """Slots of one process share its kernels' shapes (and device): refuse a config that differs."""
    reference = (*shape_key(cfgs[0]), cfgs[0].device)
    for index, cfg in enumerate(cfgs[1:], start=1):
        mine = (*shape_key(cfg), cfg.device)
        if mine != reference:
            differing = [key for key, a, b in zip((*SHAPE_KEYS, "device"), reference, mine) if a != b]
            raise InvalidInput(None, differing[0], f"trial {index} has another network shape than trial 0")


def fit_side_by_side(
    cfgs: Sequence[TrialConfig],
    out_dirs: Sequence[str | Path | None],
    *,
    on_epoch: Sequence[OnEpoch | None] | None = None,
    resume: bool = True,
    log: Callable[[int, str], None] | None = None,
    on_batch: Sequence[OnBatch | None] | None = None,
    cores: int | None = None,
) -> list[FitResult | BaseException]:
    """Train the trials `cfgs` (one network shape) side by side; slot k checkpoints to
    `out_dirs[k]/checkpoint/`, reports through `on_epoch[k]` and logs through `log(k, line)`.

    A slot's failure is its own: its entry in the returned list is the exception it raised (or its
    `on_epoch` raised); a NaN is its `diverged` FitResult, a False from its `on_epoch` stops it
    alone, and the other slots train on. `cores` (default: torch's thread count) is shared out
    among them. Each slot has an owner thread here, which calls its `on_epoch`.
    """
    if len(cfgs) != len(out_dirs):
        raise ValueError("one output folder per trial")
    if not cfgs:
        return []
    check_one_shape(cfgs)
    slots = len(cfgs)
    on_epoch = list(on_epoch) if on_epoch is not None else [None] * slots
    on_batch = list(on_batch) if on_batch is not None else [None] * slots
    say = log or (lambda slot, msg: None)
    cores = cores or torch.get_num_threads()
    host = SlotHost()
    threads = slot_threads(slots, cores)
    results: list[FitResult | BaseException] = [RuntimeError("not run")] * slots

    def own(k: int) -> None:
        key, stop = str(k), False
        failure: BaseException | None = None
        while True:
            event = host.next(key, stop)
            if event.kind == "end":
                results[k] = failure or _outcome(event)
                return
            report = on_epoch[k]
            try:
                stop = report is not None and report(event.metrics, _folder(event)) is False
            except BaseException as exc:  # noqa: BLE001 - the slot's failure: it stops, others train on
                failure, stop = exc, True

    for k, cfg in enumerate(cfgs):
        host.join(str(k), cfg, out_dirs[k], resume=resume, threads=threads,
                  say=lambda line, k=k: say(k, line), on_batch=on_batch[k])
    owners = [threading.Thread(target=own, args=(k,), name=f"owner-{k}", daemon=True) for k in range(slots)]
    for owner in owners:
        owner.start()
    for owner in owners:
        owner.join()
    torch.set_num_threads(cores)
    for result in results:  # an interrupt in a slot's callback is the caller's, once all have ended
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
    return results


def _outcome(end: SlotEvent) -> FitResult | BaseException:
    if end.error is not None:
        return end.error
    assert end.result is not None
    return end.result


def _folder(event: SlotEvent) -> Path | None:
    return Path(event.ckpt_dir) if event.ckpt_dir is not None else None


SEED_DIR = "seed{seed}"  # a seed's folder inside the trial's, holding its checkpoint/


def fit_seeds(
    cfg: TrialConfig,
    out_dir: str | Path | None,
    *,
    seeds: int,
    on_epoch: OnEpoch | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    cores: int | None = None,
) -> FitResult:
    """One configuration trained with `seeds` seeds side by side, scored by their mean.

    After every epoch, once each seed has finished it, `on_epoch` gets one row (from this thread,
    with no lock held): each metric's mean over the seeds (what a search optimises and
    early-stops on), with every seed's own row under SLOTS_KEY, and `out_dir` as the checkpoint
    folder (a `seed<N>/checkpoint/` per seed). A seed trains its next epoch only once that row is
    reported, so every seed's checkpoint of the epoch is on disk and none of a later one. A seed
    that diverges makes the configuration diverge; the others stop at the end of their epoch. An
    exception of a seed is raised once the others have stopped.
    """
    say = log or (lambda line: None)
    values = seeds_of(cfg.seed, seeds)
    cfgs = [cfg.with_overrides({"seed": seed}, "<seeds_per_trial>") for seed in values]
    dirs = [Path(out_dir) / SEED_DIR.format(seed=seed) if out_dir is not None else None for seed in values]
    histories = [checkpoint_history(folder / "checkpoint") if resume and folder is not None else []
                 for folder in dirs]
    host = SlotHost()
    threads = slot_threads(seeds, cores or torch.get_num_threads())
    for k, seed_cfg in enumerate(cfgs):
        host.join(str(k), seed_cfg, dirs[k], resume=resume, threads=threads,
                  say=lambda line, k=k: say(f"seed {values[k]}: {line}"))
    gather = _Lockstep(values, on_epoch, Path(out_dir) if out_dir is not None else None, histories)
    ends = gather.run(host)
    for end in ends:
        if end.error is not None:
            raise end.error
    results = [end.result for end in ends if end.result is not None]
    mean_history = [_mean_row(rows) for rows in zip(*(result.history for result in results))]
    for k, result in enumerate(results):
        if result.status == "diverged":
            return FitResult("diverged", len(mean_history), best_epoch=None, best_val_hit1=None,
                             best_val_hit5=None, error=f"seed {values[k]}: {result.error}", history=mean_history)
    status = "stopped" if any(result.status == "stopped" for result in results) else "completed"
    return FitResult(status, len(mean_history), best_epoch=None, best_val_hit1=None, best_val_hit5=None,
                     history=mean_history)


class _Lockstep:
    """The owner of a configuration's seeds: takes each seed's epoch, reports an epoch once every
    seed still training has handed it over, and only then lets those seeds train the next.

    Resumed seeds may stand at different epochs (a retry after one of them failed): their saved
    rows fill in, an epoch every seed had saved was reported before, and a seed ahead waits."""

    def __init__(self, seeds: list[int], on_epoch: OnEpoch | None, out_dir: Path | None,
                 histories: Sequence[Sequence[dict[str, Any]]]):
        self.seeds, self.on_epoch, self.out_dir = seeds, on_epoch, out_dir
        self.rows: dict[int, dict[int, dict[str, Any]]] = {}
        for k, history in enumerate(histories):
            for row in history:
                self.rows.setdefault(int(row["epoch"]), {})[k] = dict(row)
        self.reported = {epoch for epoch, rows in self.rows.items() if len(rows) == len(seeds)}

    def run(self, host: SlotHost) -> list[SlotEvent]:
        """Own every seed's slot to its end; their end events, in seed order."""
        ends: dict[int, SlotEvent] = {}
        try:
            return self._own(host, ends)
        except BaseException:  # the report raised: every seed still training stops, then it goes up
            for k in range(len(self.seeds)):
                while k not in ends:
                    event = host.next(str(k), stop=True)
                    if event.kind == "end":
                        ends[k] = event
            raise

    def _own(self, host: SlotHost, ends: dict[int, SlotEvent]) -> list[SlotEvent]:
        held: dict[int, int] = {}  # seed -> the epoch it handed over and waits past
        ask = set(range(len(self.seeds)))  # seeds whose next event is due
        stopping = False
        while len(ends) < len(self.seeds):
            for k in sorted(ask):
                event = host.next(str(k), stop=stopping)
                if event.kind == "end":
                    ends[k] = event
                    failed = event.error is not None or (event.result is not None
                                                         and event.result.status == "diverged")
                    stopping = stopping or failed
                else:
                    assert event.metrics is not None
                    epoch = int(event.metrics["epoch"])
                    self.rows.setdefault(epoch, {})[k] = event.metrics
                    held[k] = epoch
            training = set(range(len(self.seeds))) - set(ends)
            if not stopping:
                stopping = not self._report_ready(training)
            ask = {k for k in training if k in held and (stopping or held[k] in self.reported)}
            for k in ask:
                del held[k]
        return [ends[k] for k in range(len(self.seeds))]

    def _report_ready(self, training: set[int]) -> bool:
        """Report, in order, each epoch every seed still training has handed over; False once the
        owner's `on_epoch` says stop."""
        for epoch in sorted(self.rows):
            rows = self.rows[epoch]
            if epoch in self.reported or not training <= set(rows):
                continue
            self.reported.add(epoch)
            ordered = [rows[k] for k in sorted(rows)]
            row = {**_mean_row(ordered),
                   SLOTS_KEY: [{**rows[k], "seed": self.seeds[k]} for k in sorted(rows)]}
            if self.on_epoch is not None and self.on_epoch(row, self.out_dir) is False:
                return False
        return True


def _mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric metric's mean over the seeds' rows of one epoch (None where a seed lacks it);
    other values (the device) from the first seed."""
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [row.get(key) for row in rows]
        if isinstance(first, (int, float)) and not isinstance(first, bool) and key != "epoch":
            numbers = [v for v in values if isinstance(v, (int, float))]
            out[key] = sum(numbers) / len(numbers) if len(numbers) == len(values) else None
        else:
            out[key] = first
    return out
