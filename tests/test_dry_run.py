"""`run --dry-run` checks and prints a study without training or writing anything; space.yaml
holds the defaults a study resolves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path):
    env = {**os.environ, "MTSEARCH_CACHE": str(tmp_path / "cache")}  # the built-in set is not built
    before = _files(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mtsearch", "run", str(REPO / "spaces" / "full.yaml"),
                           "--dry-run", "--trials-dir", str(tmp_path / "trials")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path) == before  # no study folder, no cache, no built-in set
    out = done.stdout
    assert "24 sampled trials (tpe)" in out
    assert "network shapes: 4:" in out and "tiny b4 cls (" in out
    assert "disk: up to" in out and "resources:" in out and "trials per process: auto: one trial per process" in out
    resolved = yaml.safe_load(out.split("\n\n")[0].split("\n", 1)[1])
    assert resolved["base"]["data"]["crop"] == 96 and resolved["base"]["optim"]["lr"] == 0.001
    assert resolved["base"]["loss"]["w_track"] is None  # searched: each trial's own


def test_dry_run_refuses_what_a_run_refuses(tmp_path: Path):
    space = tmp_path / "bad.yaml"
    space.write_text("name: bad\nspace:\n  loss.w_trak: {loguniform: [1, 10]}\n")
    done = subprocess.run([sys.executable, "-m", "mtsearch", "run", str(space), "--dry-run"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "loss.w_track" in done.stderr
    assert not (tmp_path / "trials").exists()


def test_space_yaml_fills_the_defaults_no_searched_key_changes():
    from mtsearch.space import space_from_mapping

    spec = space_from_mapping({"name": "s", "base": {"model.preset": "tiny"},
                               "space": {"loss.w_dir": {"loguniform": [1, 10]}}}, "s.yaml")
    base = spec.to_dict()["base"]
    assert base["data"]["crop"] == 96 and base["track"]["patch"] == 32 and base["optim"]["lr"] == 1e-3
    assert base["loss"]["w_track"] == 0.25 and base["data"]["val_fraction"] == 0.2
    assert base["threads"] is None  # each trial's, from cpus_per_trial
    searched = space_from_mapping({"name": "s", "space": {"model.preset": {"choice": ["tiny", "small"]}}},
                                  "s.yaml")
    assert searched.to_dict()["base"]["data"]["crop"] is None  # the preset decides, per trial
    # the written file reads back to the same study
    again = space_from_mapping(yaml.safe_load(spec.to_yaml()), "space.yaml")
    assert again.identity() == spec.identity()


def test_dry_run_prints_the_frame_cache_each_setting_needs(tmp_path: Path, small_set: Path):
    space = tmp_path / "fps.yaml"
    space.write_text(yaml.safe_dump({
        "name": "fps", "base": {"model.preset": "tiny", "data.dataset": "synthetic", "data.root": str(small_set),
                                "data.cache_dir": str(tmp_path / "cache")},
        "search": {"num_samples": 2}, "space": {"data.fps": {"choice": [15, 30]}}}))
    before = _files(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mtsearch", "run", str(space), "--dry-run",
                           "--trials-dir", str(tmp_path / "trials")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path) == before  # estimated from headers and a few frames: nothing written
    lines = [line for line in done.stdout.splitlines() if line.startswith("frame cache at")]
    assert [line.split(":")[0] for line in lines] == ["frame cache at 15 fps, short side 102, jpeg q90",
                                                      "frame cache at 30 fps, short side 102, jpeg q90"]
    assert all(" for 20 videos (0 B cached); " in line and f"free on {tmp_path / 'cache' / 'frames'}" in line
               for line in lines), lines
