"""`mtsearch model`: the Table 3.1-like summary, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mtsearch", "model", *args]
    return subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )


def test_thesis_table_shows_trunk_and_head_shapes() -> None:
    start = time.monotonic()
    result = run_cli("--preset", "thesis")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1024×13×30×30" in out and "2048×4×8×8" in out
    assert "64×13×120×120" in out and "1024×7×15×15" in out
    assert "69,394,552" in out  # total parameters, cls + track + dir with 51 classes
    assert "1×7×7, 64, stride 1,2,2" in out
    assert elapsed < 30  # meta-device counting, no real forward of the thesis network


def test_branches_and_classes_change_the_table() -> None:
    result = run_cli("--preset", "tiny", "--branches", "cls", "--num-classes", "10")
    assert result.returncode == 0, result.stderr
    assert "cls conv5_x" in result.stdout
    assert "track" not in result.stdout and "dir conv5_x" not in result.stdout


def test_config_file_supplies_preset_and_branches(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model:\n  preset: tiny\n  branches: [cls, track]\ndata:\n  crop: 112\ntrack:\n  patch: 40\n"
    )
    result = run_cli("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "tiny preset" in result.stdout and "3×13×112×112" in result.stdout
    assert "128×13×14×14" in result.stdout  # 112 / 8 = 14
    assert "40×40 crop" in result.stdout and "dir conv5_x" not in result.stdout


def test_bad_preset_is_one_error_line_exit_2() -> None:
    result = run_cli("--preset", "huge")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--preset" in lines[0]
    assert "huge" in lines[0] and result.stdout == ""


def test_bad_branches_are_one_error_line_exit_2() -> None:
    for branches in ("cls,foo", "track,dir"):
        result = run_cli("--branches", branches)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--branches" in lines[0]


def test_plain_mtsearch_is_a_usage_error_and_ablate_takes_no_num_samples() -> None:
    import subprocess
    import sys

    plain = subprocess.run([sys.executable, "-m", "mtsearch"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and "usage: mtsearch" in plain.stdout + plain.stderr
    ablate = subprocess.run([sys.executable, "-m", "mtsearch", "ablate", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert ablate.returncode == 0 and "--num-samples" not in ablate.stdout and "--repeats" in ablate.stdout
