"""Fused trials: K trials of one network shape trained side by side in one process.

One small trial leaves most of a machine idle (a thesis trial at batch 4 fills ~15% of an H200;
a `tiny` step on two cores spends much of its time in ops too small to share out over threads),
and separate processes only take turns. Here each slot is still its own trial, everything a
trial owns is its own: weights from its seed, data stream, optimiser state and schedule, loss
weights, checkpoint, history and stop decision. What the slots share is the process (one
import, one frame cache) and the machine, which their steps use at the same time: each slot
trains on its own thread with an equal share of the CPU threads (on a GPU, each thread issues
its kernels on its own CUDA stream, so the slots' kernels overlap).

Exactness is the contract: a slot computes exactly what its unfused run computes, with the
same kernels on the same shapes (tests/test_fused.py checks it bit for bit on the CPU). The
slots are built one after another, because a trial's initial weights come from the global RNG
seeded with its `seed`; after that nothing in an epoch reads global random state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from mtsearch.config import SHAPE_KEYS, TrialConfig, shape_key
from mtsearch.errors import InvalidInput
from mtsearch.metrics import SLOTS_KEY
from mtsearch.settings import seeds_of
from mtsearch.train.checkpoint import checkpoint_history
from mtsearch.train.fit import FitResult, OnEpoch, TrialRun, prepare_run, train_epochs
from mtsearch.train.step import OnBatch


def slot_threads(slots: int, cores: int) -> int:
    """Torch threads per slot: the cores shared out evenly, at least one each."""
    return max(1, cores // max(1, slots))


def fit_fused(
    cfgs: Sequence[TrialConfig],
    out_dirs: Sequence[str | Path | None],
    *,
    on_epoch: Sequence[OnEpoch | None] | None = None,
    resume: bool = True,
    log: Callable[[int, str], None] | None = None,
    on_batch: Sequence[OnBatch | None] | None = None,
    cores: int | None = None,
    on_end: Callable[[int, FitResult | BaseException], None] | None = None,
) -> list[FitResult | BaseException]:
    """Train the trials `cfgs` (one network shape) side by side; slot k checkpoints to
    `out_dirs[k]/checkpoint/`, reports through `on_epoch[k]` and logs through `log(k, line)`.

    A slot's failure is its own: its entry in the returned list is the exception it raised
    (a NaN is its `diverged` FitResult, a False from its `on_epoch` stops it alone), and the
    other slots train on. `cores` (default: torch's thread count) is shared out among them.
    `on_end(k, result)` hears, in slot k's thread, that it trains no more.
    """
    if len(cfgs) != len(out_dirs):
        raise ValueError("one output folder per fused trial")
    if not cfgs:
        return []
    reference = (*shape_key(cfgs[0]), cfgs[0].device)
    for index, cfg in enumerate(cfgs[1:], start=1):
        mine = (*shape_key(cfg), cfg.device)
        if mine != reference:
            differing = [key for key, a, b in zip((*SHAPE_KEYS, "device"), reference, mine) if a != b]
            raise InvalidInput(None, differing[0],
                               f"fused trial {index} has another network shape than trial 0")
    slots = len(cfgs)
    on_epoch = list(on_epoch) if on_epoch is not None else [None] * slots
    on_batch = list(on_batch) if on_batch is not None else [None] * slots
    say = log or (lambda slot, msg: None)
    cores = cores or torch.get_num_threads()

    results: list[FitResult | BaseException] = [RuntimeError("not run")] * slots
    runs: list[TrialRun | None] = [None] * slots
    for k, cfg in enumerate(cfgs):  # one after another: initial weights come from the global RNG
        try:
            runs[k] = prepare_run(cfg, out_dirs[k], resume=resume,
                                  say=_slot_log(say, k), warn=_slot_log(say, k))
        except Exception as exc:  # noqa: BLE001 - the slot's own failure, reported as its result
            results[k] = exc
            if on_end is not None:
                on_end(k, exc)
    ready = [k for k in range(slots) if runs[k] is not None]
    threads = slot_threads(len(ready), cores)
    streams = _cuda_streams(runs, ready)
    # compilation, cuDNN autotuning and CUDA graph capture are not for two threads at once
    warmup = threading.Lock() if streams else None

    def train_slot(k: int) -> FitResult:
        run = runs[k]
        assert run is not None
        torch.set_num_threads(threads)  # this thread's share of the cores
        result: FitResult | BaseException = RuntimeError("not run")
        try:
            with _on_stream(streams.get(k)):
                result = train_epochs(run, on_epoch=on_epoch[k], on_batch=on_batch[k],
                                      say=_slot_log(say, k), warmup=warmup)
            return result
        except BaseException as exc:
            result = exc
            raise
        finally:
            if on_end is not None:
                on_end(k, result)

    with ThreadPoolExecutor(max_workers=max(1, len(ready)), thread_name_prefix="slot") as pool:
        futures = {k: pool.submit(train_slot, k) for k in ready}
        for k, future in futures.items():
            try:
                results[k] = future.result()
            except Exception as exc:  # noqa: BLE001 - one slot's failure never touches another
                results[k] = exc
    torch.set_num_threads(cores)
    return results


def _slot_log(say: Callable[[int, str], None], slot: int) -> Callable[[str], None]:
    return lambda line: say(slot, line)


def _cuda_streams(runs: Sequence[TrialRun | None], ready: Sequence[int]) -> dict[int, Any]:
    """A CUDA stream of its own for each slot on a GPU (kernels of different slots overlap)."""
    streams = {}
    for k in ready:
        run = runs[k]
        if run is not None and run.device.type == "cuda" and len(ready) > 1:
            streams[k] = torch.cuda.Stream(run.device)
    return streams


def _on_stream(stream: Any) -> AbstractContextManager[Any]:
    """This thread's kernels on `stream` (a GPU slot's own), or nothing to do (the CPU)."""
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


SEED_DIR = "seed{seed}"  # a seed's folder inside the trial's, holding its checkpoint/


def fit_seeds(
    cfg: TrialConfig,
    out_dir: str | Path | None,
    *,
    seeds: int,
    on_epoch: OnEpoch | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """One configuration trained with `seeds` seeds fused (`fit_fused`), scored by their mean.

    After every epoch, once each seed has finished it, `on_epoch` gets one row: each metric's mean
    over the seeds (what a search optimises and early-stops on), with every seed's own row under
    SLOTS_KEY, and `out_dir` as the checkpoint folder (a `seed<N>/checkpoint/` per seed). A seed
    that diverges makes the configuration diverge; the others stop at the end of their epoch.
    An exception of a seed is raised once the others have stopped.
    """
    say = log or (lambda line: None)
    values = seeds_of(cfg.seed, seeds)
    cfgs = [cfg.with_overrides({"seed": seed}, "<seeds_per_trial>") for seed in values]
    dirs = [Path(out_dir) / SEED_DIR.format(seed=seed) if out_dir is not None else None for seed in values]
    histories = [checkpoint_history(folder / "checkpoint") if resume and folder is not None else []
                 for folder in dirs]
    gather = _EpochGather(values, on_epoch, out_dir, histories)
    results = fit_fused(cfgs, dirs, on_epoch=[gather.slot(k) for k in range(seeds)], resume=resume,
                        log=lambda k, line: say(f"seed {values[k]}: {line}"), on_end=gather.finished)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    histories = [result.history for result in results if isinstance(result, FitResult)]
    mean_history = [_mean_row(rows) for rows in zip(*histories)]
    for k, result in enumerate(results):
        if isinstance(result, FitResult) and result.status == "diverged":
            return FitResult("diverged", len(mean_history), None, None, None,
                             error=f"seed {values[k]}: {result.error}", history=mean_history)
    status = "stopped" if any(isinstance(r, FitResult) and r.status == "stopped" for r in results) \
        else "completed"
    return FitResult(status, len(mean_history), None, None, None, history=mean_history)


class _EpochGather:
    """The seeds' epoch rows, gathered: a seed that finishes an epoch waits until every seed still
    training has finished it too; the last to arrive reports their mean. So one report per epoch
    reaches `on_epoch`, with every seed's checkpoint of that epoch on disk and none of a later one."""

    def __init__(self, seeds: list[int], on_epoch: OnEpoch | None, out_dir: str | Path | None,
                 histories: Sequence[Sequence[dict[str, Any]]]):
        self.seeds, self.on_epoch = seeds, on_epoch
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.cond = threading.Condition()
        self.training = set(range(len(seeds)))
        self.rows: dict[int, dict[int, dict[str, Any]]] = {}
        # resumed seeds may stand at different epochs (a retry after one of them failed): their
        # saved rows fill in, and an epoch every seed had saved was reported before
        for k, history in enumerate(histories):
            for row in history:
                self.rows.setdefault(int(row["epoch"]), {})[k] = dict(row)
        self.reported = {epoch for epoch, rows in self.rows.items() if len(rows) == len(seeds)}
        self.stop = False

    def slot(self, k: int) -> OnEpoch:
        def on_epoch(metrics: dict[str, Any], ckpt_dir: Path | None) -> bool:
            epoch = int(metrics["epoch"])
            with self.cond:
                self.rows.setdefault(epoch, {})[k] = metrics
                self._report_ready()
                while epoch not in self.reported and not self.stop:
                    self.cond.wait()
                going_on = not self.stop
                if not going_on:
                    self._leave(k)
                return going_on
        return on_epoch

    def finished(self, k: int, result: FitResult | BaseException) -> None:
        """Seed `k` trains no more: its last epoch, or a NaN or an exception, which end the
        configuration (the other seeds stop at the end of their epoch, and nothing more is reported)."""
        with self.cond:
            if isinstance(result, BaseException) or result.status == "diverged":
                self.stop = True
            self._leave(k)

    def _leave(self, k: int) -> None:
        self.training.discard(k)
        self._report_ready()
        self.cond.notify_all()

    def _report_ready(self) -> None:
        if self.stop:
            return
        for epoch in sorted(self.rows):
            rows = self.rows[epoch]
            if epoch in self.reported or not self.training <= set(rows):
                continue
            self.reported.add(epoch)
            ordered = [rows[k] for k in sorted(rows)]
            row = {**_mean_row(ordered),
                   SLOTS_KEY: [{**rows[k], "seed": self.seeds[k]} for k in sorted(rows)]}
            if self.on_epoch is not None and self.on_epoch(row, self.out_dir) is False:
                self.stop = True
            self.cond.notify_all()


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
