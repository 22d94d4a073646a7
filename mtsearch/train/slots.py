"""A process that trains independent trials side by side, one epoch at a time on request.

`fit_fused` trains a fixed set of trials to their end. A search needs more: each trial is owned
by someone else (a Ray Tune trial, which reports every epoch and may be stopped by ASHA after any
of them), trials arrive and leave at any time, and a slot must never train past the epoch its
owner has seen. So a `SlotHost` keeps one thread per slot (`join`), hands each finished epoch to
its owner (`next`) and trains the next one only when the owner asks again. A slot whose owner
is gone (`alive` says so, or `leave`) stops at the end of its epoch and frees its place; its
checkpoint of the last epoch stays, so nothing is lost.

What a slot computes is what `fit` computes for its config: the same `prepare_run` (built one
slot at a time, as initial weights come from the global RNG) and the same `train_epochs`.
"""

from __future__ import annotations

import gc
import queue
import threading
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtsearch.config import TrialConfig
from mtsearch.train.fit import FitResult, prepare_run, train_epochs

ALIVE_EVERY_S = 2.0  # how often a slot waiting for its owner checks that the owner still exists


@dataclass
class SlotEvent:
    """What a slot hands its owner: an epoch's row and checkpoint folder, or its end (its
    FitResult, or the exception it raised, with the traceback as text: it crosses processes)."""

    kind: str  # "epoch" | "end"
    metrics: dict[str, Any] | None = None
    ckpt_dir: str | None = None
    result: FitResult | None = None
    error: BaseException | None = None
    error_trace: str | None = None
    notes: list[str] = field(default_factory=list)


class _Slot:
    def __init__(self, alive: Callable[[], bool] | None):
        self.events: queue.Queue[SlotEvent] = queue.Queue()
        self.proceed = threading.Event()  # the owner has seen the last epoch: train the next
        self.leaving = False
        self.alive = alive
        self.handed_epoch = False  # the last event handed over was an epoch (next() acknowledges it)
        self.waiting = False  # an epoch is done: waiting for the owner to ask for the next
        self.ended = False  # trains no more; kept until its owner has taken the end event
        self.orphaned = False  # its owner is gone: nobody takes the end event
        self.notes: list[str] = []
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def note(self, line: str) -> None:
        with self.lock:
            self.notes.append(line)

    def drained(self) -> list[str]:
        with self.lock:
            notes, self.notes = self.notes, []
        return notes

    def on_epoch(self, metrics: dict[str, Any], ckpt_dir: Path | None) -> bool:
        """Hand the epoch over, then wait until the owner asks for the next (True) or is gone."""
        self.waiting = True
        self.events.put(SlotEvent("epoch", metrics=metrics,
                                  ckpt_dir=str(ckpt_dir) if ckpt_dir is not None else None,
                                  notes=self.drained()))
        while not self.proceed.wait(ALIVE_EVERY_S):
            if self.leaving:
                break
            if self.alive is not None and not self.alive():
                self.leaving = self.orphaned = True
                break
        self.waiting = False
        self.proceed.clear()
        return not self.leaving


class SlotHost:
    """Independent trials trained side by side in this process (see the module's docstring).

    Slots are named by their owner's key; each trains on its own thread with `threads` torch
    threads, on a GPU on its own CUDA stream (compilation and graph capture one slot at a time).
    """

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        # a slot's initial weights come from the global RNG, which each slot reseeds every epoch:
        # one prepare_run at a time, and no reseeding during one
        self._build = threading.Lock()
        self._warmup = threading.Lock()  # compile, autotune, capture: one slot at a time on a GPU

    def join(self, key: str, cfg: TrialConfig, out_dir: str | Path | None, *, resume: bool = True,
             threads: int = 1, alive: Callable[[], bool] | None = None) -> None:
        """Start training `cfg` (checkpoints in `out_dir/checkpoint/`) in a slot named `key`; a slot
        of that name still training (its owner's earlier attempt) is told to leave first."""
        self.retire(key)  # it may still write its folder: the new one starts once it has ended
        slot = _Slot(alive)
        slot.thread = threading.Thread(target=self._train, args=(key, slot, cfg, out_dir, resume, threads),
                                       name=f"slot-{key}", daemon=True)
        with self._lock:
            self._slots[key] = slot
        slot.thread.start()

    def next(self, key: str, stop: bool = False) -> SlotEvent:
        """The slot's next event, once it has it; asking again means the owner has seen the last
        epoch, and lets the slot train the next (with `stop`, end instead: its end event)."""
        with self._lock:
            slot = self._slots.get(key)
        if slot is None:
            raise KeyError(f"no slot {key!r} trains here")
        if stop:
            slot.leaving = True
        if slot.handed_epoch:
            slot.proceed.set()
        event = slot.events.get()
        slot.handed_epoch = event.kind == "epoch"
        if event.kind == "end":
            with self._lock:
                if self._slots.get(key) is slot:
                    del self._slots[key]
        return event

    def retire(self, key: str) -> bool:
        """Stop the slot `key` (its owner is a new attempt of the same trial) and wait until it has
        ended; whether there was one still training."""
        with self._lock:
            old = self._slots.pop(key, None)
        if old is None or old.ended:
            return False
        old.leaving = True
        old.proceed.set()
        if old.thread is not None:
            old.thread.join()
        return True

    def leave(self, key: str) -> None:
        """The owner wants no more epochs: the slot stops at the end of the one it is training."""
        with self._lock:
            slot = self._slots.get(key)
        if slot is not None:
            slot.leaving = True
            slot.proceed.set()

    def training(self) -> list[str]:
        """The keys of the slots still training (not those told to leave)."""
        with self._lock:
            return [key for key, slot in self._slots.items() if not (slot.leaving or slot.ended)]

    def prune(self, gone: Callable[[Callable[..., bool]], bool]) -> None:
        """Tell the slots waiting for an owner that `gone(alive)` finds gone to leave now, rather
        than at their next check."""
        with self._lock:
            waiting = [slot for slot in self._slots.values()
                       if slot.waiting and not slot.proceed.is_set() and slot.alive is not None]
        for slot in waiting:
            assert slot.alive is not None
            if gone(slot.alive):
                slot.leaving = slot.orphaned = True
                slot.proceed.set()

    def _train(self, key: str, slot: _Slot, cfg: TrialConfig, out_dir: str | Path | None,
               resume: bool, threads: int) -> None:
        event = SlotEvent("end")
        try:
            torch.set_num_threads(threads)
            run = prepare_run(cfg, out_dir, resume=resume, say=slot.note, warn=slot.note,
                              global_rng=self._build)
            torch.set_num_threads(threads)  # this thread's share, whatever the config pinned
            on_gpu = run.device.type == "cuda"
            stream = torch.cuda.Stream(run.device) if on_gpu else None
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                event.result = train_epochs(run, on_epoch=slot.on_epoch, on_batch=None, say=slot.note,
                                            warmup=self._warmup if on_gpu else None,
                                            global_rng=self._build)
            del run, stream
        except BaseException as exc:  # noqa: BLE001 - handed to the owner, who sorts it
            event.error_trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            event.error = exc.with_traceback(None)  # its frames would keep the slot's network alive
        finally:
            event.notes = slot.drained()
            slot.ended = True
            slot.events.put(event)
            if slot.orphaned:
                with self._lock:
                    if self._slots.get(key) is slot:
                        del self._slots[key]
            _free_memory()


def _free_memory() -> None:
    """A slot that ends gives its memory back to the host's other slots and to the GPU's."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()

