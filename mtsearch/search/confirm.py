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
    PairedTest,
    holm,
    lattice_step,
    mean_interval,
    paired_differences,
    paired_test,
    summarize,
)
from mtsearch.space import SpaceSpec, space_from_mapping

CONFIRM_DIR = "confirm"
RACE_FILE = "race.json"  # the finished race: settings, every contender's scores, the winner
SEED_BASE = 1000  # confirm's seeds: 1000, 1001, ... (never the search's)
FIRST_TEST = 5  # no drop before this many seeds (irace's firstTest)
# seeds a race may spend per configuration by default: with the first test at 5 the race can stop
# early (benchmarks/race_null.py: at K = 2, 7% of seed-runs saved at 1 sd, 27% at 2 sd); at 5 it
# is a fixed-n comparison with one test
SEEDS = 10
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
    p_adjusted: float | None = None  # its latest racing test's p, adjusted (Holm, looks)
    p_raw: float | None = None  # that test's own p (1 where the leader was not the better one)
    test: PairedTest | None = None  # its latest test against the leader

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
    alpha: float = 0.05  # the level of the latest `eliminate`

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
                "seed_runs": self.seed_runs(), "seed_runs_max": len(self.contenders) * len(self.seeds),
                "contenders": [{"rank": c.rank, "trial_id": c.trial_id, "values": c.values,
                                "scores": {str(k): v for k, v in c.scores.items()},
                                "failed": sorted(c.failed), "dropped_after": c.dropped_after,
                                "racing_p": c.p_adjusted} for c in self.contenders]}

    def bounds(self) -> tuple[float, float]:
        """The range a score can take, where a failed run's imputed value lies: the metric's own
        (0 to 1 for a fraction), else the range the race's completed runs showed."""
        observed = [v for c in self.contenders for s, v in c.scores.items()
                    if s not in c.failed and v is not None and math.isfinite(v)]
        worst = worst_value(self.metric, self.mode)
        if worst is not None:
            return (0.0, 1.0)
        return (min(observed), max(observed)) if observed else (0.0, 0.0)

    def seed_runs(self) -> int:
        """Seed-runs the race has spent (a failed run counts: it took its GPU time)."""
        return sum(len(c.scores) for c in self.contenders)

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

    def decision_interval(self, contender: Contender) -> tuple[float, float, float] | None:
        """(low, high, level) of leader - contender at the confidence the racing decision used:
        95% widened by the factor its p was adjusted by (Holm over the pairs, Bonferroni over the
        looks). It excludes zero exactly when the race dropped the contender, so a verdict and its
        interval never disagree. None before the contender was tested."""
        test, p_adj, p_raw = contender.test, contender.p_adjusted, contender.p_raw
        if test is None or p_adj is None or p_raw is None:
            return None
        pairs = len(self.contenders) * (len(self.contenders) - 1) // 2
        factor = p_adj / p_raw if p_raw > 0 else looks(len(self.seeds), self.first_test) * pairs
        level = 1.0 - self.alpha / max(1.0, factor)
        interval = mean_interval(test, level)
        return None if interval is None else (*interval, level)

    def verdict(self) -> str:
        """One sentence about the leader and its closest rival, in the words of the rule that drops:
        a configuration is called worse only when the racing test dropped it, and the interval
        quoted is the one that test used."""
        leader = self.leader()
        others = [c for c in self.contenders if c is not leader and c.summary().mean is not None]
        if not others:
            return f"config {leader.label} is the only one with a result"
        sign = direction(self.mode).sign
        standing = [c for c in others if c.dropped_after is None] or others
        runner = max(standing, key=lambda c: sign * (c.summary().mean or 0.0))
        scale, unit = display_scale(self.metric, [v for c in self.contenders for v in c.scores.values()])
        points = " points" if unit == "%" else ""
        decided = self.decision_interval(runner)
        if decided is None or runner.test is None or runner.test.mean is None:
            delta = self.delta(leader, runner)
            return (f"the race made no test of {leader.label} against {runner.label} (it tests from "
                    f"{self.first_test} seeds on; n = {delta.n})")
        low, high, level = decided
        test = runner.test
        if (test.t or 0.0) <= 0:  # failures counted against their own runs put the leader behind
            return (f"{NO_DIFFERENCE} between {leader.label} and {runner.label}: with each failed run "
                    f"scored against its own configuration, {leader.label} is not ahead "
                    f"({leader.label} - {runner.label} = {test.mean * scale:+.1f}{points}, n = {test.n})")
        ci = (f"95% CI {low * scale:+.1f} to {high * scale:+.1f}{points}, adjusted for the race's "
              f"pairs and looks (this pair at {level * 100:.3g}%), n = {test.n}")
        if runner.dropped_after is None:
            return (f"{NO_DIFFERENCE} between {leader.label} and {runner.label} ({ci}; racing "
                    f"decision, adjusted p = {runner.p_adjusted:.3g})")
        word = "higher" if sign > 0 else "lower"
        return (f"config {leader.label} scores {word} than {runner.label}: the race dropped "
                f"{runner.label} after {runner.dropped_after} seeds (racing decision, adjusted "
                f"p = {runner.p_adjusted:.3g}); {leader.label} - {runner.label} = "
                f"{test.mean * scale:+.1f}{points} ({ci})")


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
    if study.space.scheduler.population_based:
        raise InvalidInput(study.path, None, "confirm races constant configurations; a population's trials "
                           "are schedules whose seeds are their lineage's: export the winner (`mtsearch export`) "
                           "and train its schedule with other seeds (`seed:` in the exported file)")
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
    seeds: int = 10,
    alpha: float = 0.05,
    *,
    first_test: int = FIRST_TEST,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    **run_options: Any,
) -> Race:
    """Run (or resume) the race; `run_options` go to `run_search` (address, trainer, ...).

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
    if seeds < first_test:
        raise InvalidInput(None, "--seeds", f"below --first-test {first_test}: the race would never "
                           f"test, so it could drop nothing; give --seeds {first_test} or more (racing "
                           f"saves seed-runs only above it, e.g. the default {SEEDS}) or a lower "
                           "--first-test", seeds)
    study = load_study(study_dir)
    picked = contenders(study, top)
    seed_list = [SEED_BASE + i for i in range(seeds)]
    spec = confirm_spec(study, picked, seed_list)
    check_output_dir(Path(study_dir) / CONFIRM_DIR, "confirm")  # the race's child study
    from mtsearch.search.driver import run_search  # heavy: ray
    if seeds == first_test:
        say(f"a fixed-n comparison: --seeds {seeds} = --first-test, so the race tests once, after "
            f"the last seed, and every configuration runs all {seeds} seeds ({top * seeds} seed-runs); "
            f"racing saves seed-runs only with more seeds than the first test (default {SEEDS})")
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
    """The round's drops: none before `first_test` seeds; then a paired t-test that the leader is
    better than each configuration over the seeds both ran (`stats.paired_test`: a failed run is
    scored as the value within the metric's range that weighs most against its own configuration,
    so a failure can only make its configuration easier to drop), its two-sided p Holm-adjusted
    over every pair still in and Bonferroni-multiplied by the looks, against `alpha`. Each tested
    configuration keeps its test (`Contender.test`), so the verdict quotes the interval it used."""
    race.alpha = alpha
    if done < race.first_test or len(race.alive) < 2:
        return []
    leader = race.leader()
    sign = direction(race.mode).sign
    step = lattice_step(v for c in race.contenders for v in c.scores.values())
    floor = step / math.sqrt(6.0) if step is not None else 0.0  # sd of a difference of two rounded values
    bounds = race.bounds()
    pvalues: dict[int, float] = {}
    for c in race.alive:
        if c is leader:
            continue
        c.test = paired_test(leader.scores, c.scores, sign, ours_failed=leader.failed,
                             theirs_failed=c.failed, bounds=bounds, sd_floor=floor)
        if c.test.p is not None:
            pvalues[c.rank] = c.test.p if (c.test.t or 0.0) > 0 else 1.0
    pairs = len(race.alive) * (len(race.alive) - 1) // 2
    untested = {f"pair{i}": 1.0 for i in range(pairs - len(pvalues))}  # pairs without the leader
    adjusted = holm({**pvalues, **untested})
    spend = looks(len(race.seeds), race.first_test)
    dropped = []
    for c in race.alive:
        p = adjusted.get(c.rank)
        if p is None:
            continue
        c.p_adjusted = min(1.0, p * spend)
        c.p_raw = pvalues[c.rank]
        if c.p_adjusted < alpha:
            c.dropped_after = done
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
