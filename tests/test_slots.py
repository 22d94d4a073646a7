"""SlotHost (train/slots.py): independent trials trained side by side, each epoch on its owner's
request; a slot computes what `fit` computes, never trains past what its owner has seen, and
leaves when its owner is gone."""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path

import pytest
import torch
from test_side_by_side import SLOTS, _assert_same_run, slot_config

from mtsearch.train import fit
from mtsearch.train import slots as slots_module
from mtsearch.train.checkpoint import checkpoint_history
from mtsearch.train.slots import SlotEvent, SlotHost

fit_module = importlib.import_module("mtsearch.train.fit")  # the module (the package exports `fit` itself)


def _drain(host: SlotHost, key: str, stop_after: int | None = None) -> tuple[list[SlotEvent], SlotEvent]:
    """The owner's side: take every epoch (leaving after `stop_after` of them), then the end."""
    epochs: list[SlotEvent] = []
    while True:
        event = host.next(key, stop=stop_after is not None and len(epochs) == stop_after)
        if event.kind == "end":
            return epochs, event
        epochs.append(event)


def test_slots_joined_at_any_time_reproduce_their_unfused_runs(small_set: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    build = fit_module.build_training

    def slow_build(*args, **kwargs):  # widens the window in which slot a starts epochs (reseeding)
        time.sleep(1.0)
        return build(*args, **kwargs)

    monkeypatch.setattr(fit_module, "build_training", slow_build)
    cache = tmp_path / "cache"
    # slot a trains on for all of slot b's build
    cfgs = [slot_config(small_set, cache, **overrides, **{"optim.epochs": epochs})
            for overrides, epochs in zip(SLOTS[:2], (30, 8), strict=True)]
    host = SlotHost()
    ends: dict[str, SlotEvent] = {}
    epochs: dict[str, list[SlotEvent]] = {}

    def owner(key: str) -> None:
        epochs[key], ends[key] = _drain(host, key)

    host.join("a", cfgs[0], tmp_path / "a", threads=1)
    assert host.next("a").metrics["epoch"] == 1
    threads = [threading.Thread(target=owner, args=("a",))]
    threads[0].start()
    time.sleep(0.3)  # slot b builds its weights while slot a trains (and reseeds every epoch)
    host.join("b", cfgs[1], tmp_path / "b", threads=1)
    threads.append(threading.Thread(target=owner, args=("b",)))
    threads[1].start()
    for thread in threads:
        thread.join(timeout=600)
    assert [e.metrics["epoch"] for e in epochs["a"]] == list(range(2, 31))
    assert [e.metrics["epoch"] for e in epochs["b"]] == list(range(1, 9))
    assert host.training() == []
    for key, cfg in zip(("a", "b"), cfgs, strict=True):
        assert ends[key].error is None, ends[key].error_trace
        alone = fit(cfg, tmp_path / f"alone_{key}")
        _assert_same_run(ends[key].result, alone, tmp_path / key, tmp_path / f"alone_{key}")


def test_a_slot_trains_no_epoch_its_owner_has_not_asked_for(small_set: Path, tmp_path: Path):
    host = SlotHost()
    host.join("a", slot_config(small_set, tmp_path / "cache", **SLOTS[0]), tmp_path / "a", threads=1)
    assert host.next("a").metrics["epoch"] == 1
    time.sleep(3.0)  # an owner slow to report: the slot waits, its checkpoint stays at epoch 1
    assert [row["epoch"] for row in checkpoint_history(tmp_path / "a" / "checkpoint")] == [1]
    epochs, end = _drain(host, "a", stop_after=1)  # the owner takes epoch 2, then leaves
    assert [e.metrics["epoch"] for e in epochs] == [2]
    assert end.error is None and end.result.status == "stopped" and end.result.epochs_done == 2
    assert [row["epoch"] for row in checkpoint_history(tmp_path / "a" / "checkpoint")] == [1, 2]


def test_a_slot_whose_owner_is_gone_frees_its_place(small_set: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(slots_module, "ALIVE_EVERY_S", 0.2)
    owner = {"alive": True}
    host = SlotHost()
    host.join("a", slot_config(small_set, tmp_path / "cache", **SLOTS[0]), tmp_path / "a", threads=1,
              alive=lambda quick=False: owner["alive"])
    assert host.next("a").metrics["epoch"] == 1
    assert host.training() == ["a"]  # a live owner keeps its slot while it reports
    time.sleep(0.6)
    assert host.training() == ["a"]
    owner["alive"] = False  # e.g. ASHA stopped the trial and Ray ended its worker
    deadline = time.time() + 30
    while host.training() and time.time() < deadline:
        time.sleep(0.1)
    assert host.training() == []
    assert [row["epoch"] for row in checkpoint_history(tmp_path / "a" / "checkpoint")] == [1]


def test_prune_frees_the_waiting_slots_of_gone_owners_at_once(small_set: Path, tmp_path: Path):
    owners = {"a": True, "b": False}
    host = SlotHost()
    for key, overrides in zip(("a", "b"), SLOTS, strict=False):
        host.join(key, slot_config(small_set, tmp_path / "cache", **overrides), tmp_path / key, threads=1,
                  alive=lambda quick=False, key=key: owners[key])
        assert host.next(key).metrics["epoch"] == 1
    host.prune(lambda alive: not alive(quick=True))
    assert host.training() == ["a"]
    host.leave("a")
    assert _drain(host, "a")[1].result.status == "stopped"


def test_a_slot_that_fails_hands_over_its_exception(small_set: Path, tmp_path: Path):
    host = SlotHost()
    host.join("a", slot_config(small_set, tmp_path / "cache", **{"data.root": str(tmp_path / "none")}),
              tmp_path / "a", threads=1)
    time.sleep(1.0)  # it fails before its owner first asks: the end waits for the owner
    end = host.next("a")
    assert end.kind == "end" and end.result is None and end.error is not None
    assert type(end.error).__name__ in end.error_trace
    with pytest.raises(KeyError):
        host.next("a")


def test_a_slot_joined_again_resumes_once_the_old_one_has_ended(small_set: Path, tmp_path: Path):
    cfg = slot_config(small_set, tmp_path / "cache", **SLOTS[0])
    host = SlotHost()
    host.join("a", cfg, tmp_path / "a", threads=1)
    assert host.next("a").metrics["epoch"] == 1
    host.join("a", cfg, tmp_path / "a", threads=1)  # its owner restarted (a new worker, the same trial)
    assert host.training() == ["a"]
    epochs, end = _drain(host, "a")
    assert [e.metrics["epoch"] for e in epochs] == [2, 3, 4, 5]
    assert end.result.status == "completed" and any("resuming from epoch 1" in n for n in epochs[0].notes)
    assert [row["epoch"] for row in checkpoint_history(tmp_path / "a" / "checkpoint")] == [1, 2, 3, 4, 5]


# ---- the slot's life: states, waits, streams ------------------------------------------------------

from mtsearch.search.process_hosts import Leases  # noqa: E402
from mtsearch.train.slots import (  # noqa: E402
    TRANSITIONS,
    SlotLost,
    SlotState,
    SlotThreadDied,
    StreamPool,
    _Slot,
)


def test_a_slot_walks_starting_training_awaiting_leaving_ended(small_set: Path, tmp_path: Path):
    """Holding the host's build lock pins the slot where it takes it: in its build (STARTING) and
    where each epoch begins (TRAINING), so every state is seen without racing the slot."""
    host = SlotHost()
    cfg = slot_config(small_set, tmp_path / "cache", **SLOTS[0], **{"optim.epochs": 4})
    with host._build:
        host.join("a", cfg, tmp_path / "a", threads=1)
        time.sleep(0.2)
        assert host.state("a") is SlotState.STARTING
    first = host.next("a")
    assert first.kind == "epoch" and first.metrics["epoch"] == 1
    assert host.state("a") is SlotState.AWAITING  # epoch 2 only once the owner asks
    with host._build:
        with pytest.raises(TimeoutError):
            host.next("a", timeout=0.5)  # asks for epoch 2, which waits on the lock
        assert host.state("a") is SlotState.TRAINING
        host.leave("a")
        assert host.state("a") is SlotState.LEAVING
    second = host.next("a")  # the epoch it was training is still handed over
    assert second.kind == "epoch" and second.metrics["epoch"] == 2
    end = host.next("a")
    assert end.kind == "end" and end.result.status == "stopped" and end.result.epochs_done == 2
    with pytest.raises(KeyError):
        host.state("a")  # an ended slot whose end was taken is gone


def test_a_slot_told_to_leave_while_it_builds_trains_no_epoch(small_set: Path, tmp_path: Path):
    host = SlotHost()
    with host._build:
        host.join("a", slot_config(small_set, tmp_path / "cache", **SLOTS[0]), tmp_path / "a", threads=1)
        host.leave("a")
        assert host.state("a") is SlotState.LEAVING
    end = host.next("a")
    assert end.kind == "end" and end.error is None
    assert end.result.status == "stopped" and end.result.epochs_done == 0


def test_a_dead_slot_thread_is_noticed_by_its_waiting_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A slot thread that ends without handing over its end (nothing in the engine lets it: this
    stands for a bug or an interpreter shutting down) ends its owner's wait within ALIVE_EVERY_S."""
    monkeypatch.setattr(slots_module, "ALIVE_EVERY_S", 0.1)
    monkeypatch.setattr(SlotHost, "_train", lambda self, *args: None)
    host = SlotHost()
    host.join("a", slot_config(tmp_path, tmp_path / "cache"), tmp_path / "a")
    started = time.monotonic()
    end = host.next("a", timeout=10)
    assert time.monotonic() - started < 5
    assert end.kind == "end" and isinstance(end.error, SlotThreadDied)
    assert host.training() == []


def test_slot_transitions_are_the_table_and_only_the_table():
    every = list(SlotState)
    for start in every:
        for to in every:
            slot = _Slot("k", None, None)
            slot.state = start
            with slot.cond:
                assert slot.move(to) is (to in TRANSITIONS[start]), (start, to)
            assert slot.state is (to if to in TRANSITIONS[start] else start)
    # every state can reach ENDED, and ENDED is the end
    for start in every:
        seen, frontier = {start}, [start]
        while frontier:
            for to in TRANSITIONS[frontier.pop()] - seen:
                seen.add(to)
                frontier.append(to)
        assert SlotState.ENDED in seen
    assert TRANSITIONS[SlotState.ENDED] == frozenset()


def test_a_proxy_lease_keeps_its_slot_until_renewals_stop():
    from mtsearch.search.process_hosts import LEASE_S, QUICK_LEASE_S, RENEW_EVERY_S

    assert RENEW_EVERY_S * 5 <= QUICK_LEASE_S < LEASE_S  # a few late renewals never count a proxy gone
    now = [100.0]
    leases = Leases(clock=lambda: now[0])
    alive = leases.of("t1")
    assert not alive()  # never renewed: no proxy
    leases.renew("t1")
    now[0] += QUICK_LEASE_S - 1
    assert alive() and alive(quick=True)
    now[0] += 2  # past the quick lease: a placement counts it gone, a waiting slot not yet
    assert alive() and not alive(quick=True)
    leases.renew("t1")
    assert alive(quick=True)
    now[0] += LEASE_S + 1
    assert not alive()
    leases.renew("t1")
    leases.drop("t1")
    assert not alive()


class _RoundRobin:
    """What torch.cuda.Stream() does: streams handed out in turn from a fixed pool."""

    def __init__(self, size: int):
        self.size, self.drawn = size, 0

    def __call__(self, device):
        self.drawn += 1
        return type("Stream", (), {"cuda_stream": 1000 + self.drawn % self.size})()


def test_live_slots_hold_distinct_streams_from_a_round_robin_pool():
    robin = _RoundRobin(4)
    pool = StreamPool(make=robin)
    got = {key: pool.acquire(key, "cuda:0").cuda_stream for key in "abc"}
    assert len(set(got.values())) == 3
    robin.drawn += 2  # others drew from torch's pool meanwhile: its turn is back at slot b's stream
    assert pool.acquire("d", "cuda:0").cuda_stream not in got.values()  # b's and c's skipped
    with pytest.raises(RuntimeError, match="free of the other 4 slots"):
        pool.acquire("e", "cuda:0")  # all 4 streams held: every draw comes back to a held one
    pool.release("b")
    assert pool.acquire("e", "cuda:0").cuda_stream == got["b"]  # a freed stream serves the next slot
    assert len(set(pool.held().values())) == 4
    pool.acquire("f", "cuda:1")  # another GPU's streams are its own: none of cuda:0's is in its way
    assert len(pool.held()) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_real_cuda_streams_of_live_slots_are_distinct():
    pool = StreamPool()
    held = [pool.acquire(f"k{n}", torch.device("cuda", 0)).cuda_stream for n in range(8)]
    torch.cuda.Stream()  # others drawing from torch's pool meanwhile change nothing held
    assert len(set(held)) == 8 and set(pool.held().values()) == set(held)


def test_an_owner_that_abandons_its_slot_leaves_nothing_behind(small_set: Path, tmp_path: Path):
    host = SlotHost()
    host.join("a", slot_config(small_set, tmp_path / "cache", **SLOTS[0]), tmp_path / "a", threads=1)
    assert host.next("a").metrics["epoch"] == 1
    host.leave("a", abandoned=True)  # the owner failed: it will not take the end event
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            host.state("a")
        except SlotLost:
            break
        time.sleep(0.1)
    with pytest.raises(SlotLost):  # gone: a late owner hears its slot is lost (a KeyError)
        host.next("a")
    assert issubclass(SlotLost, KeyError) and host.training() == []
