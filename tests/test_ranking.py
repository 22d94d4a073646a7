"""One ranking rule for the live display and `mtsearch leaderboard` (issue 9)."""

from __future__ import annotations

from pathlib import Path

from test_report import write_search_study

from mtsearch.cli.run import _ranked
from mtsearch.results.report import leaderboard, load_study
from mtsearch.results.store import is_ranked
from mtsearch.search.driver import SearchProgress


def test_failed_trials_never_rank_whatever_their_score() -> None:
    assert is_ranked("completed", 0.5) and is_ranked("pruned", 0.1) and is_ranked("running", 0.2)
    assert not is_ranked("diverged", 0.9) and not is_ranked("error", 0.9)
    assert not is_ranked("completed", None)


def test_live_display_and_leaderboard_rank_the_same_trials(tmp_path: Path) -> None:
    trials = [
        ("t1", "completed", 2.0, 1.0, 0.50, 4),
        ("t2", "diverged", 3.0, 1.0, 0.90, 2),  # a good score before its loss went NaN
        ("t3", "pruned", 4.0, 1.0, 0.30, 1),
        ("t4", "error", 5.0, 1.0, 0.95, 1),
    ]
    study_dir = write_search_study(tmp_path, optuna_db=False, trials=trials)
    board = leaderboard(load_study(study_dir))
    rows = [
        {"trial_id": tid, "status": status, "score": best}
        for tid, status, _, _, best, _ in trials
    ]
    progress = SearchProgress(
        name="weights", study_dir=study_dir, metric="val_hit1", mode="max", total=4,
        searched_keys=[], counts={}, rows=rows, started=0.0, resumed=False, done_at_start=0,
    )
    live = [r["trial_id"] for r in _ranked(progress)]
    assert live == ["t1", "t3"]
    assert [r["trial_id"] for r in board.rows] == live
