"""`resources.trials_per_process: K` in a search (search/process_hosts.py): trials of one shape train side by side in
one process, and each is still its own trial: its own rows (equal to its unfused run), ASHA
decision, Optuna trial, failure and checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from figures import assert_same_rows
from kill9 import kill_9_when, trials_at
from test_seeds import _space

from mtsearch.records import config_from_record
from mtsearch.search.driver import run_search
from mtsearch.space import space_from_mapping
from mtsearch.train import fit


def _fused_space(root: Path, cache: Path, fuse: int = 2) -> dict:
    data = _space(root, cache)
    data["name"] = "fused"
    data["base"] = {**data["base"], "optim.epochs": 4}
    data["search"] = {"algorithm": "random", "num_samples": 6, "max_concurrent": 2, "seed": 0}
    # the training loss differs from trial to trial from the first epoch: ASHA stops some
    data["metric"], data["mode"] = "loss", "min"
    data["scheduler"] = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    data["resources"] = {"cpus_per_trial": 1, "trials_per_process": fuse}
    return data


def _descendants_named(title: str) -> list[int]:
    """Processes below this one whose command line starts with `title` (Ray names its workers by
    their actor, and a local Ray's workers descend from the driver): never another test's."""
    import os

    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine, found = {os.getpid()}, True
    while found:
        found = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                found = True
    named = []
    for pid in sorted(mine - {os.getpid()}):
        try:
            if (Path("/proc") / str(pid) / "cmdline").read_bytes().startswith(title.encode()):
                named.append(pid)
        except OSError:
            continue
    return named


def _epochs_of(epochs: list[dict], trial_id: str) -> list[dict]:
    return sorted((r for r in epochs if r["trial_id"] == trial_id), key=lambda r: r["epoch"])


def test_fused_trials_are_each_their_own_trial(small_set: Path, tmp_path: Path):
    spec = space_from_mapping(_fused_space(small_set, tmp_path / "cache"), "fused.yaml")
    lines: list[str] = []
    outcome = run_search(spec, tmp_path / "trials", num_cpus=2, log=lines.append)
    assert not outcome.interrupted
    assert any("up to 2 at a time in one process" in line for line in lines), lines
    study_dir = outcome.study_dir
    trials = pq.read_table(study_dir / "trials.parquet").to_pylist()
    epochs = pq.read_table(study_dir / "epochs.parquet").to_pylist()
    assert len(trials) == 6 and all(t["fuse_k"] == 2 and t["fuse_group"] is None for t in trials)
    status = {t["trial_id"]: t["status"] for t in trials}
    assert set(status.values()) == {"completed", "pruned"}, status  # ASHA stopped some slots, not all

    # Optuna: one trial per slot, ended as its slot ended
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    states = {ot.user_attrs["trial_id"]: ot.state for ot in optuna.load_study(study_name="fused", storage=storage).trials}
    expected = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
    assert states == {tid: expected[s] for tid, s in status.items()}

    # every slot's rows are its unfused run's, a pruned one's up to where ASHA stopped it
    for trial in trials:
        mine = _epochs_of(epochs, trial["trial_id"])
        assert len(mine) == trial["epochs_done"] == (4 if trial["status"] == "completed" else len(mine))
        alone = fit(config_from_record(json.loads(trial["config"])), tmp_path / "alone" / trial["trial_id"])
        assert_same_rows(mine, alone.history[:len(mine)], rel=1e-5, abs=1e-7, where=trial["trial_id"])


def test_a_fused_slot_that_diverges_touches_no_other(small_set: Path, tmp_path: Path):
    data = _fused_space(small_set, tmp_path / "cache")
    data["search"] = {"algorithm": "grid", "max_concurrent": 2}
    data["scheduler"] = {"type": "none"}
    # l_track is negative (l_sim); a float32-overflowing weight turns the loss into -inf
    data["space"] = {"loss.w_track": {"grid": [0.25, 1e39, 0.5]}}
    outcome = run_search(space_from_mapping(data, "fused.yaml"), tmp_path / "trials", num_cpus=2)
    assert not outcome.interrupted
    trials = pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()
    assert {t["loss.w_track"]: t["status"] for t in trials} == {0.25: "completed", 1e39: "diverged",
                                                                  0.5: "completed"}
    assert all(t["epochs_done"] == 4 for t in trials if t["status"] == "completed")
    bad = next(t for t in trials if t["status"] == "diverged")
    assert bad["error"].startswith("non-finite loss"), bad["error"]
    epochs = pq.read_table(outcome.study_dir / "epochs.parquet").to_pylist()
    good = next(t for t in trials if t["loss.w_track"] == 0.25)
    alone = fit(config_from_record(json.loads(good["config"])), tmp_path / "alone")
    assert [r["loss"] for r in _epochs_of(epochs, good["trial_id"])] == pytest.approx(
        [r["loss"] for r in alone.history], rel=1e-5)


def test_trials_per_process_with_seeds_per_trial_is_refused(tmp_path: Path):
    from mtsearch.errors import InvalidInput

    data = _fused_space(tmp_path, tmp_path / "cache")
    data["search"]["seeds_per_trial"] = 2
    with pytest.raises(InvalidInput, match=r"resources\.trials_per_process"):
        space_from_mapping(data, "fused.yaml")


@pytest.mark.slow
def test_kill_9_then_resume_continues_every_fused_slot(small_set: Path, tmp_path: Path, ray_address: str):
    import subprocess
    import sys

    import yaml


    data = _fused_space(small_set, tmp_path / "cache")
    data["base"] = {**data["base"], "optim.epochs": 12, "eval.every": 4}  # long enough to be killed
    data["search"]["num_samples"] = 2
    data["scheduler"] = {"type": "none"}
    space = tmp_path / "fused.yaml"
    space.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "mtsearch", "run", str(space), "--trials-dir", str(tmp_path / "trials"),
           "--address", ray_address, "--quiet"]
    study = tmp_path / "trials" / "fused"
    kill_9_when(cmd, study, lambda rows: trials_at(rows, 3) == 2)  # both slots at their third epoch

    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stderr.count("resuming from epoch") == 2, again.stdout + again.stderr
    trials = pq.read_table(study / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(t["status"] == "completed" and t["epochs_done"] == 12 for t in trials)
    epochs = pq.read_table(study / "epochs.parquet").to_pylist()
    keys = [(r["trial_id"], r["epoch"]) for r in epochs]
    assert len(keys) == len(set(keys)) == 2 * 12
    for trial in trials:  # a slot interrupted and resumed is the run it would have been
        alone = fit(config_from_record(json.loads(trial["config"])), tmp_path / "alone" / trial["trial_id"])
        assert_same_rows(_epochs_of(epochs, trial["trial_id"]), alone.history, rel=1e-5, abs=1e-7,
                         keys=("loss", "loss_cls", "val_hit1", "train_hit1"), where=trial["trial_id"])


@pytest.mark.slow
def test_a_fusion_host_that_dies_is_a_fault_of_the_machine_and_its_trials_restart(small_set: Path,
                                                                                   tmp_path: Path):
    import os
    import signal
    import threading
    import time

    data = _fused_space(small_set, tmp_path / "cache")
    data["base"] = {**data["base"], "optim.epochs": 15, "eval.every": 5}
    data["search"]["num_samples"] = 2
    data["scheduler"] = {"type": "none"}
    epochs_file = tmp_path / "trials" / "fused" / "epochs.parquet"
    killed: list[str] = []

    def kill_the_host() -> None:  # once each trial has trained a few epochs in it
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            time.sleep(0.3)
            if epochs_file.exists() and pq.read_table(epochs_file).num_rows >= 4:
                killed.extend(_descendants_named("ray::ProcessHost"))  # of this test's own Ray
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)

    threading.Thread(target=kill_the_host, daemon=True).start()
    lines: list[str] = []
    outcome = run_search(space_from_mapping(data, "fused.yaml"), tmp_path / "trials", num_cpus=2,
                         log=lines.append)
    assert killed, "the fusion host was never seen"
    assert not outcome.interrupted
    trials = pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()
    assert all(t["status"] == "completed" and t["epochs_done"] == 15 and t["restarts"] == 1 for t in trials)
    assert sum("restarting from its last checkpoint" in line for line in lines) == 2, lines
    keys = [(r["trial_id"], r["epoch"]) for r in pq.read_table(epochs_file).to_pylist()]
    assert len(keys) == len(set(keys)) == 2 * 15
