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
    assert "disk: up to" in out and "resources:" in out and "fusion:" in out
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
