"""Files written by earlier versions (tests/fixtures/eras/, see its README.md) read by this one.

Each era is a commit whose records lack what later code writes: `e0_3d_trunk` (5-D trunk weights
and Adam moments, no preset learning rate, no validation split, no tracking keys), `e1_fast_path`
(2-D trunk, `cuda_graph: false` by default), `e2_preset_lr` (per-preset learning rate) and
`e3_validation` (validation split, no tracking keys). A run resumes with the settings it
recorded (its learning rate, its selection protocol, the thesis's tracking formula); a study's
leaderboard, report and export name the protocol it ran; an interrupted study reopens with them.

The fixtures ran on the built-in synthetic set (`data.root: null`) in a cache that held a small
version of it (6 classes x 5 videos); the tests plant the same small set in a private cache.
Every fixture is copied to tmp_path before use.
"""

from __future__ import annotations

import json
import os
import pickletools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mtsearch.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "eras"
SPACE = FIXTURES / "space.yaml"  # the space file every era's searches ran (study `legacy`)
ERAS = ("e0_3d_trunk", "e1_fast_path", "e2_preset_lr", "e3_validation")
BEFORE_VALIDATION = {"e0_3d_trunk", "e1_fast_path", "e2_preset_lr"}
# optim.lr each era recorded for `tiny`: 2e-4 before the preset learning rates (today's tiny: 1e-3)
RECORDED_LR = {"e0_3d_trunk": 2e-4, "e1_fast_path": 2e-4, "e2_preset_lr": 1e-3, "e3_validation": 1e-3}
# the thesis's tracking formula at `tiny` (track_dim 32), which no era's record names
THESIS_TRACKING = {"loss.sim_weight": 1.0, "track.temperature": 32 ** -0.5, "track.localizer": "conv",
                   "track.target_patch": "encode", "track.center_features": False,
                   "track.patch_select": "uniform", "track.crop_grad": True, "track.projection": "relu"}
# run/ folders are 5.6 MB each (a tiny model's weights and Adam moments): only some eras carry one
RUN_ERAS = tuple(e for e in ERAS if (FIXTURES / e / "run").is_dir())
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's, in state_dict
TEST_NOTE = "selection was made on the test split"



@pytest.fixture(scope="module")
def era_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache whose built-in synthetic set is the small one the fixtures ran on."""
    from mtsearch.data.synthetic import VERSION, write_synthetic

    cache = tmp_path_factory.mktemp("era-cache")
    (cache / "synthetic").mkdir()
    write_synthetic(cache / "synthetic" / f"v{VERSION}-seed0", classes=6, videos_per_class=5, seed=0,
                    workers=1)
    return cache


@pytest.fixture
def in_era_cache(era_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MTSEARCH_CACHE", str(era_cache))
    yield era_cache


def copy_fixture(era: str, part: str, dest: Path) -> Path:
    shutil.copytree(FIXTURES / era / part, dest)
    return dest


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_planted_set_is_the_built_in_one(in_era_cache: Path) -> None:
    from mtsearch.data.synthetic import ensure_synthetic

    root = ensure_synthetic()
    assert root.parent.parent == in_era_cache
    assert len(list(root.glob("*/*.avi"))) == 6 * 5


# ---- finished studies: leaderboard, report, export -----------------------------------------------


@pytest.mark.parametrize("era", ERAS)
def test_leaderboard_and_report_name_the_protocol_the_study_ran(capsys, tmp_path: Path, era: str) -> None:
    study = str(copy_fixture(era, "finished", tmp_path / "legacy"))
    code, out, _ = run_cli(capsys, "leaderboard", study, "--format", "json")
    board = json.loads(out)
    assert code == 0 and board["total_ranked"] == 2 and board["counts"] == {"completed": 2}
    assert all(r["epochs_done"] == 2 and r["val_hit1"] is not None for r in board["rows"])
    old = era in BEFORE_VALIDATION
    assert (board["selection_note"] or "").startswith(TEST_NOTE) is old
    assert all((r["test_hit1"] is None) is old for r in board["rows"])  # no test split before e3

    code, out, _ = run_cli(capsys, "report", study)
    assert code == 0 and "2 ranked of 2 trials" in out and (TEST_NOTE in out) is old


@pytest.mark.parametrize("era", ERAS)
def test_export_writes_a_config_train_accepts(capsys, tmp_path: Path, in_era_cache: Path, era: str) -> None:
    from mtsearch.cli.train import check_runnable, load_config_file

    study = copy_fixture(era, "finished", tmp_path / "legacy")
    code, out, _ = run_cli(capsys, "export", str(study))
    assert code == 0 and "run it with: mtsearch train" in out
    best = study / "best.yaml"
    cfg = load_config_file(best)
    check_runnable(cfg, best)  # what `mtsearch train` checks before it starts
    flat = cfg.to_flat()
    trial = pq.read_table(study / "trials.parquet").to_pylist()
    searched = {r["trial_id"]: r["loss.w_track"] for r in trial}
    assert flat["loss.w_track"] in searched.values()  # the trial's own weight, not a default
    assert flat["optim.lr"] == pytest.approx(RECORDED_LR[era])
    assert {k: flat[k] for k in THESIS_TRACKING} == pytest.approx(THESIS_TRACKING)
    card = (study / "best.md").read_text()
    if era in BEFORE_VALIDATION:
        assert (flat["data.selection"], flat["data.val_fraction"]) == ("test", 0.0)
        assert "on the test split (the thesis's protocol" in card
        assert "test split: not evaluated" in card
    else:
        assert (flat["data.selection"], flat["data.val_fraction"]) == ("val", 0.2)
        assert "on the validation split" in card and "- test split, final weights:" in card
    assert "- classes: 6" in card and "- train videos: 18" in card  # the planted set's fingerprint


# ---- a run folder: `mtsearch train CONFIG --out RUN --epochs 3` adds one epoch ------------------------


@pytest.mark.parametrize("era", RUN_ERAS)
def test_old_run_resumes_one_more_epoch(tmp_path: Path, era_cache: Path, era: str) -> None:
    import torch

    run = copy_fixture(era, "run", tmp_path / "run")
    before = torch.load(run / "checkpoint" / "state.pt", map_location="cpu", weights_only=False)
    cmd = [sys.executable, "-m", "mtsearch", "train", str(run / "config.yaml"), "--out", str(run),
           "--epochs", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MTSEARCH_CACHE": str(era_cache), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from epoch 2" in proc.stdout
    old = era in BEFORE_VALIDATION
    assert ("val Hit@1 is on the test split (data.selection: test)" in proc.stdout) is old

    metrics = pq.read_table(run / "metrics.parquet").to_pylist()
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    assert [r["lr"] for r in metrics] == pytest.approx([RECORDED_LR[era]] * 3)
    assert metrics[-1]["test_hit1"] is not None  # the final weights met the test split

    after = torch.load(run / "checkpoint" / "state.pt", map_location="cpu", weights_only=False)
    assert after["epoch"] == 3 and after["history"][:2] == before["history"]
    config = after["config"]
    assert config["optim"]["lr"] == pytest.approx(RECORDED_LR[era])
    assert config["data"]["selection"] == ("test" if old else "val")
    recorded = {**config["loss"], **config["track"]}
    assert {k: recorded[k.split(".")[1]] for k in THESIS_TRACKING} == pytest.approx(THESIS_TRACKING)
    assert config["loss"]["w_track"] == 25.0  # the thesis default the run recorded (tiny's is 0.25 now)
    # the trunk's weights and their Adam moments are 2-D convolutions' now, whatever the era wrote
    was = before["model"]["trunk.conv1.0.weight"].dim()
    assert was == (5 if era == "e0_3d_trunk" else 4) and after["model"]["trunk.conv1.0.weight"].dim() == 4
    params = [v for k, v in after["model"].items() if not k.endswith(BUFFERS)]  # parameters() order
    state = after["optimizer"]["state"]
    assert [state[i]["exp_avg"].shape for i in sorted(state)] == [p.shape for p in params]


# ---- interrupted studies --------------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
def test_interrupted_study_reopens_with_its_recorded_settings(tmp_path: Path, era: str) -> None:
    """`--resume`'s first step (the study folder and its space) without Ray: new trials keep the
    learning rate, the selection protocol and the tracking formula the study began with (e1 also
    recorded `cuda_graph: false`, then the default: how a trial computes is not the study's identity)."""
    from mtsearch.search import study
    from mtsearch.space import load_space

    copy_fixture(era, "interrupted", tmp_path / "trials" / "legacy")
    spec, study_dir, fd, created, extend_from = study.open_study(load_space(SPACE), tmp_path / "trials", True)
    study.release(fd)
    assert study_dir == tmp_path / "trials" / "legacy" and not created and extend_from is None
    base = spec.base
    assert base.lr == pytest.approx(RECORDED_LR[era])
    if era in BEFORE_VALIDATION:
        assert (base.selection, base.val_fraction) == ("test", 0.0)
    else:
        assert (base.selection, base.val_fraction) == ("val", 0.2)
    assert {k: base.tracking[k] for k in THESIS_TRACKING} == pytest.approx(THESIS_TRACKING)


def _pickled_names(data: bytes) -> set[str]:
    """`module.name` of the globals a pickle refers to (protocol 2-5; strings may be memoized)."""
    names, recent, memo = set(), [], {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            recent.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(arg))
        elif op.name == "MEMOIZE" and recent:
            memo[len(memo)] = recent[-1]
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and recent:
            memo[arg] = recent[-1]
        elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
            names.add(f"{recent[-2]}.{recent[-1]}")
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
    return names


# In a fresh interpreter: what `--resume` does before Tune unpickles its state (the flat layout's
# modules found where they live now, `search.study.accept_moved_modules`), then which names do not resolve.
RESOLVE = """
import importlib, json, sys
from mtsearch.search.study import accept_moved_modules
accept_moved_modules()
missing = []
for name in json.loads(sys.argv[1]):
    module, _, attr = name.rpartition(".")
    try:
        getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        missing.append(name)
print(json.dumps(missing))
"""


@pytest.mark.parametrize("era", (*ERAS, "e7_fuse"))
def test_tune_state_refers_to_names_that_exist(era: str) -> None:
    """Tune restores a study from pickles: every mtsearch name they hold must still import."""
    state = FIXTURES / era / "interrupted" / "tune"
    names = set().union(*(_pickled_names(p.read_bytes()) for p in state.glob("*.pkl")))
    ours = sorted(n for n in names if n.startswith("mtsearch."))
    assert any(n.endswith(".PruneAwareOptunaSearch") for n in ours), ours
    proc = subprocess.run([sys.executable, "-c", RESOLVE, json.dumps(ours)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.slow
def test_interrupted_study_resumes_after_a_move(tmp_path: Path, era_cache: Path, ray_address: str) -> None:
    """The oldest era's interrupted study, copied elsewhere, finishes under `--resume`: its second
    trial reruns once, with the study's learning rate, protocol and tracking formula. Tune's pickled
    state names the flat layout's modules and the folder's old absolute path (the callback's key,
    the Optuna storage's sqlite URL)."""
    import optuna

    study = copy_fixture("e0_3d_trunk", "interrupted", tmp_path / "trials" / "legacy")
    cmd = [sys.executable, "-m", "mtsearch", "run", str(SPACE), "--resume", "--trials-dir",
           str(tmp_path / "trials"), "--address", ray_address, "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MTSEARCH_CACHE": str(era_cache)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {r["trial_id"]: r for r in pq.read_table(study / "trials.parquet").to_pylist()}
    assert len(trials) == 2 and all(r["status"] == "completed" for r in trials.values()), trials
    keys = [(r["trial_id"], r["epoch"]) for r in pq.read_table(study / "epochs.parquet").to_pylist()]
    assert len(keys) == len(set(keys)) == 4
    for row in trials.values():
        config = json.loads(row["config"])
        assert config["optim"]["lr"] == pytest.approx(2e-4)
        assert config["data"].get("selection", "test") == "test"
    ostudy = optuna.load_study(study_name="legacy", storage=f"sqlite:///{study / 'optuna.db'}")
    assert [t.state.name for t in ostudy.trials] == ["COMPLETE", "COMPLETE"]


def test_a_searcher_pickled_before_adoption_existed_still_suggests(tmp_path: Path) -> None:
    """A study interrupted under an earlier version restores a searcher whose pickled state has
    no `adopting` table: it must go on sampling, and adopt nothing."""
    from mtsearch.search.tuning import optuna_searcher
    from mtsearch.space import space_from_mapping

    spec = space_from_mapping({"name": "old", "search": {"algorithm": "random", "num_samples": 2},
                               "space": {"loss.w_track": {"uniform": [1, 40]}}}, "old.yaml", "search")
    searcher = optuna_searcher(spec, tmp_path)
    del searcher.__dict__["adopting"]  # as unpickled from the earlier version's state
    assert searcher.next_adopted() is None
    params = searcher.suggest("0a1b2c3d")
    assert params is not None and 1 <= params["loss.w_track"] <= 40


# ---- e7_fuse: the last era whose space files said `resources.fuse` (now trials_per_process) ----------

E7 = FIXTURES / "e7_fuse"  # 2 trials of one shape trained side by side in one process (fuse: 2)


def _renamed_space(tmp_path: Path) -> Path:
    """The space file e7 ran, as a user writes it today."""
    path = tmp_path / "space.yaml"
    path.write_text((E7 / "space.yaml").read_text().replace("fuse: 2", "trials_per_process: 2"))
    return path


def test_a_study_recorded_with_fuse_reads_as_trials_per_process(capsys, tmp_path: Path,
                                                                 in_era_cache: Path) -> None:
    from mtsearch.cli.train import check_runnable, load_config_file
    from mtsearch.space import load_study_space

    study = copy_fixture("e7_fuse", "finished", tmp_path / "legacy")
    recorded = (study / "space.yaml").read_text()
    assert "record_version: 7" in recorded and "fuse: 2" in recorded  # as era 7 wrote it
    assert load_study_space(study).resources.trials_per_process == 2
    assert {r["fuse_k"] for r in pq.read_table(study / "trials.parquet").to_pylist()} == {2}
    code, out, _ = run_cli(capsys, "leaderboard", str(study), "--format", "json")
    board = json.loads(out)
    assert code == 0 and board["total_ranked"] == 2 and board["counts"] == {"completed": 2}
    code, out, _ = run_cli(capsys, "report", str(study))
    assert code == 0 and "2 ranked of 2 trials" in out
    code, out, _ = run_cli(capsys, "export", str(study))
    assert code == 0 and "run it with: mtsearch train" in out
    check_runnable(load_config_file(study / "best.yaml"), study / "best.yaml")


def test_an_interrupted_fuse_study_reopens_under_the_new_name(tmp_path: Path) -> None:
    """The space file of era 7 is refused with the new key's name; renamed, it reopens the study
    that recorded `fuse` (the study's identity is its space, not how its trials share processes)."""
    from mtsearch.errors import InvalidInput
    from mtsearch.search import study
    from mtsearch.space import load_space

    with pytest.raises(InvalidInput, match=r"resources\.fuse: is now called resources\.trials_per_process"):
        load_space(E7 / "space.yaml")
    # the study's own space.yaml, given back as a space file, is the record it is (version 7)
    assert load_space(E7 / "interrupted" / "space.yaml").resources.trials_per_process == 2
    copy_fixture("e7_fuse", "interrupted", tmp_path / "trials" / "legacy")
    spec, study_dir, fd, created, extend_from = study.open_study(load_space(_renamed_space(tmp_path)),
                                                                 tmp_path / "trials", True)
    study.release(fd)
    assert not created and extend_from is None and spec.resources.trials_per_process == 2


@pytest.mark.slow
def test_an_interrupted_fuse_study_resumes_to_the_end(tmp_path: Path, era_cache: Path, ray_address: str) -> None:
    """Both trials were running side by side when era 7's driver stopped (no checkpoint yet): under
    `--resume` with the renamed key they train again, two to a process, and finish."""
    study = copy_fixture("e7_fuse", "interrupted", tmp_path / "trials" / "legacy")
    cmd = [sys.executable, "-m", "mtsearch", "run", str(_renamed_space(tmp_path)), "--resume", "--trials-dir",
           str(tmp_path / "trials"), "--address", ray_address, "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MTSEARCH_CACHE": str(era_cache)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = pq.read_table(study / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(r["status"] == "completed" and r["fuse_k"] == 2 for r in trials), trials
    keys = [(r["trial_id"], r["epoch"]) for r in pq.read_table(study / "epochs.parquet").to_pylist()]
    assert len(keys) == len(set(keys)) == 4
