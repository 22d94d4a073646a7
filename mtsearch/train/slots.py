"""The one engine for trials that share a process: slots trained side by side, an epoch at a time.

Every way mtsearch trains several trials in one process runs here: `side_by_side.fit_side_by_side`
(K trials to their end), `side_by_side.fit_seeds` (a configuration's seeds, reported as their
mean) and a search's process hosts (`search/process_hosts.py`, `resources.trials_per_process`).
Each trial is owned by someone: a thread of the caller, or a Ray Tune trial that reports every
epoch and may be stopped by ASHA after any of them; trials join and leave at any time.

A slot is one trial on its own thread. It hands each finished epoch (row and checkpoint folder)
to its owner (`next`) and trains the next one only when the owner asks again, so it never trains
past what its owner has seen. A slot whose owner is gone (`alive` says so, or `leave`) stops at
the end of its epoch; its checkpoint of the last epoch stays, so nothing is lost.

A slot's life is one `SlotState`, changed only through `TRANSITIONS` under the slot's own
condition; no lock is held while a callback runs that may block on another process (`alive`, the
owner's report). On a GPU each slot owns one CUDA stream for its whole life, distinct from every
other live slot's (`StreamPool`): its warm-up, graph capture, training and evaluation run on it.
Compilation, cuDNN autotuning and graph capture run one slot at a time (`one_at_a_time`).

What a slot computes is what `fit` computes for its config: the same `prepare_run` (its weights
drawn from the global RNG under `global_rng`, one slot at a time) and the same `train_epochs`.
"""

from __future__ import annotations

import enum
import gc
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtsearch.config import TrialConfig
from mtsearch.train.fit import FitResult, prepare_run, train_epochs
from mtsearch.train.step import OnBatch

ALIVE_EVERY_S = 2.0  # how often a waiting side checks that the other side still exists
STREAM_DRAWS = 128  # torch hands out pooled streams round-robin (32 a priority): draws to find a free one


class SlotState(enum.Enum):
    STARTING = "starting"  # building its data, network and checkpoint state
    TRAINING = "training"  # training an epoch
    AWAITING = "awaiting"  # an epoch handed over: waits for its owner to ask for the next
    LEAVING = "leaving"  # told to stop (owner done or gone): ends at the end of its epoch
    ENDED = "ended"  # trains no more; its end event waits for the owner


S = SlotState
TRANSITIONS: dict[SlotState, frozenset[SlotState]] = {
    S.STARTING: frozenset({S.TRAINING, S.LEAVING, S.ENDED}),  # built / told to leave / failed to build
    S.TRAINING: frozenset({S.AWAITING, S.LEAVING, S.ENDED}),  # an epoch done / told to leave / failed
    S.AWAITING: frozenset({S.TRAINING, S.LEAVING}),  # the owner asks for the next / stops or is gone
    S.LEAVING: frozenset({S.ENDED}),
    S.ENDED: frozenset(),
}


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


class SlotLost(KeyError):
    """No slot of that name trains here (it ended and its end was taken, or its owner was counted
    gone and it left): to an owner that is still there, a fault of the machine, not of its config."""


class SlotThreadDied(RuntimeError):
    """A slot's thread is gone without handing over its end (it cannot happen short of a bug in
    this module or an interpreter shutdown): its owner hears this instead of waiting forever."""


class _Slot:
    def __init__(self, key: str, alive: Callable[..., bool] | None, say: Callable[[str], None] | None):
        self.key = key
        self.state = SlotState.STARTING
        self.cond = threading.Condition()
        self.events: deque[SlotEvent] = deque()
        self.owner_gone = False  # nobody will take the end event
        self.alive = alive
        self.say = say  # notes straight to the owner's log; None: handed over with the events
        self.notes: list[str] = []
        self.thread: threading.Thread | None = None

    def move(self, to: SlotState) -> bool:
        """Change state (the caller holds `cond`) if TRANSITIONS allow it; whether it moved."""
        if to not in TRANSITIONS[self.state]:
            return False
        self.state = to
        self.cond.notify_all()
        return True

    def note(self, line: str) -> None:
        if self.say is not None:
            self.say(line)
            return
        with self.cond:
            self.notes.append(line)

    def drained(self) -> list[str]:
        with self.cond:
            notes, self.notes = self.notes, []
        return notes

    def keep_going(self) -> bool:
        """Before each epoch: a slot told to leave trains no further."""
        with self.cond:
            return self.state is not SlotState.LEAVING

    def on_epoch(self, metrics: dict[str, Any], ckpt_dir: Path | None) -> bool:
        """Hand the epoch over, then wait until the owner asks for the next (True) or is gone."""
        event = SlotEvent("epoch", metrics=metrics, ckpt_dir=str(ckpt_dir) if ckpt_dir is not None else None,
                          notes=self.drained())
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()
            if not self.move(SlotState.AWAITING):
                return False  # told to leave while it trained
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.state is not SlotState.AWAITING, ALIVE_EVERY_S)
                if self.state is not SlotState.AWAITING:
                    return self.state is SlotState.TRAINING
            if self.alive is not None and not self.alive():  # outside the lock: it asks another process
                self.orphan()

    def orphan(self) -> None:
        """Its owner is gone: a slot waiting for it leaves now, and nobody takes its end."""
        with self.cond:
            if self.state is SlotState.AWAITING:
                self.owner_gone = True
                self.move(SlotState.LEAVING)


class StreamPool:
    """One CUDA stream a live slot, held for its whole life and distinct from every other live
    slot's.

    `torch.cuda.Stream()` hands out streams round-robin from a fixed pool, so two slots that each
    made their own could land on one stream and lose all overlap. Here streams are drawn until one
    is found that no live slot holds, and a slot's stream goes back to the pool when it ends.
    `make(device)` draws a stream (torch's, unless a test gives another); a stream is told apart
    by its `cuda_stream` handle.
    """

    def __init__(self, make: Callable[[Any], Any] | None = None):
        self._make = make or (lambda device: torch.cuda.Stream(device))
        self._lock = threading.Lock()
        self._free: dict[str, list[Any]] = {}
        self._held: dict[str, tuple[str, Any]] = {}  # slot key -> (device, stream)

    def acquire(self, key: str, device: Any) -> Any:
        with self._lock:
            where = str(device)
            busy = {_handle(s) for d, s in self._held.values() if d == where}
            free = self._free.setdefault(where, [])
            stream = next((s for s in free if _handle(s) not in busy), None)
            if stream is not None:
                free.remove(stream)
            for _ in range(STREAM_DRAWS if stream is None else 0):
                drawn = self._make(device)
                if _handle(drawn) not in busy:
                    stream = drawn
                    break
            if stream is None:
                raise RuntimeError(f"no CUDA stream on {where} is free of the other {len(busy)} slots "
                                   f"after {STREAM_DRAWS} draws")
            self._held[key] = (where, stream)
            self._check_distinct()
            return stream

    def release(self, key: str) -> None:
        with self._lock:
            held = self._held.pop(key, None)
            if held is not None:
                where, stream = held
                if all(_handle(stream) != _handle(s) for s in self._free.setdefault(where, [])):
                    self._free[where].append(stream)

    def held(self) -> dict[str, int]:
        """The stream handle of each live slot."""
        with self._lock:
            return {key: _handle(stream) for key, (_, stream) in self._held.items()}

    def _check_distinct(self) -> None:
        pairs = [(d, _handle(s)) for d, s in self._held.values()]
        if len(pairs) != len(set(pairs)):
            raise AssertionError(f"two live slots share a CUDA stream: {sorted(pairs)}")


def _handle(stream: Any) -> int:
    return int(stream.cuda_stream)


class SlotHost:
    """Independent trials trained side by side in this process (see the module's docstring).

    Slots are named by their owner's key; each trains on its own thread with `threads` torch
    threads, on a GPU on its own CUDA stream.
    """

    def __init__(self, streams: StreamPool | None = None) -> None:
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()  # the slots table only: never held across a wait
        # a slot's initial weights come from the global RNG, which each slot reseeds every epoch:
        # one prepare_run at a time, and no reseeding during one
        self._build = threading.Lock()
        self.one_at_a_time = threading.Lock()  # compile, autotune, capture: one slot at a time on a GPU
        self.streams = streams or StreamPool()

    def join(self, key: str, cfg: TrialConfig, out_dir: str | Path | None, *, resume: bool = True,
             threads: int = 1, alive: Callable[..., bool] | None = None,
             say: Callable[[str], None] | None = None, on_batch: OnBatch | None = None) -> None:
        """Start training `cfg` (checkpoints in `out_dir/checkpoint/`) in a slot named `key`; a slot
        of that name still training (its owner's earlier attempt) is told to leave first.
        `say` gets the slot's notes as they come (from the slot's thread); without it they travel
        with the events."""
        self.retire(key)  # it may still write its folder: the new one starts once it has ended
        slot = _Slot(key, alive, say)
        slot.thread = threading.Thread(target=self._train, args=(slot, cfg, out_dir, resume, threads, on_batch),
                                       name=f"slot-{key}", daemon=True)
        with self._lock:
            self._slots[key] = slot
        slot.thread.start()

    def next(self, key: str, stop: bool = False, timeout: float | None = None) -> SlotEvent:
        """The slot's next event, once it has it; asking again means the owner has seen the last
        epoch, and lets the slot train the next (with `stop`, end instead: its end event).
        Raises TimeoutError after `timeout` seconds without one; a slot thread that died without
        its end is noticed within ALIVE_EVERY_S (its end then carries SlotThreadDied)."""
        slot = self._slot(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        with slot.cond:
            if stop:
                slot.move(SlotState.LEAVING)
            elif slot.state is SlotState.AWAITING and not slot.events:
                slot.move(SlotState.TRAINING)  # the owner took the epoch and asks for the next
            while not slot.events:
                if slot.thread is not None and not slot.thread.is_alive():
                    slot.state = SlotState.ENDED  # the one move outside TRANSITIONS: nothing runs it any more
                    slot.events.append(SlotEvent("end", error=SlotThreadDied(f"slot {key}'s thread died")))
                    break
                wait = ALIVE_EVERY_S if deadline is None else min(ALIVE_EVERY_S, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"slot {key} handed nothing over in {timeout} s")
                slot.cond.wait(wait)
            event = slot.events.popleft()
        if event.kind == "end":
            self._forget(slot)
        return event

    def state(self, key: str) -> SlotState:
        slot = self._slot(key)
        with slot.cond:
            return slot.state

    def retire(self, key: str) -> bool:
        """Stop the slot `key` (its owner is a new attempt of the same trial) and wait until it has
        ended; whether there was one still training."""
        with self._lock:
            old = self._slots.pop(key, None)
        if old is None:
            return False
        with old.cond:
            if old.state is SlotState.ENDED:
                return False
            old.owner_gone = True
            old.move(SlotState.LEAVING)
        if old.thread is not None:
            old.thread.join()
        return True

    def leave(self, key: str, abandoned: bool = False) -> None:
        """The owner wants no more epochs: the slot stops at the end of the one it is training.
        `abandoned`: nor will it take the end event (the slot is then forgotten as it ends)."""
        with self._lock:
            slot = self._slots.get(key)
        if slot is not None:
            with slot.cond:
                slot.owner_gone = slot.owner_gone or abandoned
                slot.move(SlotState.LEAVING)
                ended = slot.state is SlotState.ENDED
            if abandoned and ended:
                self._forget(slot)

    def training(self) -> list[str]:
        """The keys of the slots still training (not those told to leave)."""
        with self._lock:
            slots = list(self._slots.items())
        live = []
        for key, slot in slots:
            with slot.cond:
                if slot.state not in (SlotState.LEAVING, SlotState.ENDED):
                    live.append(key)
        return live

    def prune(self, gone: Callable[[Callable[..., bool]], bool]) -> None:
        """Tell the slots waiting for an owner that `gone(alive)` finds gone to leave now, rather
        than at their next check."""
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            with slot.cond:
                waiting = slot.state is SlotState.AWAITING and slot.alive is not None
            if waiting and slot.alive is not None and gone(slot.alive):  # outside the locks
                slot.orphan()

    def _slot(self, key: str) -> _Slot:
        with self._lock:
            slot = self._slots.get(key)
        if slot is None:
            raise SlotLost(f"no slot {key!r} trains here")
        return slot

    def _forget(self, slot: _Slot) -> None:
        with self._lock:
            if self._slots.get(slot.key) is slot:
                del self._slots[slot.key]

    def _train(self, slot: _Slot, cfg: TrialConfig, out_dir: str | Path | None, resume: bool,
               threads: int, on_batch: OnBatch | None) -> None:
        event = SlotEvent("end")
        stream = None
        try:
            torch.set_num_threads(threads)
            run = prepare_run(cfg, out_dir, resume=resume, say=slot.note, warn=slot.note,
                              global_rng=self._build)
            torch.set_num_threads(threads)  # this thread's share, whatever the config pinned
            with slot.cond:
                slot.move(SlotState.TRAINING)  # (a slot told to leave meanwhile stays leaving)
            on_gpu = run.device.type == "cuda"
            if on_gpu:
                stream = self.streams.acquire(slot.key, run.device)
                # the weights, restored state and loaders were made on this thread's default
                # stream; the slot's own stream does not wait for it unless told to
                stream.wait_stream(torch.cuda.current_stream(run.device))
            with _on_stream(stream):
                event.result = train_epochs(run, on_epoch=slot.on_epoch, on_batch=on_batch, say=slot.note,
                                            warmup=self.one_at_a_time if on_gpu else None,
                                            global_rng=self._build, keep_going=slot.keep_going)
            del run
        except BaseException as exc:  # noqa: BLE001 - handed to the owner, who sorts it
            event.error_trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            event.error = exc.with_traceback(None)  # its frames would keep the slot's network alive
        finally:
            if stream is not None:
                self.streams.release(slot.key)
            event.notes = slot.drained()
            with slot.cond:
                slot.events.append(event)
                slot.move(SlotState.LEAVING)  # from AWAITING where `alive` raised; else a no-op
                slot.move(SlotState.ENDED)
                orphaned = slot.owner_gone
            if orphaned:
                self._forget(slot)
            with self.one_at_a_time:  # the allocator may not be emptied during another's capture
                _free_memory()


def _on_stream(stream: Any) -> AbstractContextManager[Any]:
    """This thread's kernels on `stream` (a GPU slot's own), or nothing to do (the CPU)."""
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


def _free_memory() -> None:
    """A slot that ends gives its memory back to the host's other slots and to the GPU's."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
