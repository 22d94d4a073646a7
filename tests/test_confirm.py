"""`mtsearch confirm`: racing the top configurations over seeds, with real Ray and Parquet.

The stand-in trainer's final val_hit1 is a known function of the configuration (best at
w_track = 20) plus a seed-dependent wobble, so the race's outcome is known in advance.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtsearch.errors import InvalidInput
from mtsearch.results.ablation import ablation
from mtsearch.results.report import Study, leaderboard, load_study
from mtsearch.results.stats import holm, lattice_step, paired_p_two_sided, summarize
from mtsearch.search.confirm import SEED_BASE, Contender, Race, eliminate, race, read_scores
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
    return run_search(spec, tmp_path / "trials", address=address, trainer=fit).study_dir


def test_racing_drops_clearly_worse_configurations_early(tmp_path: Path, ray_address: str):
    logs = tmp_path / "logs"
    logs.mkdir()
    fit = make_fit(logs, wobble=0.01)
    parent = _parent(tmp_path, ray_address, fit)
    said: list[str] = []
    result = race(parent, top=3, seeds=5, alpha=0.05, first_test=3, log=said.append, address=ray_address,
                  trainer=fit)
    assert not result.interrupted
    leader = result.leader()
    assert leader.values == {"loss.w_track": 20.0} and leader.rank == 1
    # no drop before the first test (seed 3 here); both worse ones go at the first look that
    # clears alpha over 4 looks and 3 pairs: 3 rounds, 9 runs
    assert sorted(c.dropped_after for c in result.contenders if c is not leader) == [3, 3]
    seeds = [SEED_BASE, SEED_BASE + 1, SEED_BASE + 2]
    assert [r for r in _runs(logs) if r[1] >= SEED_BASE] == sorted((w, s) for w in (10.0, 20.0, 40.0)
                                                                  for s in seeds)
    assert any("dropped, #1 scores better (racing decision, adjusted p = " in line for line in said)
    assert result.verdict().startswith("config #1 scores higher than #")
    assert " points, adjusted for the race's pairs and looks (this pair at " in result.verdict()
    assert result.verdict().endswith("%), n = 3)")
    # the child study is an ordinary grid study: report and leaderboard read it
    child = load_study(parent / "confirm")
    report = ablation(child)
    assert {c.n for c in report.cells} == {3}
    assert leaderboard(child).total_ranked == 9
    _check_export(parent)
    # resuming a finished race replays its decisions and runs nothing
    again = race(parent, top=3, seeds=5, first_test=3, resume=True, address=ray_address, trainer=fit)
    assert [c.dropped_after for c in again.contenders] == [c.dropped_after for c in result.contenders]
    assert len(_runs(logs)) == 12


def _check_export(parent: Path) -> None:
    """`export` writes best.yaml and the card; `--from-confirm` exports the race's winner."""
    def export(*extra: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "mtsearch", "export", str(parent), *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return (parent / "best.md").read_text()

    card = export()
    for part in ("Selected by the final val_hit1 (last evaluated epoch) of rank 1", "| `loss.w_track` | 20.0 | 25.0 |",
                 "- best epoch: 80.", "% at epoch 2", "over 3 fresh seeds", "## Learning curve",
                 "| 1 | 1.000 | ", "- mtsearch: ", "- torch: ", "- index sha256: ", "## Reproduce",
                 f"mtsearch train {parent / 'best.yaml'}"):
        assert part in card, part
    card = export("--from-confirm")
    assert "`mtsearch confirm` on" in card and "search rank #1 won" in card
    assert " seed-runs spent): search rank #1 won" in card
    saved = json.loads((parent / "confirm" / "race.json").read_text())
    assert (saved["seed_runs"], saved["seed_runs_max"]) == (9, 3 * 5)  # dropped after 3 of 5 seeds
    exported = yaml.safe_load((parent / "best.yaml").read_text())
    assert exported["seed"] == SEED_BASE and exported["loss"]["w_track"] == 20.0


def test_a_close_race_spends_every_seed_and_says_so(tmp_path: Path, ray_address: str):
    logs = tmp_path / "logs"
    logs.mkdir()
    fit = make_fit(logs, wobble=0.4)  # the wobble drowns the 0.3 gap
    parent = _parent(tmp_path, ray_address, fit)
    said: list[str] = []
    result = race(parent, top=2, seeds=3, first_test=3, log=said.append, address=ray_address, trainer=fit)
    assert all(len(c.scores) == 3 for c in result.contenders)
    assert said[0].startswith("a fixed-n comparison: --seeds 3 = --first-test, so the race tests once"), said
    verdict = result.verdict()
    assert verdict.startswith("no significant difference between #1 and #2 (95% CI "), verdict
    assert "adjusted for the race's pairs and looks (this pair at 95%), n = 3; racing decision" in verdict
    assert result.seed_runs() == 6
    with pytest.raises(InvalidInput, match="already exists; add --resume"):
        race(parent, top=2, seeds=3, first_test=3, address=ray_address, trainer=fit)
    with pytest.raises(InvalidInput, match="below --first-test 5: the race would never test"):
        race(parent, top=2, seeds=3, address=ray_address, trainer=fit)


def test_the_test_and_its_correction():
    assert paired_p_two_sided([0.3]) is None
    assert paired_p_two_sided([0.29, 0.31, 0.3]) < 0.002
    assert paired_p_two_sided([-0.1, 0.1]) == pytest.approx(1.0)
    assert paired_p_two_sided([0.1, 0.3]) == pytest.approx(2 * 0.1475836, abs=1e-6)  # t = 2, df = 1
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == {"a": 0.03, "c": 0.06, "b": 0.06}


def _race(scores: dict[int, list[float | None]], first_test: int = 2, mode: str = "max") -> Race:
    contenders = [Contender(rank=r, trial_id=str(r), values={"loss.w_track": float(r)},
                            scores={SEED_BASE + i: v for i, v in enumerate(vs)}) for r, vs in scores.items()]
    seeds = len(next(iter(scores.values())))
    return Race(Path("."), "val_hit1", mode, [SEED_BASE + i for i in range(seeds)], contenders,
                first_test=first_test)


def test_equal_differences_of_a_stepped_metric_are_not_certainty():
    """Hit@1 on 50 videos moves by 0.02: #1 one video ahead on both seeds is no proof (the old
    one-sided test gave p = 0 and dropped #2)."""
    assert paired_p_two_sided([0.02, 0.02]) == 1.0  # no spread, no known step: no evidence
    assert lattice_step([0.5, 0.52, 0.5, 0.54]) == pytest.approx(0.02)
    race_ = _race({1: [0.52, 0.54], 2: [0.50, 0.52]})
    assert eliminate(race_, 0.05, 2) == []
    assert race_.verdict().startswith("no significant difference between #1 and #2 (95% CI")


def test_no_drop_before_the_first_test_and_alpha_spent_over_the_looks():
    clear = {1: [0.80, 0.81, 0.79, 0.80, 0.82, 0.81], 2: [0.40, 0.42, 0.41, 0.39, 0.40, 0.41]}
    early = _race({k: v[:4] for k, v in clear.items()}, first_test=5)
    assert eliminate(early, 0.05, 4) == []  # 4 seeds run, the first test is at 5
    late = _race(clear, first_test=5)
    dropped = eliminate(late, 0.05, 5)
    assert [c.rank for c in dropped] == [2] and dropped[0].dropped_after == 5
    # two looks (seeds 5 and 6) share alpha: the racing p is twice the pair's own
    diffs = [a - b for a, b in zip(clear[1], clear[2])]
    floor = 0.01 / 6 ** 0.5
    assert dropped[0].p_adjusted == pytest.approx(2 * paired_p_two_sided(diffs, floor))
    verdict = late.verdict()
    assert verdict.startswith("config #1 scores higher than #2: the race dropped #2 after 5 seeds "
                              "(racing decision, adjusted p = "), verdict


def test_the_leader_is_chosen_on_the_seeds_every_contender_ran():
    """#2 lacks the seed on which #1 scored lowest: unpaired means would make #2 the leader."""
    race_ = _race({1: [0.30, 0.70, 0.72], 2: [None, 0.68, 0.70]})
    race_.contenders[1].scores.pop(SEED_BASE)
    assert race_.leader().rank == 1


def _child(trials: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]]) -> Study:
    spec = space_from_mapping({"name": "confirm", "base": {"optim.epochs": 2},
                               "grid": {"loss.w_track,seed": [[1.0, SEED_BASE], [2.0, SEED_BASE]]}},
                              "c.yaml", "ablation")
    return Study(Path("."), spec, trials, epochs, ["loss.w_track", "seed"])


def test_a_failed_run_scores_the_worst_value_and_is_named():
    """A diverged run once counted its partial curve (here 0.9, the best seen): now it scores 0,
    the worst Hit@1, and its configuration cannot lead on it."""
    race_ = _race({1: [None], 2: [None]}, first_test=2)
    for c in race_.contenders:
        c.scores.clear()
    spec = _child([], {}).space
    trials = [{"trial_id": "a", "cell": spec.cell_of({"loss.w_track": 1.0}), "status": "diverged",
               "seed": SEED_BASE, "test_hit1": 0.9},
              {"trial_id": "b", "cell": spec.cell_of({"loss.w_track": 2.0}), "status": "completed",
               "seed": SEED_BASE, "test_hit1": 0.6}]
    epochs = {"a": [{"epoch": 1, "val_hit1": 0.9}], "b": [{"epoch": 2, "val_hit1": 0.6}]}
    read_scores(race_, _child(trials, epochs), spec, [SEED_BASE])
    first, second = race_.contenders
    assert first.scores == {SEED_BASE: 0.0} and first.failed == {SEED_BASE}
    assert first.tests == {SEED_BASE: None}  # a failed run's test figure is not the winner's
    assert second.scores == {SEED_BASE: 0.6} and not second.failed
    assert race_.leader().rank == 2


def test_the_test_line_quotes_the_counterpart_of_the_raced_metric():
    race_ = _race({1: [0.5, 0.6], 2: [0.4, 0.5]})
    race_.metric = "val_hit5"
    race_.contenders[0].tests = {SEED_BASE: 0.7, SEED_BASE + 1: 0.8}
    assert race_.test_metric == "test_hit5"
    assert "(test_hit5, final weights, never raced on), #1 scores 75.0%" in race_.test_line()


def _hit1_race(rng: random.Random, k: int, seeds: int, gap: float) -> dict[int, list[float]]:
    """Hit@1 on 50 videos: a shared seed effect, each configuration's own noise, #1 ahead by `gap`."""
    shared = [rng.gauss(0.0, 0.04) for _ in range(seeds)]
    return {r: [min(1.0, max(0.0, round((0.6 + shared[i] + rng.gauss(0.0, 0.04) - (gap if r > 1 else 0.0))
                                        * 50) / 50)) for i in range(seeds)] for r in range(1, k + 1)}


def _drop_p(scores: dict[int, list[float]], failed: dict[int, set[int]],
            first_test: int) -> tuple[bool, float | None]:
    race_ = _race(scores, first_test=first_test)
    for c in race_.contenders:
        c.failed = {SEED_BASE + i for i in failed.get(c.rank, set())}
        for seed in c.failed:
            c.scores[seed] = 0.0  # as read_scores stores a failure: the worst Hit@1
    if race_.leader().rank == 2:
        return False, None  # #2 leads: it is not tested
    eliminate(race_, 0.05, len(race_.seeds))
    second = race_.contenders[1]
    return second.dropped_after is not None, second.p_adjusted


def test_a_failed_seed_never_makes_its_configuration_harder_to_drop():
    """The same race with and without one failed run of #2 (its seed's score lost), over many
    random races: #2's racing p is never higher with the failure, so it is never less likely to be
    dropped. Scoring the failure as the worst value broke this: the spread it added hid a real gap."""
    rng = random.Random(7)
    compared = worse = 0
    for draw in range(1500):
        k, seeds = rng.choice([2, 3]), rng.choice([5, 6, 8])
        scores = _hit1_race(rng, k, seeds, gap=rng.choice([0.0, 0.02, 0.04, 0.08]))
        lost = rng.randrange(seeds)
        failed = {2: {lost}} if rng.random() < 0.7 else {2: {lost}, 1: {rng.randrange(seeds)}}
        base_failed = {r: f - {lost} if r == 2 else f for r, f in failed.items()}
        (dropped_before, without), (dropped_after, with_failure) = (
            _drop_p(scores, base_failed, 5), _drop_p(scores, failed, 5))
        assert dropped_after or not dropped_before, (draw, scores, failed)
        if without is None or with_failure is None:
            continue  # #2 led the race without the failure: it was not tested
        compared += 1
        assert with_failure <= without + 1e-12, (draw, scores, failed, without, with_failure)
        worse += with_failure < without - 1e-9
    assert compared > 1000 and worse > compared // 2


def test_the_verdict_quotes_the_interval_its_decision_used():
    """Three configurations, #2 a little behind: the plain paired 95% CI excludes zero, yet the
    race (Holm over 3 pairs) keeps #2; the verdict's interval, at the adjusted level, holds zero."""
    scores = {1: [0.62, 0.60, 0.66, 0.58, 0.64], 2: [0.58, 0.60, 0.60, 0.56, 0.60],
              3: [0.40, 0.42, 0.38, 0.40, 0.44]}
    race_ = _race(scores, first_test=5)
    plain = summarize(a - b for a, b in zip(scores[1], scores[2]))
    assert plain.low > 0  # the unadjusted interval alone would read as a difference
    dropped = eliminate(race_, 0.05, 5)
    assert [c.rank for c in dropped] == [3]
    low, high, level = race_.decision_interval(race_.contenders[1])
    assert low < 0 < high and level > 0.95
    verdict = race_.verdict()
    assert verdict.startswith("no significant difference between #1 and #2 (95% CI "), verdict
    assert f"{low * 100:+.1f} to {high * 100:+.1f} points, adjusted for the race's pairs and looks" in verdict
    # and where the race drops, the same interval excludes zero
    low3, high3, _ = race_.decision_interval(race_.contenders[2])
    assert low3 > 0
