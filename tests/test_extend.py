"""Extending a finished study (issue 11): `--resume --num-samples N` and `ablate --resume --repeats N`.

Real Ray, real Optuna (SQLite) and real Parquet, with the stand-in trainer of test_search.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pyarrow.parquet as pq
import pytest
from test_search import make_fit, records

from mtsearch.errors import InvalidInput
from mtsearch.results.store import StudyStore
from mtsearch.search.driver import run_search
from mtsearch.search.tuning import objective_at, scheduler
from mtsearch.space import space_from_mapping, with_study_count


def _spec(data: dict[str, Any], kind: str = "search") -> Any:
    return space_from_mapping(data, "test.yaml", kind, default_name="study")


SEARCH = {"name": "ext", "base": {"optim.epochs": 4, "eval.every": 1},
          "search": {"algorithm": "tpe", "num_samples": 4, "max_concurrent": 2, "seed": 3},
          "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
          "space": {"loss.w_track": {"loguniform": [1, 400]}}}


def test_a_finished_study_grows_by_exactly_the_missing_trials(tmp_path: Path, ray_address: str):
    logs = tmp_path / "logs"
    logs.mkdir()
    trials = tmp_path / "trials"
    fit = make_fit(logs, 0.05)
    first = run_search(_spec(SEARCH), trials, address=ray_address, trainer=fit)
    assert not first.interrupted and len(records(logs)) <= 4
    old_ids = {r["trial_id"] for r in pq.read_table(first.study_dir / "trials.parquet").to_pylist()}

    with pytest.raises(InvalidInput, match="--num-samples: the study .* already has 4; give 4 or more"):
        run_search(_spec(SEARCH).with_cli(num_samples=3), trials, resume=True, address=ray_address,
                   trainer=fit)
    said: list[str] = []
    grown = run_search(_spec(SEARCH).with_cli(num_samples=7), trials, resume=True, address=ray_address,
                       trainer=fit, log=said.append)
    assert not grown.interrupted
    assert any("extending" in line and "from 4 to 7 trials" in line for line in said)
    rows = pq.read_table(grown.study_dir / "trials.parquet").to_pylist()
    assert len(rows) == 7 and old_ids < {r["trial_id"] for r in rows}
    assert all(r["status"] in ("completed", "pruned") for r in rows)
    # only the 3 new trials ran (pruned trials of the first run never re-ran)
    assert len([r for r in records(logs) if r["start_epoch"] == 1]) == len(records(logs))
    epochs = pq.read_table(grown.study_dir / "epochs.parquet").to_pylist()
    keys = [(e["trial_id"], e["epoch"]) for e in epochs]
    assert len(keys) == len(set(keys))
    # the sampler's history holds all of them, and no point was sampled twice
    study = optuna.load_study(study_name="ext", storage=f"sqlite:///{grown.study_dir / 'optuna.db'}")
    assert len(study.trials) == 7
    values = [t.params["loss.w_track"] for t in study.trials]
    assert len(set(values)) == 7
    # the study now records 7: a plain --resume (the file still says 4) keeps it and runs nothing
    assert with_study_count(_spec(SEARCH), grown.study_dir).search.num_samples == 7
    again = run_search(with_study_count(_spec(SEARCH), grown.study_dir), trials, resume=True,
                       address=ray_address, trainer=fit)
    assert not again.interrupted
    assert len(pq.read_table(again.study_dir / "trials.parquet")) == 7


def test_a_grid_gains_seeds_in_every_cell(tmp_path: Path, ray_address: str):
    logs = tmp_path / "logs"
    logs.mkdir()
    grid = {"name": "grid", "base": {"optim.epochs": 2}, "grid": {"loss.w_track": [10, 30]}, "repeats": 2}
    fit = make_fit(logs, 0.05)
    run_search(_spec(grid, "ablation"), tmp_path / "trials", address=ray_address, trainer=fit)
    grown = run_search(_spec(grid, "ablation").with_cli(repeats=3), tmp_path / "trials", resume=True,
                       address=ray_address, trainer=fit)
    rows = pq.read_table(grown.study_dir / "trials.parquet").to_pylist()
    cells = sorted((r["cell"], r["seed"]) for r in rows)
    assert cells == [(c, s) for c in ("loss.w_track=10", "loss.w_track=30") for s in (0, 1, 2)]
    assert len(records(logs)) == 6  # 4, then the 2 new seeds


def test_new_trials_meet_the_old_trials_at_the_same_asha_rungs(tmp_path: Path):
    spec = _spec(SEARCH)
    store = StudyStore(tmp_path, spec.param_types())
    for trial_id, curve in {"a": [0.1, 0.5, 0.6, 0.7], "b": [0.2, None, 0.3], "c": [0.05]}.items():
        store.upsert_trial(trial_id, status="completed")
        for epoch, value in enumerate(curve, start=1):
            store.add_epoch(trial_id, {"epoch": epoch, "loss": 1.0, "val_hit1": value})
    asha = scheduler(spec, store)
    rungs = {milestone: dict(recorded) for milestone, recorded in asha._brackets[0]._rungs}
    # milestones 1, 2, 4 (grace 1, factor 2, 4 epochs); b's epoch 2 carries its epoch-1 value
    assert rungs == {4: {"a": 0.7}, 2: {"a": 0.5, "b": 0.2}, 1: {"a": 0.1, "b": 0.2, "c": 0.05}}
    assert objective_at([{"epoch": 1, "val_hit1": None}], "val_hit1", "max", 1) == -math.inf
    minimised = scheduler(_spec({**SEARCH, "metric": "val_hit1", "mode": "min"}), store)
    assert dict(minimised._brackets[0]._rungs[-1][1]) == {"a": -0.1, "b": -0.2, "c": -0.05}


def disagreeing_fit() -> Any:
    """Validation prefers w_track 10, the test split 40: selection must follow validation (a
    closure, so Ray ships it by value)."""

    def fit(cfg: Any, out_dir: Any, *, on_epoch: Any, resume: bool, log: Any) -> Any:
        from types import SimpleNamespace

        val = {10.0: 0.7, 20.0: 0.6, 40.0: 0.5}[cfg.loss.w_track]
        for epoch in range(1, cfg.optim.epochs + 1):
            last = epoch == cfg.optim.epochs
            on_epoch({"epoch": epoch, "loss": 1.0, "val_hit1": val, "val_hit5": 1.0,
                      "test_hit1": 1.2 - val if last else None, "test_hit5": 1.0 if last else None}, None)
        return SimpleNamespace(status="completed", error=None)

    return fit


def test_selection_follows_validation_and_old_studies_still_read(tmp_path: Path, ray_address: str):
    import pyarrow as pa

    from mtsearch.results.ablation import ablation
    from mtsearch.results.report import leaderboard, load_study

    spec = _spec({"name": "sel", "base": {"optim.epochs": 2}, "grid": {"loss.w_track": [10, 20, 40]}},
                 "ablation")
    outcome = run_search(spec, tmp_path / "trials", address=ray_address, trainer=disagreeing_fit())
    study = load_study(outcome.study_dir)
    board = leaderboard(study)
    assert [r["loss.w_track"] for r in board.rows] == [10, 20, 40]  # by validation
    assert [round(r["test_hit1"], 3) for r in board.rows] == [0.5, 0.6, 0.7]
    assert study.selection == "val" and board.selection_note is None
    epochs = pq.read_table(outcome.study_dir / "epochs.parquet").to_pylist()
    assert sum(e["test_hit1"] is not None for e in epochs) == 3  # once per trial, on its last epoch
    assert {round(c.test.mean, 3) for c in ablation(study).cells} == {0.5, 0.6, 0.7}

    # a study written before validation splits: no test columns, configs without data.selection,
    # no record version (as that version wrote them)
    for name in ("trials.parquet", "epochs.parquet"):
        table = pq.read_table(outcome.study_dir / name)
        table = table.drop([c for c in ("test_hit1", "test_hit5", "test_mean_class_acc", "val_mean_class_acc",
                                        "test_views") if c in table.column_names])
        if name == "trials.parquet":
            configs = []
            for text in table.column("config").to_pylist():
                config = json.loads(text)
                del config["data"]["selection"], config["data"]["val_fraction"], config["record_version"]
                configs.append(json.dumps(config))
            table = table.set_column(table.column_names.index("config"), "config", pa.array(configs))
        pq.write_table(table, outcome.study_dir / name)
    old = load_study(outcome.study_dir)
    board = leaderboard(old)
    assert len(board.rows) == 3 and all(r["test_hit1"] is None for r in board.rows)
    assert old.selection == "test" and "selection was made on the test split" in board.selection_note
    assert "selection was made on the test split" in ablation(old).reading
