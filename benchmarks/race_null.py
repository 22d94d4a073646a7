"""How often `mtsearch confirm` drops a configuration that is truly as good, and how often it drops
one that is truly worse: races simulated through the real decision code (`confirm.eliminate`,
`Race.leader`) with a stand-in scorer instead of training.

Each race has K configurations and `--seeds` seeds. A configuration's score on a seed is a shared
seed effect (sd 1: what pairing cancels) plus its own noise (sd 1) plus its true advantage, and with
`--step` the score is rounded to that step, as Hit@1 on N videos moves by 1/N. Null races give every
configuration the same mean: any drop is a false one. Power races make #1 better than the rest by
0.5, 1 and 2 sd of a configuration's own noise; for them the table also gives the fraction of the
K x seeds seed-runs the race did not spend (it stopped early, or dropped a configuration before
its last seed): what racing saves.

    python benchmarks/race_null.py                       # 2,000 races for K = 2, 3, 5, 10 seeds
    python benchmarks/race_null.py --seeds 5             # the fixed-n race: one test, nothing saved
    python benchmarks/race_null.py --races 500 --step 0.25

The last line, `race_null_max: 0.0NN`, is the largest null drop rate over K (the race's claim is alpha).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from mtsearch.search.confirm import FIRST_TEST, SEEDS, Contender, Race, eliminate

SEED_SD, NOISE_SD = 1.0, 1.0


def one_race(k: int, seeds: int, alpha: float, first_test: int, advantage: float, step: float | None,
             rng: random.Random) -> tuple[bool, bool, bool, float]:
    """(some configuration was dropped, #1 won with every other dropped, #1 leads at the end, the
    fraction of the k x seeds seed-runs not spent)."""
    contenders = [Contender(rank=i + 1, trial_id=str(i), values={}) for i in range(k)]
    race = Race(Path("."), "val_hit1", "max", list(range(seeds)), contenders, first_test=first_test)
    spent = 0
    for done, seed in enumerate(race.seeds, start=1):
        shared = rng.gauss(0.0, SEED_SD)
        for c in race.alive:
            spent += 1
            score = shared + rng.gauss(0.0, NOISE_SD) + (advantage if c.rank == 1 else 0.0)
            c.scores[seed] = round(score / step) * step if step else score
        eliminate(race, alpha, done)
        if len(race.alive) == 1:
            break
    dropped = any(c.dropped_after is not None for c in contenders)
    won = [c.rank for c in race.alive] == [1]
    return dropped, won, race.leader().rank == 1, 1.0 - spent / (k * seeds)


ADVANTAGES = (0.5, 1.0, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--races", type=int, default=2000)
    parser.add_argument("--ks", default="2,3,5")
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per race (confirm's default {SEEDS})")
    parser.add_argument("--first-test", type=int, default=FIRST_TEST)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--step", type=float, default=None, help="round scores to this step")
    args = parser.parse_args()
    rng = random.Random(0)
    worst = 0.0
    print(f"{args.races} races each, {args.seeds} seeds, first test at {args.first_test}, "
          f"alpha {args.alpha}, step {args.step or 'none'}")
    print("#1 better by 0.5, 1 or 2 sd: 'all dropped' = every other configuration dropped; "
          "'saved' = fraction of the K x seeds seed-runs not spent")
    print(f"{'K':>3}  {'null drop rate':>14}  " + "  ".join(f"{'all dropped ' + format(a, 'g'):>13}"
                                                        for a in ADVANTAGES)
          + "  " + "  ".join(f"{'saved ' + format(a, 'g'):>8}" for a in ADVANTAGES))
    for k in (int(x) for x in args.ks.split(",")):
        null = sum(one_race(k, args.seeds, args.alpha, args.first_test, 0.0, args.step, rng)[0]
                   for _ in range(args.races)) / args.races
        outcomes = {adv: [one_race(k, args.seeds, args.alpha, args.first_test, adv, args.step, rng)
                          for _ in range(args.races)] for adv in ADVANTAGES}
        won = {adv: sum(o[1] for o in runs) / args.races for adv, runs in outcomes.items()}
        saved = {adv: sum(o[3] for o in runs) / args.races for adv, runs in outcomes.items()}
        worst = max(worst, null)
        print(f"{k:>3}  {null:>14.3f}  " + "  ".join(f"{won[a]:>13.3f}" for a in ADVANTAGES) + "  "
              + "  ".join(f"{saved[a]:>8.3f}" for a in ADVANTAGES))
    print(f"race_null_max: {worst:.3f}")


if __name__ == "__main__":
    main()
