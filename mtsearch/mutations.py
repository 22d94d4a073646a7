"""Population-based training's space: which searched keys it may change mid-run, checked against
the space file before anything runs.

PBT copies a strong trial's weights into a weak one and changes some of its values between two
epochs. Only keys that change no tensor (the loss weights, the learning rate and the weight
decay: `schedules.SCHEDULABLE`) can change between epochs; every other searched key (branches,
preset, crop, batch size, ...) is drawn once for each member of the population and stays fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mtsearch.config import TrialConfig
from mtsearch.distributions import Distribution, factor_keys
from mtsearch.errors import InvalidInput
from mtsearch.key_checks import EVAL_RUNGS
from mtsearch.schedules import SCHEDULABLE
from mtsearch.settings import SchedulerSettings, SearchSettings

MUTABLE: tuple[str, ...] = tuple(SCHEDULABLE)  # the keys a running trial can change
PB2_KINDS: tuple[str, ...] = ("uniform", "loguniform")  # PB2's bandit needs a continuous range


def check_population_space(
    scheduler: SchedulerSettings, search: SearchSettings, space: Mapping[str, Distribution],
    base: TrialConfig, raw_search: Any, source: str, is_grid: bool,
) -> SchedulerSettings:
    """A pbt/pb2 scheduler checked against its space; returns it with `mutate` and `burn_in` resolved."""
    kind = scheduler.type
    if is_grid:
        raise InvalidInput(source, "scheduler.type", f"{kind} trains a population of sampled trials: "
                           "use it in a space file (mtsearch run), not a grid file", kind)
    if search.algorithm == "grid":
        raise InvalidInput(source, "search.algorithm", f"the {kind} scheduler draws its population from "
                           "ranges and choices, not a grid", "grid")
    if isinstance(raw_search, Mapping) and "num_samples" in raw_search \
            and raw_search["num_samples"] != scheduler.population:
        raise InvalidInput(source, "search.num_samples", f"a {kind} search trains scheduler.population trials "
                           f"({scheduler.population}); leave num_samples out", raw_search["num_samples"])
    if search.seeds_per_trial > 1:
        raise InvalidInput(source, "search.seeds_per_trial", f"must be 1 with the {kind} scheduler: each "
                           "member of the population is one seed", search.seeds_per_trial)
    searched = [k for factor in space for k in factor_keys(factor)]
    for key, why in (("seed", f"members take seeds base.seed .. base.seed + {scheduler.population - 1}"),
                     ("optim.epochs", "every member trains the same epochs")):
        if key in searched:
            raise InvalidInput(source, f"space.{key}", f"cannot be searched with the {kind} scheduler: {why}")
    tied = [factor for factor in space if "," in factor]
    if tied:
        raise InvalidInput(source, f"space.{tied[0]}", f"tied factors are for grids; the {kind} scheduler "
                           "samples each key on its own")
    if scheduler.mutate is None:
        mutate = tuple(k for k in searched if k in MUTABLE)
    else:
        mutate = scheduler.mutate
        for key in mutate:
            if key not in searched:
                raise InvalidInput(source, "scheduler.mutate", f"{key} is not searched in `space`; "
                                   "PBT changes searched keys only", key)
            if key not in MUTABLE:
                raise InvalidInput(source, "scheduler.mutate", f"{key} cannot change during training: it is "
                                   "fixed per trial (drawn once for each member); PBT may change "
                                   + ", ".join(MUTABLE), key)
    if not mutate:
        raise InvalidInput(source, "scheduler.type", f"{kind} needs a searched key it may change during "
                           "training (" + ", ".join(MUTABLE) + "); this space searches none", kind)
    if kind == "pb2":
        for key in mutate:
            if space[key].kind not in PB2_KINDS:
                raise InvalidInput(source, f"space.{key}", f"pb2 takes bounds from uniform or loguniform "
                                   f"ranges only; {space[key].kind} is not a range (use pbt, or a range)")
    warmup = base.track.warmup_epochs
    burn_in = warmup if scheduler.burn_in is None else scheduler.burn_in
    if burn_in < warmup:
        raise InvalidInput(source, "scheduler.burn_in", f"must be >= the tracking warm-up "
                           f"(track.warmup_epochs: {warmup}): an exploit before it ends would compare "
                           "trials whose trunks the tracking branch has not trained yet", burn_in)
    epochs = base.optim.epochs
    if scheduler.perturbation_interval >= epochs:
        raise InvalidInput(source, "scheduler.perturbation_interval",
                           f"must be < optim.epochs ({epochs}), or no exploit ever happens",
                           scheduler.perturbation_interval)
    if not boundaries(replace(scheduler, burn_in=burn_in), epochs):
        raise InvalidInput(source, "scheduler.burn_in", f"leaves no exploit before the last epoch ({epochs})",
                           burn_in)
    every = base.eval.every
    if every != EVAL_RUNGS and scheduler.perturbation_interval % int(every):
        raise InvalidInput(source, "scheduler.perturbation_interval",
                           f"must be a multiple of eval.every ({every}): an exploit compares the trials' "
                           "validation scores of that epoch", scheduler.perturbation_interval)
    return replace(scheduler, mutate=tuple(mutate), burn_in=burn_in)


def boundaries(scheduler: SchedulerSettings, epochs: int) -> list[int]:
    """The epochs after which the population exploits: multiples of the interval from the burn-in on,
    before the last epoch."""
    interval, burn_in = scheduler.perturbation_interval, scheduler.burn_in or 0
    return [e for e in range(interval, epochs, interval) if e >= burn_in]
