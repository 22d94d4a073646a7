"""`mtsearch confirm`: race a study's top configurations over fresh seeds.

A search trains each configuration once, with one seed, so the top of its leaderboard is partly
luck. Racing (F-Race, irace's elitist racing) spends seeds only where the decision is still open:
the top K configurations are trained in full, with no early stopping, one seed per round. From
`first_test` seeds on (irace's firstTest, default 5), after each round a configuration is dropped
when a two-sided paired t-test over the seeds both ran says it differs from the leader, the leader
being the better one. The level is spent so that the race keeps alpha however it ends: Bonferroni
over the rounds that may test (the looks) and Holm over every pair of configurations still in (the
leader is chosen from the same data, so only a test of every pair is honest about it). A stepped
metric's spread is never taken below its step (Hit@1 moves by 1/N videos), so equal differences are
not read as certainty. A run that fails scores the worst possible value and is named. The race
stops when one configuration remains or every seed is spent; the figure to quote is the winner's on
the test split, which the race never looked at.

Seeds are fresh (1000, 1001, ...), so the seed that made a configuration look good in the search
is not counted again. Each configuration is scored by its final evaluated epoch (a full run, as a
user would report it), not by its best epoch. The runs form a child study `trials/NAME/confirm/`:
a grid over (configuration, seed) pairs in the same Parquet schema, so `leaderboard`, `report`
and `plot` read it, and `--resume` continues it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsearch.errors import InvalidInput
from mtsearch.files import check_output_dir, write_atomic
from mtsearch.metrics import counterpart_on_test, direction, display_scale, worst_value
from mtsearch.presets import branches_label
from mtsearch.results.report import (
    Study,
    final_score,
    leaderboard,
    load_study,
    trial_config,
    trial_of,
)
from mtsearch.results.stats import (
    NO_DIFFERENCE,
    Interval,
    holm,
    lattice_step,
    paired_differences,
    paired_p_two_sided,
    summarize,
)
from mtsearch.space import SpaceSpec, space_from_mapping

CONFIRM_DIR = "confirm"
RACE_FILE = "race.json"  # the finished race: settings, every contender's scores, the winner
SEED_BASE = 1000  # confirm's seeds: 1000, 1001, ... (never the search's)
FIRST_TEST = 5  # no drop before this many seeds (irace's firstTest)
FAILED = ("error", "diverged")  # statuses of a run that failed: scored the worst possible value


@dataclass
class Contender:
    """One configuration in the race: its rank in the search and the searched values."""

    rank: int
    trial_id: str
    values: dict[str, Any]  # searched key -> value, as the config takes it
    scores: dict[int, float | None] = field(default_factory=dict)  # seed -> final metric
    tests: dict[int, float | None] = field(default_factory=dict)  # seed -> final weights on the test split
    failed: set[int] = field(default_factory=set)  # seeds whose run failed (scored the worst value)
    dropped_after: int | None = None  # seeds run when it was dropped
    p_adjusted: float | None = None  # the racing test's adjusted p when it was dropped

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
    first_test: int = FIRST_TEST

    @property
    def alive(self) -> list[Contender]:
        return [c for c in self.contenders if c.dropped_after is None]

    @property
    def test_metric(self) -> str:
        """The test-split figure the race's metric is read against (test_hit5 for val_hit5)."""
        return counterpart_on_test(self.metric)

    def to_json(self, top: int, alpha: float) -> dict[str, Any]:
        leader = self.leader()
        return {"metric": self.metric, "mode": self.mode, "top": top, "seeds": self.seeds, "alpha": alpha,
                "first_test": self.first_test, "looks": looks(len(self.seeds), self.first_test),
                "leader": leader.rank, "verdict": self.verdict(),
                "contenders": [{"rank": c.rank, "trial_id": c.trial_id, "values": c.values,
                                "scores": {str(k): v for k, v in c.scores.items()},
                                "failed": sorted(c.failed), "dropped_after": c.dropped_after,
                                "racing_p": c.p_adjusted} for c in self.contenders]}

    def leader(self) -> Contender:
        """The best mean among those still in, over the seeds every one of them ran (paired: no
        configuration leads on a seed another lacks); ties go to the search's rank."""
        alive = self.alive
        common = set.intersection(*(set(c.scores) for c in alive)) if alive else set()
        sign = direction(self.mode).sign

        def mean(c: Contender) -> float:
            values = [c.scores[s] for s in common if c.scores[s] is not None]
            return sign * math.fsum(values) / len(values) if values else -math.inf

        return max(alive, key=lambda c: (mean(c), -c.rank))

    def delta(self, contender: Contender, against: Contender) -> Interval:
        """contender - against over the seeds both ran: paired, so shared seed luck cancels."""
        return summarize(paired_differences(contender.scores, against.scores).values())

    def test_line(self) -> str | None:
        """The winner on the test split (final weights, once per run): the figure to quote, as the
        race never looked at it."""
        leader = self.leader()
        test = summarize(leader.tests.values())
        if test.mean is None:
            return None
        scale, unit = display_scale(self.test_metric, list(leader.tests.values()))
        ci = f" ± {test.half_width * scale:.1f} (95% CI)" if test.half_width is not None else ""
        return (f"the figure to quote: on the test split ({self.test_metric}, final weights, never "
                f"raced on), {leader.label} scores {test.mean * scale:.1f}{unit}{ci} over {test.n} seeds")

    def verdict(self) -> str:
        """One sentence about the leader and its closest rival, in the words of the rule that drops:
        a configuration is called worse only when the racing test dropped it."""
        leader = self.leader()
        others = [c for c in self.contenders if c is not leader and c.summary().mean is not None]
        if not others:
            return f"config {leader.label} is the only one with a result"
        sign = direction(self.mode).sign
        standing = [c for c in others if c.dropped_after is None] or others
        runner = max(standing, key=lambda c: sign * (c.summary().mean or 0.0))
        delta = self.delta(leader, runner)
        scale, unit = display_scale(self.metric, [v for c in self.contenders for v in c.scores.values()])
        points = " points" if unit == "%" else ""
        if delta.n < 2 or delta.low is None or delta.high is None:
            return f"the top two cannot be told apart with n = {delta.n}"
        ci = f"95% CI {delta.low * scale:+.1f} to {delta.high * scale:+.1f}{points}, n = {delta.n}"
        if runner.dropped_after is None:
            return f"{NO_DIFFERENCE} between {leader.label} and {runner.label} ({ci})"
        word = "higher" if sign > 0 else "lower"
        return (f"config {leader.label} scores {word} than {runner.label}: the race dropped "
                f"{runner.label} after {runner.dropped_after} seeds (racing decision, adjusted "
                f"p = {runner.p_adjusted:.3g}); {leader.label} - {runner.label} = "
                f"{(delta.mean or 0.0) * scale:+.1f}{points} ({ci})")


def looks(seeds: int, first_test: int) -> int:
    """How many rounds may drop a configuration: one per seed from `first_test` on."""
    return max(1, seeds - first_test + 1)


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
        trial = trial_of(study, row["trial_id"])
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
    first_test: int = FIRST_TEST,
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
    if first_test < 2:
        raise InvalidInput(None, "--first-test", "a paired test needs at least 2 seeds", first_test)
    study = load_study(study_dir)
    picked = contenders(study, top)
    seed_list = [SEED_BASE + i for i in range(seeds)]
    spec = confirm_spec(study, picked, seed_list)
    check_output_dir(Path(study_dir) / CONFIRM_DIR, "confirm")  # the race's child study
    from mtsearch.search.driver import run_search  # heavy: ray
    (factor,) = spec.space
    result = Race(Path(study_dir) / CONFIRM_DIR, study.metric, study.mode, seed_list, picked,
                  first_test=first_test)
    for done, seed in enumerate(seed_list, start=1):
        points = [{factor: (*c.values.values(), seed)} for c in result.alive]
        outcome = run_search(spec, study.path, resume=resume or done > 1, points=points, log=say,
                             **run_options)
        read_scores(result, load_study(result.study_dir), spec, seed_list[:done])
        if outcome.interrupted:
            result.interrupted = True
            return result
        for c in eliminate(result, alpha, done):
            say(f"after {done} seeds: {c.label} dropped, {result.leader().label} scores better "
                f"(racing decision, adjusted p = {c.p_adjusted:.3g})")
        if len(result.alive) == 1:
            break
    write_atomic(result.study_dir / RACE_FILE, json.dumps(result.to_json(top, alpha), indent=1))
    return result


def eliminate(race: Race, alpha: float, done: int) -> list[Contender]:
    """The round's drops: none before `first_test` seeds; then a two-sided paired t-test of each
    configuration against the leader over the seeds both ran, its p Holm-adjusted over every pair
    still in and Bonferroni-multiplied by the looks, against `alpha`."""
    if done < race.first_test or len(race.alive) < 2:
        return []
    leader = race.leader()
    step = lattice_step(v for c in race.contenders for v in c.scores.values())
    floor = step / math.sqrt(6.0) if step is not None else 0.0  # sd of a difference of two rounded values
    pvalues: dict[int, float] = {}
    for c in race.alive:
        if c is leader:
            continue
        diffs = paired_differences(leader.scores, c.scores)
        p = paired_p_two_sided(diffs.values(), floor)
        better = direction(race.mode).sign * math.fsum(diffs.values()) > 0
        if p is not None:
            pvalues[c.rank] = p if better else 1.0
    pairs = len(race.alive) * (len(race.alive) - 1) // 2
    untested = {f"pair{i}": 1.0 for i in range(pairs - len(pvalues))}  # pairs without the leader
    adjusted = holm({**pvalues, **untested})
    spend = looks(len(race.seeds), race.first_test)
    dropped = []
    for c in race.alive:
        p = adjusted.get(c.rank)
        if p is not None and min(1.0, p * spend) < alpha:
            c.dropped_after, c.p_adjusted = done, min(1.0, p * spend)
            dropped.append(c)
    return dropped


def read_scores(race: Race, child: Study, spec: SpaceSpec, seeds: list[int]) -> None:
    """Each contender's final metric per seed of `seeds` (the rounds so far: a resumed race
    replays its decisions exactly). A run that failed (error, diverged, or no evaluation) scores
    the worst possible value: a failure must never help its configuration. A run a fault of the
    machine ended is not a result: `--resume` reruns it."""
    by_cell = {spec.cell_of(c.values): c for c in race.contenders}
    for trial in child.trials:
        contender = by_cell.get(str(trial.get("cell")))
        status = trial.get("status")
        if contender is None or status in (None, "running") or int(trial["seed"]) not in seeds \
                or trial.get("machine_fault"):
            continue
        seed = int(trial["seed"])
        score = None if status in FAILED else final_score(child, trial)
        contender.scores[seed] = score
        contender.tests[seed] = None if status in FAILED else trial.get(race.test_metric)
        if score is None:
            contender.failed.add(seed)
    worst = worst_value(race.metric, race.mode)
    if worst is None:  # unbounded: the worst score any run of the race had
        observed = [v for c in race.contenders for v in c.scores.values() if v is not None]
        worst = min(observed, key=direction(race.mode).key) if observed else None
    for c in race.contenders:
        for seed in c.failed:
            c.scores[seed] = worst


def read_race(study_dir: str | Path) -> dict[str, Any] | None:
    """The finished race of a study (`race.json`), or None if `confirm` has not finished one."""
    path = Path(study_dir) / CONFIRM_DIR / RACE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _plain(key: str, value: Any) -> Any:
    return branches_label(value) if key == "model.branches" else value
