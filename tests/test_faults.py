"""Faults of the machine are not results: a killed trial worker is retried from its checkpoint,
and a study whose disk fills stops cleanly and resumes. Real Ray, real Optuna, real Parquet; the
disk is a real tmpfs (mounted as root; skipped with a reason where that is not allowed).

The trainer is a stand-in with the real one's signature and real checkpoint files, so these run
in seconds; it is a closure, so Ray ships it by value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pyarrow.parquet as pq
import pytest
from tmpfs import grow, mounted_tmpfs

from mtsearch.search.driver import run_search
from mtsearch.space import space_from_mapping


def make_fit(log_dir: Path, epoch_s: float = 0.5, payload_bytes: int = 0,
             fail_w_below: float | None = None) -> Callable[..., Any]:
    """A stand-in trainer: each epoch writes `payload_bytes` of checkpoint and `<pid>.epoch` (its
    worker's pid and epoch) in `log_dir`; with `fail_w_below`, configs below it raise."""
    log_dir = str(log_dir)

    def fake_fit(cfg: Any, out_dir: Any, *, on_epoch: Any, resume: bool, log: Any) -> Any:
        import json as _json
        import os as _os
        import time as _time
        from pathlib import Path as _Path
        from types import SimpleNamespace

        ckpt = _Path(out_dir) / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        start = 1
        if resume and (ckpt / "state.json").exists():
            start = _json.loads((ckpt / "state.json").read_text())["epoch"] + 1
        starts = _Path(log_dir) / "starts.jsonl"
        with open(starts, "a") as fh:
            fh.write(_json.dumps({"seed": cfg.seed, "start": start}) + "\n")
        if fail_w_below is not None and cfg.loss.w_track < fail_w_below:
            raise ValueError(f"boom: w_track={cfg.loss.w_track:.3g} is cursed")
        for epoch in range(start, cfg.optim.epochs + 1):
            (_Path(log_dir) / f"{_os.getpid()}.epoch").write_text(str(epoch))
            _time.sleep(epoch_s)
            if payload_bytes:
                (ckpt / "weights.bin").write_bytes(_os.urandom(payload_bytes))
            (ckpt / "state.json").write_text(_json.dumps({"epoch": epoch}))
            val = epoch / cfg.optim.epochs / (1.0 + abs(cfg.loss.w_track - 10.0))
            on_epoch({"epoch": epoch, "loss": 1.0 / epoch, "loss_cls": 0.5 / epoch, "loss_track": None,
                      "loss_dir": None, "train_hit1": val, "val_hit1": val, "val_hit5": val,
                      "dir_acc": None, "lr": 1e-3, "epoch_s": epoch_s, "clips_per_s": 10.0}, ckpt)
        return SimpleNamespace(status="completed", error=None)

    return fake_fit


def _spec(name: str, samples: int, epochs: int, **extra: Any) -> Any:
    data = {"name": name, "base": {"optim.epochs": epochs},
            "search": {"algorithm": "tpe", "num_samples": samples, "max_concurrent": 2, "seed": 0},
            "scheduler": {"type": "none"}, "space": {"loss.w_track": {"uniform": [1, 20]}}, **extra}
    return space_from_mapping(data, f"{name}.yaml", "search")


def _optuna_states(study_dir: Path, name: str) -> list[str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'optuna.db'}")
    return sorted(t.state.name for t in study.trials)


def _epoch_keys(study_dir: Path) -> list[tuple[str, int]]:
    return [(r["trial_id"], r["epoch"]) for r in pq.read_table(study_dir / "epochs.parquet").to_pylist()]


def _kill_one_worker_at_epoch(logs: Path, epoch: int, done: threading.Event, killed: list[int]) -> None:
    """Kill -9 (as the OOM killer does) the first trial worker seen running `epoch`."""
    deadline = time.time() + 120
    while time.time() < deadline and not done.is_set():
        for marker in logs.glob("*.epoch"):
            try:
                if int(marker.read_text() or 0) == epoch:
                    pid = int(marker.stem)
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            except (OSError, ValueError):
                continue
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint_and_is_not_a_result(tmp_path: Path,
                                                                         ray_address: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_worker_at_epoch, args=(logs, 2, done, killed))
    killer.start()
    said: list[str] = []
    try:
        outcome = run_search(_spec("killed", 2, 4), tmp_path / "trials", address=ray_address,
                             trainer=make_fit(logs), log=said.append)
    finally:
        done.set()
        killer.join()
    assert killed, "no worker was killed"
    rows = pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()
    assert [(r["status"], r["error"], r["epochs_done"]) for r in rows] == [("completed", None, 4)] * 2
    keys = _epoch_keys(outcome.study_dir)
    assert len(keys) == len(set(keys)) == 8  # no epoch lost or counted twice
    starts = [json.loads(line)["start"] for line in (logs / "starts.jsonl").read_text().splitlines()]
    assert sorted(starts) == [1, 1, 2]  # the killed trial went on from its epoch-1 checkpoint
    assert _optuna_states(outcome.study_dir, "killed") == ["COMPLETE", "COMPLETE"]
    assert any(s.endswith("worker process died (killed or crashed) after epoch 1; restarting from "
                          "its last checkpoint (restart 1 of 3)") for s in said), said
    assert not outcome.machine_failed


@pytest.mark.slow
def test_a_worker_killed_past_its_restarts_is_an_error_that_resume_reruns(tmp_path: Path,
                                                                          ray_address: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_worker_at_epoch, args=(logs, 2, done, killed))
    killer.start()
    spec = _spec("restarts", 1, 3, failure={"max_restarts": 0})
    try:
        outcome = run_search(spec, tmp_path / "trials", address=ray_address, trainer=make_fit(logs))
    finally:
        done.set()
        killer.join()
    (row,) = pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()
    assert row["status"] == "error"
    assert row["error"] == ("worker process died (killed or crashed) after epoch 1; retried 0 times"
                            f" (full text: errors/{row['trial_id']}.txt)")
    assert (outcome.study_dir / "errors" / f"{row['trial_id']}.txt").read_text().strip()  # Ray's report
    assert outcome.machine_failed == [row["trial_id"]]
    assert _optuna_states(outcome.study_dir, "restarts") == ["WAITING"]  # not a FAIL: not the config's

    for marker in logs.glob("*.epoch"):
        marker.unlink()
    again = run_search(spec, tmp_path / "trials", resume=True, address=ray_address,
                       trainer=make_fit(logs))
    (row,) = pq.read_table(again.study_dir / "trials.parquet").to_pylist()
    assert (row["status"], row["error"], row["epochs_done"]) == ("completed", None, 3)
    assert sorted(k[1] for k in _epoch_keys(again.study_dir)) == [1, 2, 3]
    assert _optuna_states(again.study_dir, "restarts") == ["COMPLETE"]


def test_a_failing_configuration_is_a_result_retried_only_within_max_failures(tmp_path: Path,
                                                                               ray_address: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    spec = space_from_mapping({"name": "cursed", "base": {"optim.epochs": 2},
                               "search": {"algorithm": "grid", "max_concurrent": 2},
                               "failure": {"max_failures": 1},
                               "space": {"loss.w_track": {"grid": [2.0, 12.0]}}}, "cursed.yaml", "search")
    outcome = run_search(spec, tmp_path / "trials", address=ray_address,
                         trainer=make_fit(logs, 0.1, fail_w_below=5.0))
    rows = {r["loss.w_track"]: r for r in pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()}
    assert rows[12.0]["status"] == "completed"
    cursed = rows[2.0]
    assert (cursed["status"], cursed["error"]) == (
        "error", f"ValueError: boom: w_track=2 is cursed (full text: errors/{cursed['trial_id']}.txt)")
    assert "Traceback" in (outcome.study_dir / "errors" / f"{cursed['trial_id']}.txt").read_text()
    attempts = [json.loads(line) for line in (logs / "starts.jsonl").read_text().splitlines()]
    assert len(attempts) == 3  # the cursed config: once and one retry (max_failures 1)
    assert not outcome.machine_failed


# ---- a full disk -------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs at tmp_path/disk, unmounted afterwards; grown with `_grow`."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as disk:
        yield disk


def _grow(disk: Path) -> None:
    grow(disk, "400m")


DRIVER = """\
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import ray.cloudpickle
import test_faults
ray.cloudpickle.register_pickle_by_value(test_faults)
import mtsearch.search.driver as search
plain = search.run_search
search.run_search = lambda *a, **k: plain(*a, trainer=test_faults.make_fit(Path({logs!r}), 0.3,
                                                                             payload_bytes=1_500_000), **k)
from mtsearch.cli import main
sys.exit(main(sys.argv[1:]))
"""

SPACE = """\
name: full
base: {optim.epochs: 4}
search: {algorithm: tpe, num_samples: 4, max_concurrent: 2, seed: 0}
scheduler: {type: none}
space:
  loss.w_track: {uniform: [1, 20]}
"""


@pytest.mark.slow
def test_a_full_disk_stops_the_search_cleanly_and_resume_finishes_it(tmp_path: Path, small_disk: Path,
                                                                     ray_address: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    space = tmp_path / "full.yaml"
    space.write_text(SPACE)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), logs=str(logs)))
    trials = small_disk / "trials"
    command = [sys.executable, str(script), "run", str(space), "--trials-dir", str(trials),
               "--address", ray_address, "--quiet"]

    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: disk full writing "), first.stderr
    assert "MB free); free space, then: mtsearch run " in errors[0] and " --resume" in errors[0], errors
    study = trials / "full"
    before = pq.read_table(study / "epochs.parquet").to_pylist()  # readable, and kept
    assert "RUNNING" not in _optuna_states(study, "full")

    _grow(small_disk)
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    rows = pq.read_table(study / "trials.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["completed"] * 4, rows
    keys = _epoch_keys(study)
    assert len(keys) == len(set(keys)) == 16  # nothing lost, nothing doubled
    assert {(r["trial_id"], r["epoch"]) for r in before} <= set(keys), again.stdout + again.stderr
    # a trial sampled as the disk filled, before any row of it was written, ends FAIL (a new one
    # takes its place); one with rows runs again under its own id, into its own Optuna trial
    states = _optuna_states(study, "full")
    assert states.count("COMPLETE") == 4 and set(states) <= {"COMPLETE", "FAIL"}, states


def test_tune_state_cut_short_is_set_aside_down_to_a_whole_one(tmp_path: Path) -> None:
    """Tune writes its state in place: a session's files cut short by a full disk go, newest
    first, until the newest left is whole (JSON, and pickles that reach their STOP)."""
    import pickle

    from mtsearch.search.study import drop_broken_tune_state

    def session(stamp: str, state: str, generator: bytes, searcher: bytes) -> None:
        (tmp_path / f"experiment_state-{stamp}.json").write_text(state)
        (tmp_path / f"search_gen_state-{stamp}.json").write_bytes(generator)
        (tmp_path / f"searcher-state-{stamp}.pkl").write_bytes(searcher)

    whole = pickle.dumps({"counter": 3, "trials": list(range(50))})
    session("2026-01-01_00-00-00", '{"trial_data": []}', whole, whole)
    session("2026-01-01_00-00-05", '{"trial_data": []}', whole, whole[:-9])  # its searcher cut short
    session("2026-01-01_00-00-09", '{"trial_data": [["{\\"tri', whole, whole)  # its state cut short
    assert drop_broken_tune_state(tmp_path) == ["2026-01-01_00-00-09", "2026-01-01_00-00-05"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "experiment_state-2026-01-01_00-00-00.json", "search_gen_state-2026-01-01_00-00-00.json",
        "searcher-state-2026-01-01_00-00-00.pkl"]
    assert drop_broken_tune_state(tmp_path) == []  # a whole state stays


def test_a_lost_trial_goes_on_from_its_newest_checkpoint_with_rows(tmp_path: Path) -> None:
    """Tune numbers a trial's checkpoints from 0, one per epoch: checkpoint_000002 is epoch 3. A
    newer one than the trial's rows may be half written, and would skip rows never recorded."""
    from mtsearch.search.study import ADOPTED_CHECKPOINT, set_aside_checkpoint

    for index in range(4):
        (tmp_path / f"checkpoint_{index:06d}").mkdir()
        (tmp_path / f"checkpoint_{index:06d}" / "epoch").write_text(str(index + 1))
    (tmp_path / "work").mkdir()
    assert set_aside_checkpoint(tmp_path, epochs_done=3) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [ADOPTED_CHECKPOINT]
    assert (tmp_path / ADOPTED_CHECKPOINT / "epoch").read_text() == "3"
    # lost again before a newer checkpoint: the one set aside stays; none older than a row: 0
    assert set_aside_checkpoint(tmp_path, epochs_done=3) == 0
    assert (tmp_path / ADOPTED_CHECKPOINT / "epoch").read_text() == "3"
    (tmp_path / "checkpoint_000000").mkdir()
    assert set_aside_checkpoint(tmp_path, epochs_done=0) == 0
    assert not (tmp_path / "checkpoint_000000").exists()
    # a trial that went on so is a new Tune trial, numbering from 0 again: the label says the epoch
    from ray import tune

    for index, epoch in ((0, 4), (1, 5)):
        (tmp_path / f"checkpoint_{index:06d}").mkdir()
        tune.Checkpoint.from_directory(str(tmp_path / f"checkpoint_{index:06d}")).set_metadata({"epoch": epoch})
    assert set_aside_checkpoint(tmp_path, epochs_done=4) == 4
    assert tune.Checkpoint.from_directory(str(tmp_path / ADOPTED_CHECKPOINT)).get_metadata() == {"epoch": 4}


def test_sqlite_running_out_of_disk_is_a_storage_fault() -> None:
    """Optuna's optuna.db says "database or disk is full" (wrapped in its own error, then in
    Tune's): a full disk, which stops the study for --resume, not a traceback."""
    import sqlite3

    from mtsearch.errors import storage_failure

    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("An exception is raised during the commit") from inner
    except RuntimeError as exc:
        disk = storage_failure(exc)
    assert disk is not None and disk.render("mtsearch run x.yaml --resume").startswith("disk full")
    assert storage_failure(RuntimeError("database is locked")) is None
