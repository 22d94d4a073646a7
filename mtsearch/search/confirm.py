"""`mtsearch confirm`: race a study's top configurations over fresh seeds.

A search trains each configuration once, with one seed, so the top of its leaderboard is partly
luck. Racing (F-Race, irace's elitist racing) spends seeds only where the decision is still open:
the top K configurations are trained in full, with no early stopping, one seed per round; after
each round a configuration is dropped when a paired one-sided t-test over the seeds run so far
says it is worse than the current leader at level alpha, Holm-corrected over the comparisons of
that round. The race stops when one configuration remains or every seed is spent.

Seeds are fresh (1000, 1001, ...), so the seed that made a configuration look good in the search
is not counted again. Each configuration is scored by its final evaluated epoch (a full run, as a
user would report it), not by its best epoch. The runs form a child study `trials/NAME/confirm/`:
a grid over (configuration, seed) pairs in the same Parquet schema, so `leaderboard`, `report`
and `plot` read it, and `--resume` continues it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsearch.config import branches_label
from mtsearch.errors import InvalidInput
from mtsearch.files import check_output_dir, write_atomic
from mtsearch.metrics import direction, display_scale
from mtsearch.results.report import Study, final_score, leaderboard, load_study, trial_config
from mtsearch.results.stats import Interval, holm, paired_differences, paired_p_greater, summarize
from mtsearch.space import SpaceSpec, space_from_mapping

CONFIRM_DIR = "confirm"
RACE_FILE = "race.json"  # the finished race: settings, every contender's scores, the winner
SEED_BASE = 1000  # confirm's seeds: 1000, 1001, ... (never the search's)


@dataclass
class Contender:
    """One configuration in the race: its rank in the search and the searched values."""

    rank: int
    trial_id: str
    values: dict[str, Any]  # searched key -> value, as the config takes it
    scores: dict[int, float | None] = field(default_factory=dict)  # seed -> final metric
    tests: dict[int, float | None] = field(default_factory=dict)  # seed -> final weights on the test split
    dropped_after: int | None = None  # seeds run when it was dropped
    p_adjusted: float | None = None  # Holm-adjusted p of the round that dropped it

    @property
    def label(self) -> str:
        return f"#{self.rank}"

    def summary(self) -> Interval:
        return summarize(self.scores.values())


@dataclass
class Race:
    study_dir: Path  # the child study
    metric: str
    mode: str
    seeds: list[int]
    contenders: list[Contender]
    interrupted: bool = False

    @property
    def alive(self) -> list[Contender]:
        return [c for c in self.contenders if c.dropped_after is None]

    def to_json(self, top: int, alpha: float) -> dict[str, Any]:
        leader = self.leader()
        return {"metric": self.metric, "mode": self.mode, "top": top, "seeds": self.seeds, "alpha": alpha,
                "leader": leader.rank, "verdict": self.verdict(),
                "contenders": [{"rank": c.rank, "trial_id": c.trial_id, "values": c.values,
                                "scores": {str(k): v for k, v in c.scores.items()},
                                "dropped_after": c.dropped_after} for c in self.contenders]}

    def leader(self) -> Contender:
        """Best mean over the seeds run so far among those still in; ties go to the search's rank."""
        sign = direction(self.mode).sign
        scored = [c for c in self.alive if c.summary().mean is not None] or self.alive
        return max(scored, key=lambda c: (sign * (c.summary().mean or 0.0), -c.rank))

    def delta(self, contender: Contender, against: Contender) -> Interval:
        """contender - against over the seeds both ran: paired, so shared seed luck cancels."""
        return summarize(paired_differences(contender.scores, against.scores).values())

    def test_line(self) -> str | None:
        """The winner on the test split (final weights, once per run): reported, never raced on."""
        leader = self.leader()
        test = summarize(leader.tests.values())
        if test.mean is None:
            return None
        scale, unit = display_scale("test_hit1", list(leader.tests.values()))
        ci = f" ± {test.half_width * scale:.1f} (95% CI)" if test.half_width is not None else ""
        return (f"on the test split (final weights, read once per run), {leader.label} scores "
                f"{test.mean * scale:.1f}{unit}{ci} over {test.n} seeds")

    def verdict(self) -> str:
        """One honest sentence about the top two."""
        leader = self.leader()
        others = [c for c in self.contenders if c is not leader and c.summary().mean is not None]
        if not others:
            return f"config {leader.label} is the only one with a result"
        sign = direction(self.mode).sign
        runner = max(others, key=lambda c: sign * (c.summary().mean or 0.0))
        delta = self.delta(leader, runner)
        scale, unit = display_scale(self.metric, [v for c in self.contenders for v in c.scores.values()])
        points = "points" if unit == "%" else self.metric
        if delta.n < 2 or delta.low is None or delta.high is None:
            return f"the top two cannot be told apart with n = {delta.n}"
        better = sign * delta.low > 0 if sign > 0 else sign * delta.high > 0
        if not better:
            return f"the top two ({leader.label}, {runner.label}) are indistinguishable at n = {delta.n}"
        size = abs(delta.mean or 0.0) * scale
        low, high = sorted((abs(delta.low) * scale, abs(delta.high) * scale))
        word = "better" if sign > 0 else "lower"
        return (f"config {leader.label} is {word} than {runner.label} by {size:.1f} {points} "
                f"(95% CI {low:.1f}-{high:.1f}, n = {delta.n})")


def contenders(study: Study, top: int) -> list[Contender]:
    """The top `top` ranked trials of a study, as distinct configurations."""
    if top < 2:
        raise InvalidInput(None, "--top", "a race needs at least 2 configurations", top)
    if study.is_ablation and "seed" in study.params:
        raise InvalidInput(study.path, None, "confirm races a search's configurations; this is a grid "
                           "over seeds already (see `mtsearch report`)")
    board = leaderboard(study)
    picked: list[Contender] = []
    seen: set[tuple[Any, ...]] = set()
    for row in board.rows:
        trial = next(t for t in study.trials if str(t.get("trial_id")) == row["trial_id"])
        flat = trial_config(study, trial).to_flat()
        values = {k: _plain(k, flat[k]) for k in study.params if k != "seed"}
        key = tuple(values.values())
        if key in seen:
            continue
        seen.add(key)
        picked.append(Contender(rank=row["rank"], trial_id=row["trial_id"], values=values))
        if len(picked) == top:
            break
    if len(picked) < 2:
        raise InvalidInput(study.path, None, f"a race needs 2 ranked configurations; the study has {len(picked)}")
    return picked


def confirm_spec(study: Study, picked: list[Contender], seeds: list[int]) -> SpaceSpec:
    """The child study: the parent's base, no early stopping, one tied grid factor listing every
    (configuration, seed) pair the race may run."""
    parent = study.space.to_dict()
    keys = list(picked[0].values)
    factor = ",".join([*keys, "seed"])
    data = {
        "name": CONFIRM_DIR,
        "base": parent["base"],
        "metric": study.metric,
        "mode": study.mode,
        "search": {"max_concurrent": parent["search"]["max_concurrent"]},
        "scheduler": {"type": "none"},
        "resources": parent["resources"],
        "failure": parent["failure"],
        "storage": {"keep_checkpoints": 1},
        "grid": {factor: [[*c.values.values(), seed] for c in picked for seed in seeds]},
    }
    return space_from_mapping(data, str(study.path / CONFIRM_DIR / "space.yaml"), "ablation")


def race(
    study_dir: str | Path,
    top: int = 3,
    seeds: int = 5,
    alpha: float = 0.05,
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    **run_options: Any,
) -> Race:
    """Run (or resume) the race; `run_options` go to `run_search` (address, trainable_fn, ...).

    The options and the study are checked before Ray is imported: a bad one is refused at once."""
    say = log or (lambda message: None)
    if top < 2:
        raise InvalidInput(None, "--top", "a race needs at least 2 configurations", top)
    if seeds < 2:
        raise InvalidInput(None, "--seeds", "a paired test needs at least 2 seeds", seeds)
    if not 0 < alpha < 1:
        raise InvalidInput(None, "--alpha", "must be between 0 and 1", alpha)
    study = load_study(study_dir)
    picked = contenders(study, top)
    seed_list = [SEED_BASE + i for i in range(seeds)]
    spec = confirm_spec(study, picked, seed_list)
    check_output_dir(Path(study_dir) / CONFIRM_DIR, "confirm")  # the race's child study
    from mtsearch.search.driver import run_search  # heavy: ray
    (factor,) = spec.space
    result = Race(Path(study_dir) / CONFIRM_DIR, study.metric, study.mode, seed_list, picked)
    for done, seed in enumerate(seed_list, start=1):
        points = [{factor: (*c.values.values(), seed)} for c in result.alive]
        outcome = run_search(spec, study.path, resume=resume or done > 1, points=points, log=say,
                             **run_options)
        _read_scores(result, spec, seed_list[:done])
        if outcome.interrupted:
            result.interrupted = True
            return result
        dropped = _eliminate(result, alpha, done)
        for c in dropped:
            say(f"after {done} seeds: {c.label} dropped (worse than {result.leader().label}, "
                f"Holm-adjusted p = {c.p_adjusted:.3g})")
        if len(result.alive) == 1:
            break
    write_atomic(result.study_dir / RACE_FILE, json.dumps(result.to_json(top, alpha), indent=1))
    return result


def _eliminate(race: Race, alpha: float, done: int) -> list[Contender]:
    """Drop those the paired one-sided test says are worse than the leader (Holm over the round)."""
    leader = race.leader()
    pvalues: dict[int, float] = {}
    for c in race.alive:
        if c is leader:
            continue
        diffs = paired_differences(leader.scores, c.scores).values()
        diffs = [direction(race.mode).sign * d for d in diffs]
        p = paired_p_greater(diffs)
        if p is not None:
            pvalues[c.rank] = p
    dropped = []
    for c in race.alive:
        adjusted = holm(pvalues).get(c.rank)
        if adjusted is not None and adjusted < alpha:
            c.dropped_after, c.p_adjusted = done, adjusted
            dropped.append(c)
    return dropped


def _read_scores(race: Race, spec: SpaceSpec, seeds: list[int]) -> None:
    """Each contender's final metric per seed of `seeds` (the rounds so far: a resumed race
    replays its decisions exactly), from the child study's Parquet files."""
    child = load_study(race.study_dir)
    by_cell = {spec.cell_of(c.values): c for c in race.contenders}
    for trial in child.trials:
        contender = by_cell.get(str(trial.get("cell")))
        if contender is not None and trial.get("status") not in (None, "running") \
                and int(trial["seed"]) in seeds:
            contender.scores[int(trial["seed"])] = final_score(child, trial)
            contender.tests[int(trial["seed"])] = trial.get("test_hit1")


def read_race(study_dir: str | Path) -> dict[str, Any] | None:
    """The finished race of a study (`race.json`), or None if `confirm` has not finished one."""
    path = Path(study_dir) / CONFIRM_DIR / RACE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _plain(key: str, value: Any) -> Any:
    return branches_label(value) if key == "model.branches" else value
