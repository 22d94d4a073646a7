"""`search.seeds_per_trial`: a sampled configuration trains N seeds fused in one Ray trial; Optuna
and ASHA see their mean, each seed keeps its own rows, the leaderboard ranks configurations."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from figures import assert_same_rows
from kill9 import kill_9_when, trials_at

from mtsearch.errors import InvalidInput
from mtsearch.records import config_from_record
from mtsearch.results.report import leaderboard, load_study, ranked_trial
from mtsearch.search.driver import run_search
from mtsearch.space import space_from_mapping
from mtsearch.train import fit


def _space(root: Path, cache: Path, **search: object) -> dict:
    return {
        "name": "seeds",
        "base": {"data.root": str(root), "data.cache_dir": str(cache), "data.crop": 48, "data.clip_frames": 7,
                 "track.frame_gap": 2, "track.past_frames": 3, "model.preset": "tiny", "optim.batch_size": 4,
                 "optim.epochs": 2, "eval.every": 1, "device": "cpu", "seed": 3},
        "search": {"algorithm": "random", "num_samples": 2, "max_concurrent": 2, "seed": 0, **search},
        "scheduler": {"type": "none"},
        "space": {"loss.w_dir": {"loguniform": [0.5, 20]}, "optim.lr": {"loguniform": [3e-4, 3e-3]}},
    }


def test_a_configuration_trains_its_seeds_fused_and_scores_their_mean(small_set: Path, tmp_path: Path):
    spec = space_from_mapping(_space(small_set, tmp_path / "cache", seeds_per_trial=2), "seeds.yaml")
    outcome = run_search(spec, tmp_path / "trials", num_cpus=2)
    study_dir = tmp_path / "trials" / "seeds"
    assert not outcome.interrupted
    trials = pq.read_table(study_dir / "trials.parquet").to_pylist()
    epochs = pq.read_table(study_dir / "epochs.parquet").to_pylist()
    assert len(trials) == 4 and all(t["status"] == "completed" and t["fuse_k"] == 2 for t in trials)
    groups: dict[str, list[dict]] = {}
    for trial in trials:
        groups.setdefault(trial["fuse_group"], []).append(trial)
    assert len(groups) == 2
    for group, seeds in groups.items():
        assert sorted(t["seed"] for t in seeds) == [3, 4]
        assert sorted(t["trial_id"] for t in seeds) == [f"{group}-s3", f"{group}-s4"]
        assert seeds[0]["optim.lr"] == seeds[1]["optim.lr"] and seeds[0]["loss.w_dir"] == seeds[1]["loss.w_dir"]
        assert {json.loads(t["config"])["seed"] for t in seeds} == {3, 4}

    finals = {t["trial_id"]: [r["val_hit1"] for r in sorted(epochs, key=lambda r: r["epoch"])
                              if r["trial_id"] == t["trial_id"]][-1] for t in trials}
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    optuna_trials = optuna.load_study(study_name="seeds", storage=storage).trials
    assert len(optuna_trials) == 2
    for ot in optuna_trials:
        group = ot.user_attrs["trial_id"]
        assert ot.state == optuna.trial.TrialState.COMPLETE
        assert ot.value == pytest.approx(sum(finals[f"{group}-s{s}"] for s in (3, 4)) / 2)

    study = load_study(study_dir)
    board = leaderboard(study)
    assert board.total_ranked == 2 and {r["trial_id"] for r in board.rows} == set(groups)
    for row in board.rows:
        mean = sum(finals[f"{row['trial_id']}-s{s}"] for s in (3, 4)) / 2
        assert row["val_hit1"] == pytest.approx(mean) and row["seed"] == "3..4" and "ci95" in row
    assert ranked_trial(study, 1)["trial_id"] == f"{board.rows[0]['trial_id']}-s3"

    # a seed trained fused in the search is the same run as that seed trained alone
    seed_row = next(t for t in trials if t["seed"] == 4)
    alone = fit(config_from_record(json.loads(seed_row["config"])), tmp_path / "alone")
    mine = sorted((r for r in epochs if r["trial_id"] == seed_row["trial_id"]), key=lambda r: r["epoch"])
    assert len(mine) == len(alone.history) == 2
    assert_same_rows(mine, alone.history, rel=1e-5, abs=1e-7, where=seed_row["trial_id"])


@pytest.mark.parametrize("change, key", [
    ({"space": {"seed": {"choice": [0, 1]}}}, "space.seed"),
    ({"resources": {"trials_per_process": 2}}, "resources.trials_per_process"),
    ({"resources": {"trials_per_process": "sometimes"}}, "resources.trials_per_process"),
    ({"search": {"seeds_per_trial": 0}}, "search.seeds_per_trial"),
])
def test_seed_and_per_process_settings_are_checked(change: dict, key: str, tmp_path: Path):
    data = _space(tmp_path, tmp_path / "cache", seeds_per_trial=2)
    for section, values in change.items():
        data[section] = {**data.get(section, {}), **values}
    with pytest.raises(InvalidInput, match=key.replace(".", r"\.")):
        space_from_mapping(data, "seeds.yaml")


def test_a_grid_file_repeats_seeds_with_repeats(tmp_path: Path):
    data = {"name": "g", "grid": {"loss.w_dir": [1, 2]}, "search": {"seeds_per_trial": 2}}
    with pytest.raises(InvalidInput, match="repeats"):
        space_from_mapping(data, "g.yaml", "ablation")


def test_trials_per_process_auto_and_one_are_accepted_and_written_out(tmp_path: Path):
    for value in ("auto", 1):
        data = _space(tmp_path, tmp_path / "cache")
        data["resources"] = {"trials_per_process": value}
        spec = space_from_mapping(data, "s.yaml")
        assert spec.to_dict()["resources"]["trials_per_process"] == value
        assert spec.to_dict()["search"]["seeds_per_trial"] == 1


def test_a_search_says_what_shares_a_process(tmp_path: Path):
    from mtsearch.search.packing import announces_sharing, sharing_note

    plain = space_from_mapping(_space(tmp_path, tmp_path / "cache"), "s.yaml")
    seeded = space_from_mapping(_space(tmp_path, tmp_path / "cache", seeds_per_trial=3), "s.yaml")
    note = sharing_note(plain, on_gpus=False)
    assert note.startswith("trials per process: auto: one trial per process") and "on a CPU" in note
    off = _space(tmp_path, tmp_path / "cache")
    off["resources"] = {"trials_per_process": 1}
    one = space_from_mapping(off, "s.yaml")
    assert not announces_sharing(one) and announces_sharing(plain) and announces_sharing(seeded)
    assert sharing_note(one, on_gpus=True) == "trials per process: one trial per process (resources.trials_per_process: 1)"
    assert "3 seeds train side by side in one process" in sharing_note(seeded, on_gpus=False)
    assert "not yet measured on a GPU" in sharing_note(plain, on_gpus=True)  # auto shares nothing until measured
    data = _space(tmp_path, tmp_path / "cache")
    data["resources"] = {"trials_per_process": 4}
    assert "up to 4 at a time in one process" in sharing_note(space_from_mapping(data, "s.yaml"), on_gpus=False)


def test_a_seed_that_diverges_ends_its_configuration_and_no_other(small_set: Path, tmp_path: Path):
    data = _space(small_set, tmp_path / "cache", seeds_per_trial=2)
    data["search"] = {"algorithm": "grid", "max_concurrent": 2, "seeds_per_trial": 2}
    # l_track is negative (l_sim); a float32-overflowing weight turns the loss into -inf
    data["space"] = {"loss.w_track": {"grid": [0.25, 1e39]}}
    outcome = run_search(space_from_mapping(data, "seeds.yaml"), tmp_path / "trials", num_cpus=2)
    assert not outcome.interrupted
    trials = pq.read_table(outcome.study_dir / "trials.parquet").to_pylist()
    status = {(t["loss.w_track"], t["seed"]): t["status"] for t in trials}
    assert status == {(0.25, 3): "completed", (0.25, 4): "completed",
                      (1e39, 3): "diverged", (1e39, 4): "diverged"}
    bad = [t for t in trials if t["loss.w_track"] == 1e39]
    assert all(t["error"].startswith("seed 3: non-finite loss") for t in bad)
    board = leaderboard(load_study(outcome.study_dir))
    assert board.total_ranked == 1 and [u["status"] for u in board.unranked] == ["diverged"]


@pytest.mark.slow
def test_kill_9_then_resume_continues_every_seed_from_its_checkpoint(small_set: Path, tmp_path: Path,
                                                                       ray_address: str):
    import subprocess
    import sys

    import yaml


    data = _space(small_set, tmp_path / "cache", seeds_per_trial=2)
    data["base"] = {**data["base"], "optim.epochs": 12, "eval.every": 4}  # long enough to be killed
    space = tmp_path / "seeds.yaml"
    space.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "mtsearch", "run", str(space), "--trials-dir", str(tmp_path / "trials"),
           "--address", ray_address, "--quiet"]
    study = tmp_path / "trials" / "seeds"
    kill_9_when(cmd, study, lambda rows: trials_at(rows, 3) >= 1, settle_s=1.0)  # a seed at its third epoch

    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "seed 3: resuming from epoch" in again.stderr and "seed 4: resuming from epoch" in again.stderr, \
        again.stdout + again.stderr
    trials = pq.read_table(study / "trials.parquet").to_pylist()
    assert len(trials) == 4 and all(t["status"] == "completed" and t["epochs_done"] == 12 for t in trials)
    epochs = pq.read_table(study / "epochs.parquet").to_pylist()
    keys = [(r["trial_id"], r["epoch"]) for r in epochs]
    assert len(keys) == len(set(keys)) == 4 * 12
    # a seed interrupted and resumed is the run it would have been without the kill
    seed_row = trials[0]
    alone = fit(config_from_record(json.loads(seed_row["config"])), tmp_path / "alone")
    mine = sorted((r for r in epochs if r["trial_id"] == seed_row["trial_id"]), key=lambda r: r["epoch"])
    assert_same_rows(mine, alone.history, keys=("loss", "loss_cls", "val_hit1", "train_hit1"),
                     rel=1e-5, abs=1e-7, where=seed_row["trial_id"])
