"""SlotHost (train/slots.py): independent trials trained side by side, each epoch on its owner's
request; a slot computes what `fit` computes, never trains past what its owner has seen, and
leaves when its owner is gone."""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path

import pytest
from test_fused import SLOTS, _assert_same_run, slot_config

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
