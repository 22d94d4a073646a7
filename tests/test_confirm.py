"""`mtsearch confirm` (issue 11): racing the top configurations over seeds, with real Ray and Parquet.

The stand-in trainer's final val_hit1 is a known function of the configuration (best at
w_track = 20) plus a seed-dependent wobble, so the race's outcome is known in advance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtsearch.errors import InvalidInput
from mtsearch.results.ablation import ablation
from mtsearch.results.report import leaderboard, load_study
from mtsearch.results.stats import holm, paired_p_greater
from mtsearch.search.confirm import SEED_BASE, race
from mtsearch.search.driver import run_search
from mtsearch.space import space_from_mapping


def make_fit(log_dir: Path, wobble: float) -> Callable[..., Any]:
    """val_hit1 at the last epoch = 0.8 at w_track 20, 0.3 lower at 10 and 40, +- `wobble` by
    seed and configuration (noise that pairing by seed cannot cancel)."""
    log_dir = str(log_dir)

    def fake_fit(cfg: Any, out_dir: Any, *, on_epoch: Any, resume: bool, log: Any) -> Any:
        import json as _json
        import time as _time
        from pathlib import Path as _Path
        from types import SimpleNamespace

        ckpt = _Path(out_dir) / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        level = 0.8 if cfg.loss.w_track == 20 else 0.5
        final = level + wobble * ((((cfg.seed * 31 + int(cfg.loss.w_track)) ** 2 * 7919) % 13) - 6) / 6
        for epoch in range(1, cfg.optim.epochs + 1):
            on_epoch({"epoch": epoch, "loss": 1.0, "loss_cls": 1.0, "loss_track": None, "loss_dir": None,
                      "train_hit1": 0.5, "val_hit1": final * epoch / cfg.optim.epochs, "val_hit5": 1.0,
                      "dir_acc": None, "lr": 1e-3, "epoch_s": 0.01, "clips_per_s": 1.0}, ckpt)
        record = {"w": cfg.loss.w_track, "seed": cfg.seed}
        (_Path(log_dir) / f"{_time.time_ns()}.json").write_text(_json.dumps(record))
        return SimpleNamespace(status="completed", error=None)

    return fake_fit


def _runs(log_dir: Path) -> list[tuple[float, int]]:
    return sorted((r["w"], r["seed"]) for r in (json.loads(p.read_text()) for p in log_dir.glob("*.json")))


def _parent(tmp_path: Path, address: str, fit: Callable[..., Any]) -> Path:
    spec = space_from_mapping({"name": "weights", "base": {"optim.epochs": 2, "eval.every": 1},
                               "grid": {"loss.w_track": [10, 20, 40]}}, "weights.yaml", "ablation")
    return run_search(spec, tmp_path / "trials", address=address, trainable_fn=fit).study_dir


def test_racing_drops_clearly_worse_configurations_early(tmp_path: Path, ray_address: str):
    logs = tmp_path / "logs"
    logs.mkdir()
    fit = make_fit(logs, wobble=0.01)
    parent = _parent(tmp_path, ray_address, fit)
    said: list[str] = []
    result = race(parent, top=3, seeds=5, alpha=0.05, log=said.append, address=ray_address,
                  trainable_fn=fit)
    assert not result.interrupted
    leader = result.leader()
    assert leader.values == {"loss.w_track": 20.0} and leader.rank == 1
    # both worse ones go after 2 seeds (the first moment a paired test exists): 2 rounds, 6 runs
    assert sorted(c.dropped_after for c in result.contenders if c is not leader) == [2, 2]
    seeds = [SEED_BASE, SEED_BASE + 1]
    assert [r for r in _runs(logs) if r[1] >= SEED_BASE] == sorted((w, s) for w in (10.0, 20.0, 40.0)
                                                                  for s in seeds)
    assert any("dropped (worse than #1" in line for line in said)
    assert result.verdict().startswith("config #1 is better than #")
    assert "points (95% CI" in result.verdict()
    # the child study is an ordinary grid study: report and leaderboard read it
    child = load_study(parent / "confirm")
    report = ablation(child)
    assert {c.n for c in report.cells} == {2}
    assert leaderboard(child).total_ranked == 6
    _check_export(parent)
    # resuming a finished race replays its decisions and runs nothing
    again = race(parent, top=3, seeds=5, resume=True, address=ray_address, trainable_fn=fit)
    assert [c.dropped_after for c in again.contenders] == [c.dropped_after for c in result.contenders]
    assert len(_runs(logs)) == 9


def _check_export(parent: Path) -> None:
    """`export` writes best.yaml and the card; `--from-confirm` exports the race's winner."""
    def export(*extra: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "mtsearch", "export", str(parent), *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return (parent / "best.md").read_text()

    card = export()
    for part in ("Selected by the best val_hit1 over epochs of rank 1", "| `loss.w_track` | 20.0 | 25.0 |",
                 "- best epoch: 80.", "% at epoch 2", "over 2 fresh seeds", "## Learning curve",
                 "| 1 | 1 | ", "- mtsearch: ", "- torch: ", "- index sha256: ", "## Reproduce",
                 f"mtsearch train {parent / 'best.yaml'}"):
        assert part in card, part
    card = export("--from-confirm")
    assert "`mtsearch confirm` on" in card and "search rank #1 won" in card
    exported = yaml.safe_load((parent / "best.yaml").read_text())
    assert exported["seed"] == SEED_BASE and exported["loss"]["w_track"] == 20.0


def test_a_close_race_spends_every_seed_and_says_so(tmp_path: Path, ray_address: str):
    logs = tmp_path / "logs"
    logs.mkdir()
    fit = make_fit(logs, wobble=0.4)  # the wobble drowns the 0.3 gap
    parent = _parent(tmp_path, ray_address, fit)
    result = race(parent, top=2, seeds=3, address=ray_address, trainable_fn=fit)
    assert all(len(c.scores) == 3 for c in result.contenders)
    assert "indistinguishable at n = 3" in result.verdict()
    with pytest.raises(InvalidInput, match="already exists; add --resume"):
        race(parent, top=2, seeds=3, address=ray_address, trainable_fn=fit)


def test_the_test_and_its_correction():
    assert paired_p_greater([0.3]) is None
    assert paired_p_greater([0.29, 0.31, 0.3]) < 0.001
    assert paired_p_greater([-0.1, 0.1]) == pytest.approx(0.5)
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == {"a": 0.03, "c": 0.06, "b": 0.06}
