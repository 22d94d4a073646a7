"""The epochs a scheduler reads the metric at: ASHA's rungs, a population's boundaries. A search
with `eval.every: rungs` (the default where a scheduler decides) evaluates the validation split
at exactly those epochs and the last (`eval.at`), not every few epochs for nobody to read."""

from __future__ import annotations

import math

from mtsearch.config import TrialConfig
from mtsearch.key_checks import EVAL_RUNGS
from mtsearch.settings import SchedulerSettings


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs ASHA compares trials at: Ray Tune's rungs (`grace_period` x `reduction_factor`^k
    up to `max_t`), each as the first whole epoch at or past it (Tune decides on the first report
    whose epoch reaches the milestone)."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return sorted({math.ceil(grace_period * reduction_factor ** k) for k in range(count)})


def milestones(scheduler: SchedulerSettings, epochs: int) -> tuple[int, ...]:
    """The epochs before the last at which `scheduler` reads the metric (none for `none`)."""
    if scheduler.type == "asha":
        return tuple(e for e in asha_rungs(scheduler.grace_period, scheduler.reduction_factor, epochs) if e < epochs)
    if scheduler.population_based:
        from mtsearch.mutations import boundaries

        return tuple(boundaries(scheduler, epochs))
    return ()


def evaluated_at_milestones(base: TrialConfig, scheduler: SchedulerSettings, default: bool) -> TrialConfig:
    """`base` evaluating at the scheduler's milestones where it says `eval.every: rungs`, or where
    `default` (a search whose file leaves eval.every unset) and a scheduler decides; `eval.at` is
    filled once the scheduler is complete (`with_milestones`)."""
    if default and scheduler.type != "none":
        return base.with_overrides({"eval.every": EVAL_RUNGS}, "<scheduler>")
    return base


def with_milestones(base: TrialConfig, scheduler: SchedulerSettings) -> TrialConfig:
    """`base` with `eval.at` the scheduler's milestones, for `eval.every: rungs`."""
    if base.eval.every != EVAL_RUNGS:
        return base
    return base.with_overrides({"eval.at": list(milestones(scheduler, base.optim.epochs))}, "<scheduler>")
