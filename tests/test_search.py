"""The Ray Tune driver with real Ray, real Optuna (SQLite) and real Parquet.

Most tests use a stand-in trainer (a synthetic learning curve that depends on `loss.w_track`, with
real checkpoints) so that scheduling, pruning, failures and resume are exercised in seconds; it
is a closure, so Ray ships it by value. One Ray head (`ray start --head` on 127.0.0.1) serves the
module and is reached through `address=`, which also covers `--address`; one test starts a
local Ray the default way. The slow tests run the real trainer through the `mtsearch` command.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pyarrow.parquet as pq
import pytest
from kill9 import kill_9_when, trials_at

from mtsearch.errors import InvalidInput
from mtsearch.search.driver import run_search
from mtsearch.space import space_from_mapping

REPO = Path(__file__).resolve().parents[1]
SPEC_TRIAL_COLUMNS = {"trial_id", "status", "error", "seed", "epochs_done", "best_epoch", "best_val_hit1",
                      "best_val_hit5", "test_hit1", "test_hit5", "wall_s", "peak_mem_gib", "gpu_share",
                      "device", "restarts", "machine_fault", "fuse_group", "fuse_k", "config",
                      "test_mean_class_acc", "test_views", "train_clips", "eval_clips", "device_s", "train_s",
                      "eval_s"}
SPEC_EPOCH_COLUMNS = ["trial_id", "epoch", "loss", "loss_cls", "loss_track", "loss_dir", "train_hit1", "val_hit1",
                      "val_hit5", "dir_acc", "lr", "epoch_s", "clips_per_s", "data_wait", "test_hit1",
                      "test_hit5", "track_feat_cos", "track_err_px", "track_gain", "cycle_gain",
                      "val_mean_class_acc", "test_mean_class_acc", "w_track", "w_dir", "weight_decay",
                      "train_clips", "train_s", "eval_clips", "eval_s"]


def make_fit(log_dir: Path, epoch_s: float = 0.2, fail_w: float | None = None,
             diverge_w: float | None = None) -> Callable[..., Any]:
    """A stand-in for `mtsearch.train.fit`: same signature, real checkpoint files, a curve peaking at w=20."""
    log_dir = str(log_dir)

    def fake_fit(cfg: Any, out_dir: Any, *, on_epoch: Any, resume: bool, log: Any) -> Any:
        import json as _json
        import math
        import os as _os
        import time as _time
        from pathlib import Path as _Path
        from types import SimpleNamespace

        ckpt = _Path(out_dir) / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        start = 1
        if resume and (ckpt / "state.json").exists():
            start = _json.loads((ckpt / "state.json").read_text())["epoch"] + 1
        w = cfg.loss.w_track
        t0 = _time.time()
        if fail_w is not None and w == fail_w:
            raise ValueError(f"boom: w_track={w} is cursed")
        quality = 1.0 / (1.0 + abs(math.log(w / 20.0)))
        for epoch in range(start, cfg.optim.epochs + 1):
            if diverge_w is not None and w == diverge_w and epoch == 2:
                return SimpleNamespace(status="diverged", error="loss is nan at epoch 2")
            _time.sleep(epoch_s)
            (ckpt / "state.json").write_text(_json.dumps({"epoch": epoch}))
            val = quality * epoch / cfg.optim.epochs
            on_epoch({"epoch": epoch, "loss": 1.0 / epoch, "loss_cls": 0.5 / epoch, "loss_track": None,
                      "loss_dir": None, "train_hit1": val, "val_hit1": val, "val_hit5": min(1.0, 2 * val),
                      "dir_acc": None, "lr": 1e-3, "epoch_s": epoch_s, "clips_per_s": 10.0}, ckpt)
        record = {"w": w, "seed": cfg.seed, "start_epoch": start, "t0": t0, "t1": _time.time()}
        (_Path(log_dir) / f"{_os.getpid()}-{_time.time_ns()}.json").write_text(_json.dumps(record))
        return SimpleNamespace(status="completed", error=None)

    return fake_fit


def records(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(log_dir.glob("*.json"))]


def _spec(data: dict[str, Any], kind: str = "search") -> Any:
    return space_from_mapping(data, "test.yaml", kind, default_name="study")


def test_asha_prunes_and_optuna_hears_pruned(tmp_path: Path, ray_address: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    spec = _spec({"name": "asha", "base": {"optim.epochs": 4, "eval.every": 1},
                  "search": {"algorithm": "tpe", "num_samples": 8, "max_concurrent": 2, "seed": 1},
                  "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
                  "storage": {"keep_checkpoints": 1},
                  "space": {"loss.w_track": {"loguniform": [1, 400]}}})
    outcome = run_search(spec, tmp_path / "trials", address=ray_address, trainer=make_fit(logs, 0.15))
    assert not outcome.interrupted
    rows = pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()
    statuses = [r["status"] for r in rows]
    assert len(rows) == 8 and statuses.count("pruned") >= 1 and statuses.count("completed") >= 1
    assert all(r["epochs_done"] < 4 for r in rows if r["status"] == "pruned")
    # bounded disk: only the best completed trial keeps a checkpoint
    with_checkpoint = {p.parent.name for p in (outcome.study_dir / "tune").glob("*/checkpoint_*")}
    best = max((r for r in rows if r["status"] == "completed"), key=lambda r: r["best_val_hit1"])
    assert with_checkpoint == {best["trial_id"]}
    assert all(r["epochs_done"] == 4 for r in rows if r["status"] == "completed")
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{outcome.study_dir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 8
    assert states.count("PRUNED") == statuses.count("pruned")
    assert states.count("COMPLETE") == statuses.count("completed")


def test_max_concurrent_trials_really_run_together(tmp_path: Path, ray_address: str) -> None:
    """TPE + constant_liar with max_concurrent 2 on 4 free CPUs: 2 trials overlap, never 3."""
    logs = tmp_path / "logs"
    logs.mkdir()
    spec = _spec({"name": "conc", "base": {"optim.epochs": 3},
                  "search": {"algorithm": "tpe", "num_samples": 4, "max_concurrent": 2},
                  "scheduler": {"type": "none"}, "space": {"loss.w_track": {"uniform": [1, 40]}}})
    run_search(spec, tmp_path / "trials", address=ray_address, trainer=make_fit(logs, 0.6))
    spans = [(r["t0"], r["t1"]) for r in records(logs)]
    assert len(spans) == 4

    def overlap_at(t: float) -> int:
        return sum(1 for a, b in spans if a <= t < b)

    peak = max(overlap_at(a) for a, _ in spans)
    assert peak == 2, spans


def test_existing_or_busy_study_is_refused(tmp_path: Path) -> None:
    spec = _spec({"name": "busy", "space": {"loss.w_track": {"uniform": [1, 40]}}})
    study = tmp_path / "trials" / "busy"
    study.mkdir(parents=True)
    (study / "space.yaml").write_text(spec.to_yaml())
    with pytest.raises(InvalidInput, match="already exists; add --resume"):
        run_search(spec, tmp_path / "trials")
    fd = os.open(study / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(InvalidInput, match="in use by another mtsearch driver"):
            run_search(spec, tmp_path / "trials", resume=True)
    finally:
        os.close(fd)
    other = _spec({"name": "busy", "space": {"loss.w_track": {"uniform": [1, 50]}}})
    with pytest.raises(InvalidInput, match="differs from the study's"):
        run_search(other, tmp_path / "trials", resume=True)


def test_resources_beyond_the_cluster_are_refused(tmp_path: Path, ray_address: str) -> None:
    spec = _spec({"name": "gpu", "resources": {"gpus_per_trial": 1},
                  "space": {"loss.w_track": {"uniform": [1, 40]}}})
    with pytest.raises(InvalidInput, match="resources.gpus_per_trial: this Ray cluster has 0 GPUs"):
        run_search(spec, tmp_path / "trials", address=ray_address, trainer=make_fit(tmp_path))
    assert not (tmp_path / "trials" / "gpu").exists()


DRIVER = """\
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_search import make_fit
from mtsearch.search.driver import run_search
from mtsearch.space import space_from_mapping
spec = space_from_mapping({{"name": "resume", "base": {{"optim.epochs": 5}},
    "search": {{"algorithm": "tpe", "num_samples": 4, "max_concurrent": 2}},
    "scheduler": {{"type": "none"}}, "storage": {{"keep_checkpoints": 2}},
    "space": {{"loss.w_track": {{"uniform": [1, 40]}}}}}}, "resume.yaml")
import ray.cloudpickle
ray.cloudpickle.register_pickle_by_value(sys.modules["test_search"])
# 2 s epochs until the kill (Tune saves its state every 2 s); the resume need not wait as long
resume = "--resume" in sys.argv
out = run_search(spec, {trials!r}, resume=resume, address={address!r},
                 trainer=make_fit(Path({logs!r}), 0.4 if resume else 2.0))
print("interrupted" if out.interrupted else "finished", flush=True)
"""


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path: Path, ray_address: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), trials=str(tmp_path / "trials"),
                                    address=ray_address, logs=str(logs)))
    epochs_path = tmp_path / "trials" / "resume" / "epochs.parquet"
    def ready(rows: list[dict[str, Any]]) -> bool:  # a trial finished and another is at epoch 2 of 5
        last: dict[str, int] = {}
        for row in rows:
            last[row["trial_id"]] = max(last.get(row["trial_id"], 0), row["epoch"])
        return bool(records(logs)) and 2 in last.values()

    # settle: past a save of Tune's experiment state (every 2 s); epochs take 2 s
    kill_9_when([sys.executable, str(script)], epochs_path.parent, ready, settle_s=3, timeout_s=120)
    before = pq.read_table(epochs_path).num_rows

    again = subprocess.run([sys.executable, str(script), "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "finished" in again.stdout, again.stdout + again.stderr
    trials = pq.read_table(tmp_path / "trials" / "resume" / "trials.parquet").to_pylist()
    assert len(trials) == 4 and all(t["status"] == "completed" for t in trials), trials
    epochs = pq.read_table(epochs_path).to_pylist()
    keys = [(r["trial_id"], r["epoch"]) for r in epochs]
    assert len(keys) == len(set(keys)) == 4 * 5 and len(epochs) >= before
    assert not list((tmp_path / "trials" / "resume" / "tune").glob("*/work"))  # working copies freed
    assert any(r["start_epoch"] > 1 for r in records(logs)), "no trial continued from its checkpoint"
    kept = {p.parent.name for p in (tmp_path / "trials" / "resume" / "tune").glob("*/checkpoint_*")}
    assert len(kept) == 2  # storage.keep_checkpoints, applied across the kill and the resume
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'trials/resume/optuna.db'}")
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


@pytest.fixture(scope="module")
def killed_at_epoch_2(tmp_path_factory: pytest.TempPathFactory,
                      ray_address: str) -> Callable[[], tuple[Path, Path, Path]]:
    """The DRIVER study of 3 trials, killed -9 once two are past epoch 2 of 5 and after a save of
    Tune's state (which names each trial's checkpoint); the third has not started.

    The kill happens once for the module: each call puts the killed study (and the stand-in's
    logs) back as it was, at the same paths, and returns (logs, driver script, study)."""
    import shutil

    work, pristine = tmp_path_factory.mktemp("killed"), tmp_path_factory.mktemp("killed-pristine")
    logs, study = work / "logs", work / "trials" / "resume"
    logs.mkdir()
    script = work / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), trials=str(work / "trials"),
                                    address=ray_address, logs=str(logs)).replace('"num_samples": 4',
                                                                                 '"num_samples": 3'))
    kill_9_when([sys.executable, str(script)], study, lambda rows: trials_at(rows, 2) == 2, settle_s=3,
                timeout_s=120)
    for name in ("logs", "trials"):
        shutil.copytree(work / name, pristine / name, symlinks=True)

    def restore() -> tuple[Path, Path, Path]:
        for name in ("logs", "trials"):
            shutil.rmtree(work / name)
            shutil.copytree(pristine / name, work / name, symlinks=True)
        return logs, script, study

    return restore


@pytest.mark.slow
def test_resume_mends_a_checkpoint_tune_deleted_after_its_last_state_save(
        killed_at_epoch_2: Callable[[], tuple[Path, Path, Path]]) -> None:
    """Tune keeps one checkpoint a trial and saves its state every 2 s: a kill between the two
    leaves a state that names a deleted folder, while the trial's newer checkpoint is there."""
    logs, script, study = killed_at_epoch_2()
    started = {t["loss.w_track"] for t in pq.read_table(study / "trials.parquet").to_pylist()}
    assert len(started) == 2
    for trial_dir in (study / "tune").iterdir():  # as if Tune had replaced each by a newer one
        for folder in sorted(trial_dir.glob("checkpoint_*")):
            index = int(folder.name.split("_")[1])
            folder.rename(folder.with_name(f"checkpoint_{index + 1:06d}"))

    again = subprocess.run([sys.executable, str(script), "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "finished" in again.stdout, again.stdout + again.stderr
    trials = pq.read_table(study / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 3, trials
    keys = [(r["trial_id"], r["epoch"]) for r in pq.read_table(study / "epochs.parquet").to_pylist()]
    assert len(keys) == len(set(keys)) == 3 * 5
    went_on = {r["w"]: r["start_epoch"] for r in records(logs)}
    assert all(went_on[w] > 1 for w in started), went_on  # neither started over


@pytest.mark.slow
def test_resume_restarts_under_their_own_ids_the_trials_tune_never_saved(
        killed_at_epoch_2: Callable[[], tuple[Path, Path, Path]]) -> None:
    """A trial started just before a kill can be in trials.parquet but not in Tune's saved state
    (the disk filled, or the kill came first): Tune's restored searcher counts it as sampled, so
    without help the study would never reach its count. It goes on under its own id from its own
    checkpoint: its rows and its Optuna trial are kept, nothing is sampled in its place."""
    logs, script, study = killed_at_epoch_2()
    (state_file,) = (study / "tune").glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    lost = json.loads(state["trial_data"][-1][0])["trial_id"]
    state["trial_data"] = state["trial_data"][:-1]  # as if Tune had not saved that trial yet
    state_file.write_text(json.dumps(state))
    before = {(r["trial_id"], r["epoch"]): r for r in pq.read_table(study / "epochs.parquet").to_pylist()}
    lost_row = next(t for t in pq.read_table(study / "trials.parquet").to_pylist() if t["trial_id"] == lost)
    assert any(tid == lost for tid, _ in before), "the lost trial had no epoch yet: nothing to keep"

    again = subprocess.run([sys.executable, str(script), "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "finished" in again.stdout, again.stdout + again.stderr
    assert "already reported" not in again.stderr  # its epochs reach Optuna again, quietly
    trials = {t["trial_id"]: t for t in pq.read_table(study / "trials.parquet").to_pylist()}
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials.values()), trials
    assert trials[lost]["loss.w_track"] == lost_row["loss.w_track"]  # the same configuration
    after = {(r["trial_id"], r["epoch"]): r for r in pq.read_table(study / "epochs.parquet").to_pylist()}
    assert len(after) == 3 * 5 and set(before) <= set(after)
    starts = sorted((r for r in records(logs) if r["w"] == lost_row["loss.w_track"]), key=lambda r: r["t0"])
    assert 1 < starts[-1]["start_epoch"] <= lost_row["epochs_done"] + 1  # on from a checkpoint it has rows for
    optuna_study = optuna.load_study(study_name="resume", storage=f"sqlite:///{study / 'optuna.db'}")
    assert sorted(t.state.name for t in optuna_study.trials) == ["COMPLETE"] * 3
    (adopted,) = [t for t in optuna_study.trials if t.user_attrs.get("trial_id") == lost]
    assert adopted.value == pytest.approx(max(r["val_hit1"] for (tid, _), r in after.items() if tid == lost))


@pytest.mark.slow
def test_resume_after_tune_state_cut_short_keeps_every_row(
        killed_at_epoch_2: Callable[[], tuple[Path, Path, Path]]) -> None:
    """A full disk can cut Tune's experiment state short as Tune writes it in place; Tune would
    then silently start a new experiment. The driver sets the broken state aside and resumes
    from the study's own records: every trial under its own id from its own checkpoint."""
    logs, script, study = killed_at_epoch_2()
    (state_file,) = (study / "tune").glob("experiment_state-*.json")
    text = state_file.read_text()
    state_file.write_text(text[: len(text) // 2])
    before = {(r["trial_id"], r["epoch"]) for r in pq.read_table(study / "epochs.parquet").to_pylist()}
    started = {t["trial_id"]: t["loss.w_track"] for t in pq.read_table(study / "trials.parquet").to_pylist()}

    again = subprocess.run([sys.executable, str(script), "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "finished" in again.stdout, again.stdout + again.stderr
    trials = {t["trial_id"]: t for t in pq.read_table(study / "trials.parquet").to_pylist()}
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials.values()), trials
    assert all(trials[tid]["loss.w_track"] == w for tid, w in started.items())
    after = [(r["trial_id"], r["epoch"]) for r in pq.read_table(study / "epochs.parquet").to_pylist()]
    assert len(after) == len(set(after)) == 3 * 5 and before <= set(after)
    went_on = {r["w"]: r["start_epoch"] for r in sorted(records(logs), key=lambda r: r["t0"])}
    assert all(went_on[w] > 1 for w in started.values()), went_on  # each from its own checkpoint
    optuna_study = optuna.load_study(study_name="resume", storage=f"sqlite:///{study / 'optuna.db'}")
    assert sorted(t.state.name for t in optuna_study.trials) == ["COMPLETE"] * 3


TINY_SPACE = """\
name: tiny
base: {{model.preset: tiny, optim.epochs: {epochs}, eval.every: 1, device: cpu, data.cache_dir: {cache},
        data.root: {root}, data.crop: 48, data.clip_frames: 7, track.frame_gap: 2, track.past_frames: 3,
        optim.batch_size: 4}}
search: {{algorithm: tpe, num_samples: 2, max_concurrent: 2, seed: 0}}
scheduler: {{type: none}}
space:
  loss.w_track: {{loguniform: [1, 100]}}
  model.branches: {{choice: [[cls, track, dir], [cls, dir]]}}
"""


EPOCHS = 12  # on the small set an epoch takes about half a second: still running when interrupted


@pytest.mark.slow
def test_cli_real_trainer_interrupt_and_resume(tmp_path: Path, ray_address: str, small_set: Path) -> None:
    """`mtsearch run` end to end with the real trainer: Ctrl-C -> exit 130 + resume command -> --resume.

    On the small set, not the built-in one: the same code path at a seventh of the clips."""
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(epochs=EPOCHS, cache=tmp_path / "cache", root=small_set))
    cmd = [sys.executable, "-m", "mtsearch", "run", str(space), "--trials-dir", str(tmp_path / "trials"),
           "--address", ray_address, "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    epochs_path = tmp_path / "trials" / "tiny" / "epochs.parquet"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if epochs_path.exists() and pq.read_table(epochs_path).num_rows >= 1:
            break
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)  # at the first epoch of 12, an epoch a few tenths of a second
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "resume with: mtsearch run" in err and "--resume" in err, err

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "results:" in done.stdout
    trials = pq.read_table(tmp_path / "trials" / "tiny" / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials), trials
    assert all(t["best_val_hit1"] is not None and t["epochs_done"] == EPOCHS for t in trials)
    # what each trial ran on (issue 10): the real trainer's device and peak RSS, the driver's share
    assert all(t["device"] == "cpu" and t["peak_mem_gib"] > 0 and t["gpu_share"] == 0 for t in trials)
    epochs = pq.read_table(epochs_path).to_pylist()
    keys = [(r["trial_id"], r["epoch"]) for r in epochs]
    assert len(keys) == len(set(keys)) == 2 * EPOCHS
    assert all(r["loss"] is not None and r["val_hit1"] is not None for r in epochs)
    for trial in trials:  # the cost ledger: each trial's sums are its epoch rows'
        mine = [r for r in epochs if r["trial_id"] == trial["trial_id"]]
        assert trial["train_clips"] == sum(r["train_clips"] for r in mine) > 0
        assert trial["eval_clips"] == sum(r["eval_clips"] for r in mine) > 0
        assert trial["device_s"] == pytest.approx(sum(r["train_s"] + r["eval_s"] for r in mine))

    # issue 11 with the real trainer: race the two over two fresh seeds, then export the card
    study = str(tmp_path / "trials" / "tiny")
    race = subprocess.run([sys.executable, "-m", "mtsearch", "confirm", study, "--top", "2", "--seeds", "2",
                           "--first-test", "2", "--address", ray_address], capture_output=True, text=True, timeout=600)
    assert race.returncode == 0, race.stdout + race.stderr
    assert "over seeds 1000..1001" in race.stdout  # the table's title (its columns wrap at 80)
    assert "no significant difference" in race.stdout or "scores higher" in race.stdout
    child = pq.read_table(tmp_path / "trials" / "tiny" / "confirm" / "trials.parquet").to_pylist()
    assert sorted(t["seed"] for t in child) == [1000, 1000, 1001, 1001]
    assert all(t["status"] == "completed" and t["epochs_done"] == EPOCHS for t in child)
    export = subprocess.run([sys.executable, "-m", "mtsearch", "export", study, "--from-confirm"],
                            capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    card = (tmp_path / "trials" / "tiny" / "best.md").read_text()
    assert "over 2 fresh seeds" in card and "- the trial ran on: cpu" in card


def test_grid_statuses_columns_and_local_ray(tmp_path: Path) -> None:
    """Completed, error and diverged trials side by side; the search goes on; SPEC columns.

    Starts its own local Ray (the default without --address); it comes last in this module
    because a second Ray session in one process after a local one is unreliable in Ray 2.60.
    """
    logs = tmp_path / "logs"
    logs.mkdir()
    spec = _spec({"name": "grid", "base": {"optim.epochs": 3, "eval.every": 1},
                  "grid": {"loss.w_track": [5, 20, 50, 80]}, "search": {"max_concurrent": 2},
                  "reference": {"loss.w_track": 20}}, "ablation")
    updates: list[Any] = []
    outcome = run_search(spec, tmp_path / "trials", trainer=make_fit(logs, fail_w=50, diverge_w=80),
                         num_cpus=2, on_update=updates.append)
    study = tmp_path / "trials" / "grid"
    assert outcome.study_dir == study and not outcome.interrupted
    assert (study / "space.yaml").exists() and (study / "tune").is_dir()
    trials = pq.read_table(study / "trials.parquet")
    assert SPEC_TRIAL_COLUMNS | {"cell", "loss.w_track"} == set(trials.column_names)
    rows = {r["loss.w_track"]: r for r in trials.to_pylist()}
    assert {w: r["status"] for w, r in rows.items()} == {5.0: "completed", 20.0: "completed", 50.0: "error",
                                                        80.0: "diverged"}
    assert "boom: w_track=50.0 is cursed" in rows[50.0]["error"]
    # the error column: the last line, and where the whole traceback is
    full = rows[50.0]["error"].split("(full text: ")[1].rstrip(")")
    assert "Traceback" in (study / full).read_text() and "ValueError" in (study / full).read_text()
    assert rows[80.0]["error"] == "loss is nan at epoch 2" and rows[80.0]["epochs_done"] == 1
    assert rows[20.0]["epochs_done"] == 3 and rows[20.0]["best_epoch"] == 3 and rows[20.0]["wall_s"] > 0
    assert rows[20.0]["cell"] == "loss.w_track=20" and rows[20.0]["best_val_hit1"] == pytest.approx(1.0)
    assert json.loads(rows[20.0]["config"])["loss"]["w_track"] == 20.0
    epochs = pq.read_table(study / "epochs.parquet")
    assert epochs.column_names == SPEC_EPOCH_COLUMNS
    keys = [(r["trial_id"], r["epoch"]) for r in epochs.to_pylist()]
    assert len(keys) == len(set(keys)) == 3 + 3 + 1
    assert updates and updates[-1].counts["completed"] == 2
