"""Piecewise-constant schedules of the loss weights, learning rate and weight decay (schedules.py):
validated with the bad entry named, put in force at their epochs, recorded in every epoch row,
and resumed exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from figures import TIMING, same_figure
from test_side_by_side import SLOTS, slot_config

from mtsearch.config import TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.metrics import TEST_METRICS
from mtsearch.schedules import Schedule
from mtsearch.train import fit
from mtsearch.train.in_force import changes_at, in_force

W_TRACK = {"schedule": [[1, 0.25], [3, 2.0]]}
LR = {"schedule": [[1, 1e-3], [4, 3e-4]]}


@pytest.mark.parametrize("key, entries, needle", [
    ("loss.w_track", [[1, 1.0], [1, 2.0]], "schedule entry 2: epoch 1 is not after the previous entry's 1"),
    ("loss.w_track", [[1, 1.0], [5, 2.0], [3, 4.0]], "schedule entry 3: epoch 3 is not after"),
    ("loss.w_dir", [[0, 1.0]], "schedule entry 1: epochs count from 1, got 0"),
    ("loss.w_dir", [[2, 1.0]], "schedule entry 1: the first entry must start at epoch 1"),
    ("loss.w_dir", [[1, 2.0], [4, 0.0]], "schedule entry 2: the value must be > 0, got 0"),
    ("optim.lr", [[1, -1e-3]], "schedule entry 1: the value must be > 0, got -0.001"),
    ("optim.weight_decay", [[1, -1.0]], "schedule entry 1: the value must be >= 0, got -1"),
    ("optim.lr", [[1.5, 1e-3]], "schedule entry 1: the epoch must be a whole number"),
    ("optim.lr", [[1, "fast"]], "schedule entry 1: the value must be a finite number"),
    ("optim.lr", [[1]], "schedule entry 1: expected [epoch, value]"),
    ("optim.lr", [], "expected a non-empty list"),
])
def test_a_bad_schedule_names_its_key_and_entry(key: str, entries: list, needle: str):
    with pytest.raises(InvalidInput) as caught:
        TrialConfig.from_mapping({key: {"schedule": entries}}, "run.yaml")
    assert caught.value.file == "run.yaml" and caught.value.key == key and needle in caught.value.what


def test_only_the_keys_that_change_no_tensor_take_a_schedule():
    with pytest.raises(InvalidInput, match="optim.batch_size"):
        TrialConfig.from_mapping({"optim.batch_size": {"schedule": [[1, 4], [3, 8]]}})
    with pytest.raises(InvalidInput, match=r"loss.w_dir: a schedule is \{schedule"):
        TrialConfig.from_mapping({"loss.w_dir": {"schedule": [[1, 1.0]], "every": 2}})


def test_a_schedule_is_the_value_from_each_epoch_on_and_round_trips_through_a_file(tmp_path: Path):
    cfg = TrialConfig.from_mapping({"loss.w_track": {"schedule": [[1, 25], [21, 37.5], [41, 30]]},
                                    "optim.weight_decay": 0.0})
    schedule = cfg.loss.w_track
    assert isinstance(schedule, Schedule)
    assert [schedule.at(e) for e in (1, 20, 21, 40, 41, 100)] == [25, 25, 37.5, 37.5, 30, 30]
    assert in_force(cfg, 30).loss.w_track == 37.5 and in_force(cfg, 30).optim.weight_decay == 0.0
    assert changes_at(cfg, 21) == {"loss.w_track": 37.5} and changes_at(cfg, 22) == {}
    assert changes_at(cfg, 1) == {}  # the first values are the ones a run starts with
    assert cfg.to_dict()["loss"]["w_track"] == {"schedule": [[1, 25.0], [21, 37.5], [41, 30.0]]}
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    from mtsearch.config import load_config

    assert load_config(path) == cfg
    assert in_force(TrialConfig(), 7) == TrialConfig()  # constants: nothing to put in force


def test_put_in_force_reaches_the_optimiser_the_plateau_rule_and_the_step():
    """The values a schedule (or an exploit of population-based training) puts in force are the
    ones the next step uses, not those the optimiser or the step were built with."""
    from mtsearch.train.step import build_training, put_in_force

    old = TrialConfig.from_mapping({"model.preset": "tiny", "device": "cpu", "optim.lr": 1e-3,
                                    "loss.w_dir": 2.0}).resolved()
    training = build_training(old, 4, torch.device("cpu"), print)
    training.scheduler.num_bad_epochs, training.scheduler.best = 7, 0.5  # the old values' history
    new = old.with_overrides({"optim.lr": 2.5e-4, "optim.weight_decay": 3e-3, "loss.w_dir": 6.0})
    put_in_force(training, new, ["optim.lr", "optim.weight_decay", "loss.w_dir"])
    assert all(g["lr"] == 2.5e-4 and g["weight_decay"] == 3e-3 for g in training.optimizer.param_groups)
    assert training.scheduler.num_bad_epochs == 0 and training.scheduler.best == training.scheduler.mode_worse
    assert training.step.cfg.loss.w_dir == 6.0


def _rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def test_a_run_trains_with_each_epochs_values_and_records_them(small_set: Path, tmp_path: Path):
    """Epoch rows carry the values in force, and the loss they report is the one those weights
    give: l = l_cls + w_track l_track + w_dir l_dir, each an epoch mean over the same clips."""
    cfg = slot_config(small_set, tmp_path / "cache", **{**SLOTS[0], "optim.epochs": 4, "loss.w_track": W_TRACK,
                                                        "optim.lr": LR, "loss.w_dir": 1.5})
    result = fit(cfg, tmp_path / "run")
    rows = result.history
    assert [r["w_track"] for r in rows] == [0.25, 0.25, 2.0, 2.0]
    assert [r["w_dir"] for r in rows] == [1.5] * 4 and [r["weight_decay"] for r in rows] == [1e-4] * 4
    assert rows[3]["lr"] == pytest.approx(3e-4)  # the scheduled rate from epoch 4 (the plateau rule waits)
    assert [r["lr"] for r in rows[:3]] == pytest.approx([1e-3] * 3)
    for row in rows:
        mix = row["loss_cls"] + row["w_track"] * row["loss_track"] + row["w_dir"] * row["loss_dir"]
        assert mix == pytest.approx(row["loss"], rel=1e-5)


def test_a_scheduled_run_resumed_between_segments_is_the_run_straight_through(small_set: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    keys = {**SLOTS[1], "loss.w_track": W_TRACK, "optim.lr": LR}
    straight = fit(slot_config(small_set, cache, **keys, **{"optim.epochs": 4}), tmp_path / "a")
    fit(slot_config(small_set, cache, **keys, **{"optim.epochs": 2}), tmp_path / "b")  # then killed
    resumed = fit(slot_config(small_set, cache, **keys, **{"optim.epochs": 4}), tmp_path / "b")
    assert resumed.epochs_done == 4
    got, want = _rows(resumed.history), _rows(straight.history)
    got[1] = {**got[1], **dict.fromkeys(TEST_METRICS)}  # the 2-epoch run met the test split after epoch 2
    for row_r, row_s in zip(got, want, strict=True):
        for key, value in row_s.items():
            assert same_figure(row_r[key], value, rel=1e-4, abs=1e-7), (row_r["epoch"], key, row_r[key], value)
