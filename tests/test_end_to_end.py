"""The whole flow through the command line with the real trainer, Ray, Optuna and Parquet:
`ablate` a small grid -> `report` -> `export` the best trial -> `train` reproduces its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from figures import assert_same_rows

GRID = """\
name: e2e
base:
  data.root: {root}
  data.crop: 48
  data.clip_frames: 7
  track.frame_gap: 2
  model.preset: tiny
  optim.lr: 1.0e-3
  optim.epochs: 2
  eval.every: 1
  device: cpu
metric: val_hit1
mode: max
search: {{max_concurrent: 2}}
resources: {{cpus_per_trial: 1}}
grid:
  model.branches: [[cls], [cls, dir]]
repeats: 2
reference: {{model.branches: [cls]}}
"""

METRICS = ("loss", "loss_cls", "loss_dir", "train_hit1", "val_hit1", "val_hit5", "dir_acc", "lr")


def mtsearch(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtsearch", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


@pytest.mark.slow
def test_grid_report_export_train_round_trip(tmp_path: Path) -> None:
    from mtsearch.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "data", classes=3, videos_per_class=5, seed=1, workers=1)
    damaged = sorted(root.glob("*/*.avi"))[0]
    damaged.write_bytes(b"\x00garbage" * 100)  # every trial skips it; the driver warns once
    env = {"MTSEARCH_CACHE": str(tmp_path / "cache")}
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.format(root=root))
    trials_dir = tmp_path / "trials"

    run = mtsearch("ablate", str(grid), "--trials-dir", str(trials_dir), "--quiet", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 1 and damaged.name in warnings[0], run.stderr
    study = trials_dir / "e2e"
    trials = pq.read_table(study / "trials.parquet").to_pylist()
    assert len(trials) == 4 and {t["status"] for t in trials} == {"completed"}
    assert sorted((t["cell"], t["seed"]) for t in trials) == [
        ("model.branches=cls", 0), ("model.branches=cls", 1),
        ("model.branches=cls+dir", 0), ("model.branches=cls+dir", 1),
    ]

    report = mtsearch("report", str(study), "--format", "json", env=env)
    assert report.returncode == 0, report.stderr
    cells = json.loads(report.stdout)["cells"]
    assert len(cells) == 2 and all(cell["n"] == 2 for cell in cells)
    text = mtsearch("report", str(study), env=env)
    assert text.returncode == 0 and "model.branches=cls+dir" in text.stdout

    best = tmp_path / "best.yaml"
    export = mtsearch("export", str(study), "--out", str(best), env=env)
    assert export.returncode == 0, export.stderr
    trial_id = export.stdout.split("trial ")[1].split(",")[0]
    expected = [r for r in pq.read_table(study / "epochs.parquet").to_pylist() if r["trial_id"] == trial_id]
    assert [r["epoch"] for r in expected] == [1, 2]

    train = mtsearch("train", str(best), "--out", str(tmp_path / "rerun"), env=env)
    assert train.returncode == 0, train.stdout + train.stderr
    got = pq.read_table(tmp_path / "rerun" / "metrics.parquet").to_pylist()
    assert len(got) == 2
    assert_same_rows(got, expected, keys=METRICS, rel=1e-4, abs=1e-6, where="export then train")
