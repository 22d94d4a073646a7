"""`mtsearch leaderboard | report | export | plot` on real study folders (Parquet, SQLite, YAML)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import TWO_BY_TWO, write_grid_study, write_search_study

from mtsearch.cli import main
from mtsearch.config import TrialConfig, load_config


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def search_study(tmp_path: Path) -> Path:
    return write_search_study(tmp_path / "trials")


@pytest.fixture
def grid_study(tmp_path: Path) -> Path:
    return write_grid_study(tmp_path / "trials", TWO_BY_TWO)


# ---- leaderboard -------------------------------------------------------------------------------


def test_leaderboard_table(capsys, search_study: Path) -> None:
    code, out, _ = run_cli(capsys, "leaderboard", str(search_study), "--top", "3")
    assert code == 0
    lines = [line for line in out.splitlines() if re.match(r"\s*\d+\s+a\d", line)]  # rank, trial id
    assert len(lines) == 3 and "a2" in lines[0] and "61.0" in lines[0] and "a0" in lines[2]
    assert "7 ranked of 8 trials" in out and "a5 error: RuntimeError: CUDA out of memory" in out


def test_leaderboard_json_csv_md(capsys, search_study: Path) -> None:
    code, out, _ = run_cli(capsys, "leaderboard", str(search_study), "--format", "json")
    parsed = json.loads(out)
    assert code == 0 and [r["trial_id"] for r in parsed["rows"]][:3] == ["a2", "a6", "a0"]
    assert parsed["counts"]["error"] == 1 and parsed["unranked"][0]["trial_id"] == "a5"

    _, out, _ = run_cli(capsys, "leaderboard", str(search_study), "--format", "csv", "--top", "2")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2 and rows[0]["trial_id"] == "a2" and float(rows[0]["val_hit1"]) == 0.59
    assert float(rows[0]["best_val_hit1"]) == 0.61  # the best epoch, a column of its own
    assert float(rows[0]["loss.w_track"]) == 60.0

    _, out, _ = run_cli(capsys, "leaderboard", str(search_study), "--format", "md")
    assert out.splitlines()[2].startswith("| rank | trial_id | status |")
    # a column equal on every row (the seed) is left out of the table and named once under it
    header = out.splitlines()[2]
    same = next(line for line in out.splitlines() if line.startswith("the same on every row:"))
    assert "| seed |" not in header and "seed 0" in same and "test_hit1 (%) none" in same


def test_missing_study_is_one_error_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "trials" / "nope"
    proc = subprocess.run(
        [sys.executable, "-m", "mtsearch", "leaderboard", str(missing)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {missing}: ")


def test_folder_without_trials_parquet(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "report", str(tmp_path / "empty"))
    assert code == 2 and err.startswith(
        f"error: {tmp_path / 'empty' / 'trials.parquet'}: not found"
    )


# ---- report ------------------------------------------------------------------------------------


def test_report_grid_table(capsys, grid_study: Path) -> None:
    code, out, _ = run_cli(capsys, "report", str(grid_study))
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert "cls (ref)" in rows[0] and "45.0 ± 7.1" in rows[0] and "reference" in rows[0]
    assert "cls+track" in rows[1] and "58.0 ± 4.2" in rows[1] and "+13.0 ± 2.8" in rows[1]
    assert "[-12.4, +38.4]" in rows[1] and "no significant" in rows[1]  # the cell wraps its words
    assert "no significant difference: model.branches=cls+track" in " ".join(out.split())
    assert "Against the reference model.branches=cls" in out


def test_report_grid_md_csv_json(capsys, grid_study: Path) -> None:
    _, md, _ = run_cli(capsys, "report", str(grid_study), "--format", "md")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 4 and table[0].startswith(
        "| model.branches | n |"
    )  # header, rule, 2 cells
    _, out, _ = run_cli(capsys, "report", str(grid_study), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["cell"] for r in rows] == ["model.branches=cls", "model.branches=cls+track"]
    assert float(rows[1]["delta_best_mean"]) == pytest.approx(0.13)
    _, out, _ = run_cli(capsys, "report", str(grid_study), "--format", "json")
    assert json.loads(out)["reference"] == "model.branches=cls"


def test_report_search_shows_importances(capsys, search_study: Path) -> None:
    code, out, _ = run_cli(capsys, "report", str(search_study))
    assert code == 0 and "a2" in out
    assert "PED-ANOVA importances over 6 completed trials" in out
    assert "loss.w_track" in out and "loss.w_dir" in out
    _, out, _ = run_cli(capsys, "report", str(search_study), "--format", "json")
    parsed = json.loads(out)
    assert parsed["kind"] == "search"
    assert sum(parsed["importances"]["values"].values()) == pytest.approx(1.0)


# ---- export ------------------------------------------------------------------------------------


def test_export_best_round_trips_through_load_config(capsys, search_study: Path) -> None:
    code, out, _ = run_cli(capsys, "export", str(search_study))
    best = search_study / "best.yaml"
    assert code == 0 and str(best) in out and "trial a2" in out
    cfg = load_config(best)
    import pyarrow.parquet as pq

    stored = {
        r["trial_id"]: r["config"]
        for r in pq.read_table(search_study / "trials.parquet").to_pylist()
    }
    assert cfg == TrialConfig.from_mapping(json.loads(stored["a2"]))
    assert cfg.loss.w_track == 60.0 and cfg.loss.w_dir == 8.0


def test_export_rank_and_out(capsys, search_study: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "configs" / "third.yaml"
    code, _, _ = run_cli(capsys, "export", str(search_study), "--rank", "3", "--out", str(out_file))
    assert code == 0 and load_config(out_file).loss.w_track == 25.0
    code, out, err = run_cli(capsys, "export", str(search_study), "--rank", "8")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--rank: must be between 1 and 7" in err


# ---- plot --------------------------------------------------------------------------------------


def test_plot_prints_the_paths(capsys, grid_study: Path) -> None:
    code, out, _ = run_cli(capsys, "plot", str(grid_study))
    paths = [Path(line) for line in out.splitlines()]
    assert code == 0 and [p.name for p in paths] == ["learning_curves.png", "ablation_bars.png"]
    assert all(p.parent == grid_study / "plots" and p.stat().st_size > 10_000 for p in paths)


def test_a_100_column_leaderboard_never_breaks_an_id_or_a_status(tmp_path: Path) -> None:
    from rich.console import Console
    from test_report import write_search_study

    from mtsearch.cli.results import _print_leaderboard
    from mtsearch.results import report

    trials = [(f"11cd87fb_{i:05d}", status, 10.0 + i, 1.0 + i, 0.5 + i / 100, 3)
              for i, status in enumerate(["completed", "pruned", "completed"])]
    board = report.leaderboard(report.load_study(write_search_study(tmp_path, trials=trials, optuna_db=False)))
    from mtsearch.cli import render

    _, cells, _ = render.drop_constant_columns(*render.leaderboard_cells(board), keep=render.LEADING)
    for width in (80, 100):
        console = Console(width=width, record=True, force_terminal=False)
        _print_leaderboard(console, board)
        text = console.export_text()
        for row, line_cells in zip(board.rows, cells):
            line = next(line for line in text.splitlines() if row["trial_id"] in line)
            assert row["status"] in line, text
            # every number of the row whole on the row's line, none cut off at the edge
            assert all(cell in line for cell in line_cells if cell not in ("–", "0")), (line, line_cells)
        assert max(len(line) for line in text.splitlines()) <= width
