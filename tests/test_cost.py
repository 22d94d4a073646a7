"""The cost ledger: every epoch row says what it trained and evaluated and how long each took,
trials.parquet sums them per trial, and reports and the card show a study's device-hours."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_side_by_side import SLOTS, slot_config

from mtsearch.cli import main
from mtsearch.results.cost import CORE_HOURS, GPU_HOURS, study_cost
from mtsearch.results.store import EPOCHS_FILE, TRIALS_FILE, StudyStore
from mtsearch.train import fit, load_clips


def test_each_epoch_records_the_clips_it_trained_and_evaluated(small_set: Path, tmp_path: Path):
    cfg = slot_config(small_set, tmp_path / "cache", **{**SLOTS[0], "optim.epochs": 3, "eval.every": 2})
    train_set, val_set, test_set, _ = load_clips(cfg.resolved(), lambda line: None)
    rows = fit(cfg, tmp_path / "run").history
    assert [r["train_clips"] for r in rows] == [len(train_set)] * 3
    # validation on epochs 2 and 3 (the last), the test split once after the last
    assert [r["eval_clips"] for r in rows] == [0, len(val_set), len(val_set) + len(test_set)]
    assert all(r["train_s"] > 0 for r in rows) and rows[0]["eval_s"] < rows[2]["eval_s"]
    for row in rows:  # the epoch's time is its training, its evaluation and the bookkeeping between
        assert row["train_s"] + row["eval_s"] <= row["epoch_s"] * (1 + 1e-9)
        assert row["train_clips"] / row["train_s"] == pytest.approx(row["clips_per_s"], rel=1e-6)


def _epoch(epoch: int, **spent: float) -> dict:
    return {"epoch": epoch, "loss": 1.0, "val_hit1": 0.5, **spent}


def test_trials_sum_their_epochs_and_older_trials_have_no_ledger(tmp_path: Path):
    store = StudyStore(tmp_path, {"loss.w_track": "float"})
    store.upsert_trial("new", status="completed", config={"threads": 2}, device="cpu")
    store.add_epoch("new", _epoch(1, train_clips=40, train_s=10.0, eval_clips=0, eval_s=0.0))
    store.add_epoch("new", _epoch(2, train_clips=40, train_s=12.0, eval_clips=30, eval_s=3.0))
    store.upsert_trial("old", status="completed", device="cpu")
    store.add_epoch("old", _epoch(1))  # recorded before the ledger: no figures
    store.flush()
    trials = {r["trial_id"]: r for r in pq.read_table(tmp_path / TRIALS_FILE).to_pylist()}
    new = trials["new"]
    assert (new["train_clips"], new["eval_clips"]) == (80, 30)
    assert (new["train_s"], new["eval_s"], new["device_s"]) == pytest.approx((22.0, 3.0, 25.0))
    assert all(trials["old"][k] is None for k in ("train_clips", "eval_clips", "device_s"))
    epochs = pq.read_table(tmp_path / EPOCHS_FILE).to_pylist()
    assert sum(r["train_clips"] or 0 for r in epochs if r["trial_id"] == "new") == new["train_clips"]
    assert StudyStore(tmp_path, {"loss.w_track": "float"}).trials["new"]["device_s"] == pytest.approx(25.0)


def test_a_study_costs_core_hours_by_threads_and_gpu_hours_by_share():
    cpu = {"device_s": 3600.0, "train_s": 2700.0, "eval_s": 900.0, "train_clips": 1000, "eval_clips": 300,
           "device": "cpu", "config": json.dumps({"threads": 2})}
    gpu = {"device_s": 7200.0, "train_s": 7200.0, "eval_s": 0.0, "train_clips": 5000, "eval_clips": 0,
           "device": "cuda:0", "gpu_share": 0.25, "config": "{}"}
    cost = study_cost([cpu, gpu, {"device_s": None}])
    assert cost is not None and cost.trials == 2
    assert cost.device_hours == pytest.approx({CORE_HOURS: 2.0, GPU_HOURS: 0.5})
    assert cost.eval_share == pytest.approx(900 / 10800)
    assert cost.line() == ("cost: 2 CPU core-hours + 0.5 GPU-hours (8% evaluating): 6,000 training clips, "
                           "300 evaluated, over 2 trials")
    assert study_cost([{"device_s": None}]) is None


def test_leaderboard_json_and_report_carry_the_study_cost(tmp_path: Path, capsys):
    from test_report import write_search_study

    study = write_search_study(tmp_path)
    store = StudyStore(study, {"loss.w_track": "float"})
    for trial_id in list(store.trials)[:2]:
        store.add_epoch(trial_id, {**store.trial_epochs(trial_id)[-1], "train_clips": 100, "train_s": 60.0,
                                   "eval_clips": 20, "eval_s": 12.0})
    store.flush()
    assert main(["leaderboard", str(study), "--format", "json"]) == 0
    cost = json.loads(capsys.readouterr().out)["cost"]
    assert cost["trials"] == 2 and cost["train_clips"] == 200 and cost["device_s"] == pytest.approx(144.0)
    assert cost["eval_share"] == pytest.approx(24 / 144)
    assert main(["report", str(study)]) == 0
    assert "cost: " in capsys.readouterr().out
