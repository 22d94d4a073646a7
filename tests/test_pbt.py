"""Population-based training over the loss weights (issue 33): the rules of a boundary, the
space file's checks, a copy that really trains with its new values, and whole searches through
the CLI (real Ray, real trainer, real Parquet) whose winner `mtsearch train` replays and which
kill -9 then `--resume` finishes with every row once."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from figures import assert_same_rows
from kill9 import kill_9_when, trials_at

from mtsearch.config import TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.schedules import Schedule
from mtsearch.search.pbt import (
    Arrival,
    PopulationHistory,
    PopulationRules,
    continued,
    decide_boundary,
    explore,
    initial_population,
)
from mtsearch.space import space_from_mapping

SPACE = {"loss.w_track": {"loguniform": [0.1, 30.0]}, "optim.lr": {"loguniform": [3e-4, 3e-3]}}


def _pbt(scheduler: dict[str, Any] | None = None, space: dict[str, Any] | None = None,
         **top: Any) -> Any:
    data = {"name": "pbt", "base": {"optim.epochs": 8, "eval.every": 2}, "search": {"seed": 0},
            "scheduler": {"type": "pbt", "population": 4, "perturbation_interval": 2, **(scheduler or {})},
            "space": space or SPACE, **top}
    return space_from_mapping(data, "pbt.yaml", "search")


def _arrivals(spec: Any, scores: list[float | None]) -> dict[str, Arrival]:
    members = initial_population(spec)
    return {f"t{i}": Arrival(score, spec.trial_config(members[i]).to_dict(), f"/kept/t{i}/e0002.pt",
                             diverged=score is None)
            for i, score in enumerate(scores)}


# ---- the rules ---------------------------------------------------------------------------------

def test_the_bottom_quantile_copies_the_top_with_its_values_explored_the_same_way_each_time():
    spec = _pbt()
    rules = PopulationRules.of(spec)
    assert rules.boundaries == (2, 4, 6) and rules.mutate == ("loss.w_track", "optim.lr")
    arrivals = _arrivals(spec, [0.5, 0.1, 0.9, 0.3])
    decided = decide_boundary(rules, 2, arrivals)
    assert decided == decide_boundary(rules, 2, arrivals)  # seeded by (search seed, epoch)
    copies = {tid: d for tid, d in decided.items() if d is not None}
    assert list(copies) == ["t1"]  # ceil(4 x 0.25) = 1: the worst copies the best
    copy = copies["t1"]
    assert copy["donor"] == "t2" and copy["checkpoint"] == "/kept/t2/e0002.pt" and copy["reason"] == "quantile"
    donor = TrialConfig.from_mapping(arrivals["t2"].config)
    assert copy["donor_values"] == {"loss.w_track": donor.loss.w_track, "optim.lr": donor.optim.lr}
    cfg = TrialConfig.from_mapping(copy["config"])
    assert cfg.seed == donor.seed  # the data stream that trained the copied weights
    for key, new in copy["new"].items():
        schedule = cfg.to_flat()[key]
        old = copy["donor_values"][key]
        if new != old:
            assert isinstance(schedule, Schedule) and schedule.steps == ((1, old), (3, new))
        low, high = SPACE[key]["loguniform"]
        assert low <= new <= high


def test_a_diverged_member_copies_a_donor_whatever_its_rank():
    spec = _pbt(scheduler={"population": 3})
    decided = decide_boundary(PopulationRules.of(spec), 2, _arrivals(spec, [0.5, None, 0.7]))
    assert decided["t1"] is not None and decided["t1"]["reason"] == "diverged"
    assert decided["t1"]["donor"] in ("t0", "t2")


def test_explore_resamples_or_scales_within_the_space_bounds():
    rules = PopulationRules.of(_pbt(scheduler={"resample_probability": 0.0}))
    rng = random.Random(1)
    for _ in range(50):
        new = explore(rules, {"loss.w_track": 29.0, "optim.lr": 1e-3}, rng)
        assert new["loss.w_track"] in (30.0, 29.0 * 0.8)  # x1.2 would leave the space: clamped
        assert math.isclose(new["optim.lr"], 1.2e-3) or math.isclose(new["optim.lr"], 0.8e-3)


def test_a_continued_config_keeps_the_lineage_and_adds_the_new_value_after_the_boundary():
    cfg = TrialConfig.from_mapping({"loss.w_track": {"schedule": [[1, 2.0], [3, 4.0]]}, "optim.lr": 1e-3})
    later = continued(cfg, {"loss.w_track": 8.0, "optim.lr": 1e-3}, 4)
    assert later.loss.w_track.steps == ((1, 2.0), (3, 4.0), (5, 8.0))
    assert later.optim.lr == 1e-3  # unchanged stays a constant


def test_pb2_picks_values_inside_the_bounds_once_it_has_segments_to_learn_from():
    spec = _pbt(scheduler={"type": "pb2"})
    rules = PopulationRules.of(spec)
    history = PopulationHistory()
    for epoch, scores in ((2, [0.2, 0.1, 0.4, 0.3]), (4, [0.3, 0.2, 0.6, 0.35]), (6, [0.4, 0.2, 0.7, 0.5])):
        decided = decide_boundary(rules, epoch, _arrivals(spec, scores), history)
        for copy in filter(None, decided.values()):
            for key, value in copy["new"].items():
                low, high = SPACE[key]["loguniform"]
                assert low <= value <= high
    assert len(history.segments) >= 8  # each scored member's segment since the first boundary


def test_the_initial_population_is_a_sobol_design_with_a_seed_each():
    spec = _pbt()
    members = initial_population(spec)
    assert [m["seed"] for m in members] == [0, 1, 2, 3]
    assert members == initial_population(spec)
    tracks = sorted(math.log(m["loss.w_track"]) for m in members)
    span = math.log(30.0) - math.log(0.1)
    assert tracks[-1] - tracks[0] > span / 3  # spread over the range, not bunched


def test_an_earlier_studys_members_come_first_then_the_design():
    spec = _pbt()
    earlier = [{"loss.w_track": 25.0, "optim.lr": 1e-3}]
    members = initial_population(spec, earlier)
    assert members[0] == {"loss.w_track": 25.0, "optim.lr": 1e-3, "seed": 0}
    assert len(members) == 4
    for member in members[1:]:  # the design fills the rest, inside the space
        assert 0.1 <= member["loss.w_track"] <= 30.0 and 3e-4 <= member["optim.lr"] <= 3e-3
    assert [m["seed"] for m in members] == [0, 1, 2, 3]
    whole = [{"loss.w_track": float(i + 1), "optim.lr": 1e-3} for i in range(5)]
    assert [m["loss.w_track"] for m in initial_population(spec, whole)] == [1.0, 2.0, 3.0, 4.0]  # no design left


# ---- the space file ----------------------------------------------------------------------------

@pytest.mark.parametrize("change, key, needle", [
    ({"scheduler": {"mutate": ["model.branches"]}, "space": {**SPACE, "model.branches": {"choice": [["cls"], ["cls", "dir"]]}}},
     "scheduler.mutate", "model.branches"),
    ({"scheduler": {"type": "pb2"}, "space": {**SPACE, "loss.w_dir": {"choice": [1.0, 2.0]}}},
     "space.loss.w_dir", "pb2"),
    ({"scheduler": {"burn_in": 2}, "base": {"optim.epochs": 8, "eval.every": 2, "track.warmup_epochs": 4}},
     "scheduler.burn_in", "warm"),
    ({"scheduler": {"population": 1}}, "scheduler.population", ">= 2"),
    ({"scheduler": {"quantile": 0.7}}, "scheduler.quantile", "0.5"),
    ({"scheduler": {"perturbation_interval": 3}}, "scheduler.perturbation_interval", "eval.every"),
    ({"scheduler": {"grace_period": 2}}, "scheduler.grace_period", "asha"),
    ({"space": {"model.preset": {"choice": ["tiny", "small"]}}}, "scheduler.type", "searches none"),
])
def test_a_bad_population_space_is_refused_naming_the_key(change: dict[str, Any], key: str, needle: str):
    scheduler = change.pop("scheduler", {})
    with pytest.raises(InvalidInput) as caught:
        _pbt(scheduler=scheduler, **change)
    assert (caught.value.key or "").startswith(key), (caught.value.key, caught.value.what)
    assert needle in f"{caught.value.key}: {caught.value.what}"


def test_a_shape_key_is_searched_once_per_member_and_never_mutated():
    spec = _pbt(space={**SPACE, "model.branches": {"choice": [["cls", "track"], ["cls", "track", "dir"]]}})
    assert PopulationRules.of(spec).mutate == ("loss.w_track", "optim.lr")
    assert spec.search.num_samples == 4


# ---- a copy trains with its new values ---------------------------------------------------------

def _small(root: Path, **extra: Any) -> TrialConfig:
    return TrialConfig.from_mapping({
        "data.root": str(root), "data.crop": 48, "data.clip_frames": 7, "track.frame_gap": 2,
        "model.preset": "tiny", "optim.epochs": 3, "eval.every": 1, "device": "cpu", "threads": 1,
        "loss.w_track": 5.0, "loss.w_dir": 1.0, "optim.lr": 1e-3, **extra})


def test_a_copy_trains_its_next_step_with_the_new_values_not_the_donors(tmp_path: Path, small_set: Path,
                                                                       one_torch_thread: None,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from mtsearch.search.population import keep_weights, take_over
    from mtsearch.train import fit
    from mtsearch.train.fit import prepare_run, train_epochs

    monkeypatch.setenv("MTSEARCH_CACHE", str(tmp_path / "cache"))
    donor_cfg = _small(small_set)
    donor_work = tmp_path / "donor"
    fit(donor_cfg, donor_work, on_epoch=lambda m, c: m["epoch"] < 2)  # stops after epoch 2
    kept = keep_weights(donor_work, tmp_path / "kept", 2)
    new = {"loss.w_track": 0.5, "loss.w_dir": 3.0, "optim.lr": 4e-4}
    member_work = tmp_path / "member"
    cfg = take_over(member_work, {"checkpoint": kept, "config": continued(donor_cfg, new, 2).to_dict()})

    run = prepare_run(cfg, member_work, resume=True, say=lambda s: None, warn=lambda s: None)
    assert run.start_epoch == 3
    optimizer = run.training.optimizer
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # the donor's, restored
    seen: list[tuple[float, float, float]] = []

    def on_batch(done: int, total: int, loss: float, rate: float) -> None:
        step_cfg = run.training.step.cfg
        seen.append((float(optimizer.param_groups[0]["lr"]), step_cfg.loss.w_track, step_cfg.loss.w_dir))

    result = train_epochs(run, on_epoch=None, on_batch=on_batch, say=lambda s: None)
    assert seen and all(s == (4e-4, 0.5, 3.0) for s in seen), seen[:3]
    row = result.history[-1]
    assert row["epoch"] == 3 and row["w_track"] == 0.5 and row["w_dir"] == 3.0 and row["lr"] == 4e-4
    weighted = row["loss_cls"] + 0.5 * row["loss_track"] + 3.0 * row["loss_dir"]
    assert row["loss"] == pytest.approx(weighted, rel=1e-4)  # the loss trained on was weighted anew
    donors = row["loss_cls"] + 5.0 * row["loss_track"] + 1.0 * row["loss_dir"]
    assert abs(row["loss"] - donors) > 1e-3 * abs(row["loss"])


# ---- whole searches ----------------------------------------------------------------------------

SEARCH = """\
name: pbt
base:
  data.root: {root}
  data.crop: 48
  data.clip_frames: 7
  track.frame_gap: 2
  model.preset: tiny
  optim.epochs: {epochs}
  eval.every: 1
  device: cpu
metric: val_hit1
search: {{seed: 0}}
scheduler: {{type: pbt, population: 2, perturbation_interval: 2}}
resources: {{cpus_per_trial: 1}}
space:
  loss.w_track: {{loguniform: [0.1, 30]}}
  optim.lr: {{loguniform: [3.0e-4, 3.0e-3]}}
"""

METRICS = ("loss", "loss_cls", "loss_track", "loss_dir", "train_hit1", "val_hit1", "lr", "w_track")
COLUMNS = {"loss.w_track": "w_track", "optim.lr": "lr"}  # epochs.parquet's columns of the values in force


def mtsearch(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtsearch", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def _rows(study: Path, name: str) -> list[dict[str, Any]]:
    return pq.read_table(study / name).to_pylist()


@pytest.mark.slow
def test_a_pbt_search_records_its_exploits_and_train_replays_the_winners_lineage(tmp_path: Path,
                                                                                small_set: Path):
    env = {"MTSEARCH_CACHE": str(tmp_path / "cache")}
    space = tmp_path / "pbt.yaml"
    space.write_text(SEARCH.format(root=small_set, epochs=4))
    run = mtsearch("run", str(space), "--trials-dir", str(tmp_path / "trials"), "--quiet", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    study = tmp_path / "trials" / "pbt"
    trials, epochs, lineage = (_rows(study, f) for f in ("trials.parquet", "epochs.parquet", "lineage.parquet"))
    assert [t["status"] for t in trials] == ["completed"] * 2
    assert len(lineage) == 1  # population 2, boundary 2: the worse copies the better
    copy = lineage[0]
    assert copy["epoch"] == 2 and copy["donor_epoch"] == 2 and copy["donor_id"] != copy["trial_id"]
    old, new = json.loads(copy["old"]), json.loads(copy["new"])
    rows = {(r["trial_id"], r["epoch"]): r for r in epochs}
    assert len(rows) == len(epochs) == 8
    for key, column in COLUMNS.items():  # each epoch row holds the values in force then
        assert rows[(copy["trial_id"], 2)][column] == pytest.approx(old[key])
        assert rows[(copy["trial_id"], 3)][column] == pytest.approx(new[key])

    board = json.loads(mtsearch("leaderboard", str(study), "--format", "json", env=env).stdout)
    recipient = next(r for r in board["rows"] if r["trial_id"] == copy["trial_id"])
    assert recipient["exploits"] == 1 and recipient["loss.w_track"] == pytest.approx(new["loss.w_track"])
    confirm = mtsearch("confirm", str(study), env=env)  # a race of constants: refused, one line
    assert confirm.returncode == 2 and confirm.stderr.count("error:") == 1 and "Traceback" not in confirm.stderr

    best = tmp_path / "best.yaml"  # the member with an exploit in its lineage, whatever its rank
    export = mtsearch("export", str(study), "--rank", str(recipient["rank"]), "--out", str(best), env=env)
    assert export.returncode == 0, export.stderr
    # the weights' own history: the copy's epochs up to the exploit are its donor's
    trained_by = {e: copy["donor_id"] if e <= 2 else copy["trial_id"] for e in range(1, 5)}
    expected = [rows[(trained_by[e], e)] for e in range(1, 5)]
    header = best.read_text()
    assert f"epochs 1-2: trained by trial {copy['donor_id']}" in header
    assert f"epochs 3-4: trained by trial {copy['trial_id']}" in header
    card = best.with_suffix(".md").read_text()
    assert "## Schedule" in card and best.with_suffix(".schedule.png").stat().st_size > 0
    plot = mtsearch("plot", str(study), env=env)
    assert plot.returncode == 0 and (study / "plots" / "schedule.png").stat().st_size > 0, plot.stderr
    train = mtsearch("train", str(best), "--out", str(tmp_path / "replay"), env=env)
    assert train.returncode == 0, train.stdout + train.stderr
    got = _rows(tmp_path / "replay", "metrics.parquet")
    assert_same_rows(got, expected, keys=METRICS, rel=1e-4, abs=1e-6,
                     where="export then train of a PBT winner")


@pytest.mark.slow
def test_kill_9_then_resume_finishes_a_pbt_search_with_its_lineage_once(tmp_path: Path, small_set: Path):
    env = {"MTSEARCH_CACHE": str(tmp_path / "cache")}
    space = tmp_path / "pbt.yaml"
    space.write_text(SEARCH.format(root=small_set, epochs=12))  # boundaries 2, 4, ..., 10
    trials_dir = tmp_path / "trials"
    study = trials_dir / "pbt"
    command = [sys.executable, "-m", "mtsearch", "run", str(space), "--trials-dir", str(trials_dir), "--quiet"]
    os.environ.update(env)
    try:  # killed past the first boundary and past a save of Tune's state (every 2 s)
        kill_9_when(command, study, lambda rows: trials_at(rows, 3) == 2, settle_s=3, timeout_s=300)
    finally:
        for key in env:
            os.environ.pop(key, None)
    killed = {(r["trial_id"], r["epoch"]) for r in _rows(study, "epochs.parquet")}
    assert len(killed) < 2 * 12, "the search ended before the kill"
    mid_run = _rows(study, "lineage.parquet")  # written as the other files are: readable mid-run
    assert mid_run and {r["epoch"] for r in mid_run} <= {2, 4, 6, 8, 10}

    again = mtsearch("run", str(space), "--trials-dir", str(trials_dir), "--resume", "--quiet", env=env,
                     timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = _rows(study, "trials.parquet")
    assert [t["status"] for t in trials] == ["completed"] * 2
    keys = [(r["trial_id"], r["epoch"]) for r in _rows(study, "epochs.parquet")]
    assert len(keys) == len(set(keys)) == 2 * 12 and killed <= set(keys)
    lineage = _rows(study, "lineage.parquet")
    assert sorted(r["epoch"] for r in lineage) == [2, 4, 6, 8, 10]  # one copy a boundary, none twice
    assert all(row in lineage for row in mid_run)  # the copies before the kill, as they were


def test_a_population_the_machine_cannot_train_at_once_is_refused_writing_nothing(tmp_path: Path):
    space = tmp_path / "big.yaml"
    space.write_text("name: big\nbase: {model.preset: tiny, optim.epochs: 4, eval.every: 2}\n"
                     "scheduler: {type: pbt, population: 4096, perturbation_interval: 2}\n"
                     "resources: {cpus_per_trial: 1}\nspace: {loss.w_track: {loguniform: [0.1, 30]}}\n")
    run = mtsearch("run", str(space), "--trials-dir", str(tmp_path / "trials"), "--quiet", env={})
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1 and "scheduler.population" in errors[0], run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "trials").exists()


def test_run_from_an_earlier_study_takes_its_top_trials_values_inside_this_space(tmp_path: Path):
    from test_report import write_search_study

    from mtsearch.cli.run import _population_from

    earlier = write_search_study(tmp_path / "trials")
    spec = _pbt(space={"loss.w_track": {"loguniform": [0.1, 30.0]}, "loss.w_dir": {"uniform": [1.0, 5.0]}})
    args = type("Args", (), {"from_study": str(earlier), "resume": False, "trials_dir": str(tmp_path / "t")})()
    members = _population_from(spec, args)
    assert len(members) == 4 and set(members[0]) == {"loss.w_track", "loss.w_dir"}
    assert all(0.1 <= m["loss.w_track"] <= 30.0 and 1.0 <= m["loss.w_dir"] <= 5.0 for m in members)
    with pytest.raises(InvalidInput, match="--from"):  # a search of another scheduler takes none
        _population_from(space_from_mapping({"name": "a", "space": SPACE}, "a.yaml", "search"), args)
