"""The Parquet store: SPEC columns, atomic rewrites readable at any time, resume without loss or duplicates."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pyarrow.parquet as pq

from mtsearch.results.store import (
    EPOCHS_FILE,
    TRIALS_FILE,
    StudyStore,
    epoch_rows,
    load_epochs,
    load_trials,
    trial_rows,
)

SPEC_TRIAL_COLUMNS = ["trial_id", "status", "error", "seed", "epochs_done", "best_epoch", "best_val_hit1",
                      "best_val_hit5", "test_hit1", "test_hit5", "wall_s", "peak_mem_gib", "gpu_share",
                      "device", "config"]
SPEC_EPOCH_COLUMNS = ["trial_id", "epoch", "loss", "loss_cls", "loss_track", "loss_dir", "train_hit1", "val_hit1",
                      "val_hit5", "dir_acc", "lr", "epoch_s", "clips_per_s", "data_wait", "test_hit1",
                      "test_hit5", "track_feat_cos", "track_err_px", "track_gain", "cycle_gain",
                      "val_mean_class_acc", "test_mean_class_acc", "w_track", "w_dir", "weight_decay",
                      "train_clips", "train_s", "eval_clips", "eval_s"]


def _epoch(epoch: int, val: float | None) -> dict:
    return {"epoch": epoch, "loss": 1.0 / epoch, "loss_cls": 0.5, "loss_track": None, "loss_dir": 0.2,
            "train_hit1": 0.3, "val_hit1": val, "val_hit5": None if val is None else val + 0.2,
            "dir_acc": 0.6, "lr": 1e-3, "epoch_s": 2.0, "clips_per_s": float("nan")}


def test_columns_types_and_best_epoch(tmp_path: Path) -> None:
    store = StudyStore(tmp_path, {"loss.w_track": "float", "model.branches": "string"})
    store.upsert_trial("t1", status="running", seed=0, config={"loss": {"w_track": 3.0}},
                       **{"loss.w_track": 3, "model.branches": "cls+dir"})
    for epoch, val in [(1, None), (2, 0.4), (3, 0.4), (4, 0.3)]:
        store.add_epoch("t1", _epoch(epoch, val))
    store.upsert_trial("t1", status="completed")
    store.flush()
    trials = pq.read_table(tmp_path / TRIALS_FILE)
    for col in SPEC_TRIAL_COLUMNS + ["loss.w_track", "model.branches"]:
        assert col in trials.column_names
    assert "cell" not in trials.column_names
    row = trial_rows(tmp_path)[0]
    assert row["status"] == "completed" and row["epochs_done"] == 4
    assert row["best_epoch"] == 2 and row["best_val_hit1"] == 0.4  # ties keep the earlier epoch
    assert row["loss.w_track"] == 3.0 and row["config"] == {"loss": {"w_track": 3.0}}
    epochs = pq.read_table(tmp_path / EPOCHS_FILE)
    assert epochs.column_names == SPEC_EPOCH_COLUMNS
    first = epoch_rows(tmp_path)[0]
    assert first["val_hit1"] is None and first["clips_per_s"] is None  # no eval / not finite -> null


def test_resume_keeps_rows_and_dedups_epochs(tmp_path: Path) -> None:
    store = StudyStore(tmp_path, {"data.fps": "float"}, with_cell=True)
    store.upsert_trial("a", status="completed", cell="data.fps=15", **{"data.fps": 15})
    store.upsert_trial("b", status="running", cell="data.fps=30", **{"data.fps": 30})
    for epoch in (1, 2):
        store.add_epoch("a", _epoch(epoch, 0.1 * epoch))
        store.add_epoch("b", _epoch(epoch, 0.2 * epoch))
    store.flush()

    again = StudyStore(tmp_path, {"data.fps": "float"}, with_cell=True)  # a new driver after a crash
    assert set(again.trials) == {"a", "b"}
    again.add_epoch("b", _epoch(2, 0.45))  # the resumed trial repeats epoch 2 from its checkpoint
    again.add_epoch("b", _epoch(3, 0.5))
    again.upsert_trial("b", status="completed")
    again.flush()
    rows = epoch_rows(tmp_path)
    keys = [(r["trial_id"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)) == 5
    trials = {r["trial_id"]: r for r in load_trials(tmp_path).to_pylist()}
    assert trials["a"]["status"] == "completed" and trials["b"]["epochs_done"] == 3
    assert trials["b"]["cell"] == "data.fps=30" and trials["b"]["best_val_hit1"] == 0.5
    again.forget(["a"])
    again.flush()
    assert {r["trial_id"] for r in trial_rows(tmp_path)} == {"b"}
    assert json.dumps(again.counts()) == json.dumps(
        {"running": 0, "completed": 1, "pruned": 0, "error": 0, "diverged": 0})


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    """A reader polling during many rewrites always gets a complete table (load_epochs retries the
    rare read that pyarrow starts on the old file and finishes on the renamed new one)."""
    store = StudyStore(tmp_path, {"loss.w_track": "float"})
    store.upsert_trial("t0", status="running")
    store.flush()
    stop = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                table = load_epochs(tmp_path)
                rows = table.to_pylist()
                assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
                seen.append(table.num_rows)
            except Exception as exc:  # noqa: BLE001 - any failure to read is what the test catches
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for epoch in range(1, 151):
        store.add_epoch("t0", _epoch(epoch, 0.5))
        store.flush()
    stop.set()
    thread.join()
    assert not errors and len(seen) > 10 and seen == sorted(seen) and max(seen) <= 150
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
