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

from mtsearch.config import SHAPE_KEYS, TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.train.fit import FitResult, OnEpoch, TrialRun, prepare_run, train_epochs
from mtsearch.train.step import OnBatch


def shape_signature(cfg: TrialConfig) -> tuple[Any, ...]:
    """What must be equal for two trials to be fused: every shape-changing key, resolved."""
    flat = cfg.resolved().to_flat()
    return (*(repr(flat.get(key)) for key in SHAPE_KEYS), cfg.device)


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
) -> list[FitResult | BaseException]:
    """Train the trials `cfgs` (one network shape) side by side; slot k checkpoints to
    `out_dirs[k]/checkpoint/`, reports through `on_epoch[k]` and logs through `log(k, line)`.

    A slot's failure is its own: its entry in the returned list is the exception it raised
    (a NaN is its `diverged` FitResult, a False from its `on_epoch` stops it alone), and the
    other slots train on. `cores` (default: torch's thread count) is shared out among them.
    """
    if len(cfgs) != len(out_dirs):
        raise ValueError("one output folder per fused trial")
    if not cfgs:
        return []
    reference = shape_signature(cfgs[0])
    for index, cfg in enumerate(cfgs[1:], start=1):
        if shape_signature(cfg) != reference:
            differing = [key for key, a, b in zip(SHAPE_KEYS, reference, shape_signature(cfg)) if a != b]
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
    ready = [k for k in range(slots) if runs[k] is not None]
    threads = slot_threads(len(ready), cores)
    streams = _cuda_streams(runs, ready)
    # compilation, cuDNN autotuning and CUDA graph capture are not for two threads at once
    warmup = threading.Lock() if streams else None

    def train_slot(k: int) -> FitResult:
        run = runs[k]
        assert run is not None
        torch.set_num_threads(threads)  # this thread's share of the cores
        with _on_stream(streams.get(k)):
            return train_epochs(run, on_epoch=on_epoch[k], on_batch=on_batch[k],
                                say=_slot_log(say, k), warmup=warmup)

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
