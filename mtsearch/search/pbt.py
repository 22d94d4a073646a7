"""Population-based training's rules, free of Ray: the initial population, who copies whom at a
boundary, and the values a copy trains with next (PBT's perturbation, or PB2's bandit).

A boundary is decided once every live member has reached it, synchronously: members are ranked
by their validation score of that epoch; the bottom quantile (and any member that diverged) each
copy a random member of the top quantile, weights and whole config, and train on with the copied
values explored. The randomness of a boundary is seeded from (search seed, epoch), so a boundary
decided again after an interruption is decided the same way.

A member's config is its lineage: after a copy at epoch e it is the donor's config, each
mutated key a schedule whose new value starts at e + 1 (`schedules.py`). `mtsearch train` of it
replays the winner's whole history from epoch 1: the root's weights, then each change in force
from the epoch it came in, with the root's seed throughout (a copy takes its donor's seed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtsearch.config import TrialConfig
from mtsearch.distributions import Distribution
from mtsearch.metrics import direction
from mtsearch.mutations import boundaries
from mtsearch.schedules import Schedule
from mtsearch.space import SpaceSpec

QUANTILE_REASON, DIVERGED_REASON = "quantile", "diverged"


# ---- the initial population -------------------------------------------------------------------

def initial_population(spec: SpaceSpec, earlier: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """`scheduler.population` members, each its searched values and its seed (base.seed + i):
    first `earlier`'s (the top of an earlier study, `--from`), then points of a scrambled Sobol
    design over the space, which covers it more evenly than independent draws."""
    import torch

    keys = list(spec.space)
    count = spec.scheduler.population
    members = [{k: point[k] for k in keys} for point in list(earlier)[:count]]
    if len(members) < count:
        sobol = torch.quasirandom.SobolEngine(len(keys), scramble=True, seed=spec.search.seed)
        for row in sobol.draw(count - len(members)).double().tolist():
            members.append({key: from_unit(spec.space[key], u) for key, u in zip(keys, row, strict=True)})
    return [{**m, "seed": spec.base.seed + i} for i, m in enumerate(members)]


def from_unit(dist: Distribution, u: float) -> Any:
    """The value at quantile `u` in [0, 1) of a distribution (log scale for the log kinds)."""
    u = min(max(u, 0.0), 1.0 - 1e-12)
    if dist.kind == "choice":
        return dist.values[int(u * len(dist.values))]
    low, high = dist.values
    if dist.kind == "uniform":
        return low + u * (high - low)
    if dist.kind == "loguniform":
        return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    if dist.kind == "int":
        return min(int(low + u * (high - low + 1)), high)
    if dist.kind == "logint":
        return min(int(round(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low)) - 0.5))), high)
    raise ValueError(f"PBT cannot draw from a {dist.kind} distribution")


def to_unit(dist: Distribution, value: float) -> float:
    """The inverse of `from_unit` for ranges (PB2's features)."""
    low, high = dist.values
    if dist.kind == "loguniform":
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


# ---- a boundary -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PopulationRules:
    """What the coordinator decides with (plain values: it travels to a Ray actor)."""

    kind: str  # pbt | pb2
    mode: str
    population: int
    quantile: float
    resample_probability: float
    factors: tuple[float, ...]
    mutate: tuple[str, ...]
    dists: dict[str, Distribution]
    seed: int
    boundaries: tuple[int, ...]

    @classmethod
    def of(cls, spec: SpaceSpec) -> PopulationRules:
        s = spec.scheduler
        mutate = tuple(s.mutate or ())
        return cls(s.type, spec.mode, s.population, s.quantile, s.resample_probability,
                   tuple(s.perturbation_factors), mutate, {k: spec.space[k] for k in mutate},
                   spec.search.seed, tuple(boundaries(s, spec.max_epochs)))


@dataclass
class Arrival:
    """A member at a boundary: its score then (None: diverged, or no finite score), its config
    (the lineage so far, as `TrialConfig.to_dict`) and where its weights of that epoch are kept."""

    score: float | None
    config: dict[str, Any]
    checkpoint: str | None
    diverged: bool = False


@dataclass
class Segment:
    """One interval a member trained, for PB2's model: at boundary `epoch` its score had moved
    from `before` to `after` under `values` (unit scale)."""

    epoch: int
    before: float
    after: float
    values: tuple[float, ...]


@dataclass
class PopulationHistory:
    """What PB2 learns from: every member's segments so far, and each member's starting score
    for the segment it trains now (its own, or its donor's after a copy)."""

    segments: list[Segment] = field(default_factory=list)
    start: dict[str, float] = field(default_factory=dict)


def decide_boundary(rules: PopulationRules, epoch: int, arrivals: Mapping[str, Arrival],
                    history: PopulationHistory | None = None) -> dict[str, dict[str, Any] | None]:
    """Each arrived member's decision at boundary `epoch`: None (train on), or a copy of a donor:
    {donor, donor_epoch, checkpoint, old, new, config, reason}."""
    rng = random.Random(f"mtsearch-pbt:{rules.seed}:{epoch}")
    sign = direction(rules.mode).sign  # +1 where higher is better
    scored = sorted((tid for tid, a in arrivals.items() if not a.diverged and _finite(a.score)),
                    key=lambda tid: (sign * float(arrivals[tid].score), tid))  # type: ignore[arg-type]
    decisions: dict[str, dict[str, Any] | None] = {tid: None for tid in arrivals}
    n = len(scored)
    n_q = min(math.ceil(n * rules.quantile), n // 2)
    bottom, top = (scored[:n_q], scored[n - n_q:]) if n_q else ([], [])
    donors = [tid for tid in top if arrivals[tid].checkpoint]
    lost = sorted(tid for tid, a in arrivals.items() if tid not in scored)  # diverged or scoreless
    recipients = [(tid, QUANTILE_REASON) for tid in bottom] + [(tid, DIVERGED_REASON) for tid in lost]
    if history is not None:
        _learn(rules, epoch, arrivals, history)
    if not donors and scored and lost:  # too few to rank: a diverged member copies the best
        donors = [tid for tid in scored[-1:] if arrivals[tid].checkpoint]
    chosen: list[tuple[float, ...]] = []
    for tid, reason in recipients:
        if not donors:
            break
        donor = rng.choice(donors)
        donor_cfg = TrialConfig.from_mapping(arrivals[donor].config, "<population>")
        old = values_at(donor_cfg, rules.mutate, epoch + 1)
        if rules.kind == "pb2" and history is not None:
            new = _pb2_values(rules, epoch, float(arrivals[donor].score), history, chosen, rng)  # type: ignore[arg-type]
            chosen.append(tuple(to_unit(rules.dists[k], new[k]) for k in rules.mutate))
        else:
            new = explore(rules, old, rng)
        config = continued(donor_cfg, new, epoch).to_dict()
        decisions[tid] = {"donor": donor, "donor_epoch": epoch, "checkpoint": arrivals[donor].checkpoint,
                          "old": values_at(TrialConfig.from_mapping(arrivals[tid].config, "<population>"),
                                           rules.mutate, epoch + 1),
                          "donor_values": old, "new": new, "config": config, "reason": reason}
        if history is not None:
            history.start[tid] = float(arrivals[donor].score)  # type: ignore[arg-type]
    return decisions


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def values_at(cfg: TrialConfig, keys: Sequence[str], epoch: int) -> dict[str, float]:
    """The values of `keys` in force at `epoch` (a schedule's value then)."""
    flat = cfg.to_flat()
    return {k: float(flat[k].at(epoch)) if isinstance(flat[k], Schedule) else float(flat[k]) for k in keys}


def explore(rules: PopulationRules, values: Mapping[str, float], rng: random.Random) -> dict[str, float]:
    """PBT's perturbation, key by key: with `resample_probability` a fresh draw from the space,
    else the value times a random factor (a choice: its neighbour option), kept inside the space's
    bounds (Ray's lets a value leave them; a space's bounds are the user's)."""
    new: dict[str, float] = {}
    for key in rules.mutate:
        dist, value = rules.dists[key], values[key]
        if rng.random() < rules.resample_probability:
            new[key] = float(from_unit(dist, rng.random()))
        elif dist.kind == "choice":
            options = [float(v) for v in dist.values]
            index = min(range(len(options)), key=lambda i: abs(options[i] - value))
            new[key] = options[min(max(index + rng.choice((-1, 1)), 0), len(options) - 1)]
        else:
            low, high = (float(v) for v in dist.values)
            moved = min(max(value * rng.choice(rules.factors), low), high)
            new[key] = float(round(moved)) if dist.kind in ("int", "logint") else moved
    return new


def continued(cfg: TrialConfig, new: Mapping[str, float], epoch: int) -> TrialConfig:
    """`cfg` with each of `new`'s values in force from `epoch + 1`: its schedule up to `epoch`,
    then the new value."""
    flat = cfg.to_flat()
    overrides: dict[str, Any] = {}
    for key, value in new.items():
        current = flat[key]
        steps = list(current.steps) if isinstance(current, Schedule) else [(1, float(current))]
        kept = [(start, v) for start, v in steps if start <= epoch]
        if kept[-1][1] != value:
            kept.append((epoch + 1, float(value)))
        overrides[key] = Schedule(tuple(kept)) if len(kept) > 1 else kept[0][1]
    return cfg.with_overrides(overrides, "<population>")


# ---- PB2 --------------------------------------------------------------------------------------

def _learn(rules: PopulationRules, epoch: int, arrivals: Mapping[str, Arrival], history: PopulationHistory) -> None:
    """Each scored member's segment ending at `epoch`, for PB2's model; starts of the next segments."""
    for tid, arrival in sorted(arrivals.items()):
        if arrival.diverged or not _finite(arrival.score):
            continue
        cfg = TrialConfig.from_mapping(arrival.config, "<population>")
        values = values_at(cfg, rules.mutate, epoch)
        before = history.start.get(tid)
        if before is not None:
            unit = tuple(to_unit(rules.dists[k], values[k]) if rules.dists[k].kind in ("uniform", "loguniform")
                         else 0.0 for k in rules.mutate)
            history.segments.append(Segment(epoch, before, float(arrival.score), unit))  # type: ignore[arg-type]
        history.start[tid] = float(arrival.score)  # type: ignore[arg-type]


def _pb2_values(rules: PopulationRules, epoch: int, donor_score: float, history: PopulationHistory,
                chosen: list[tuple[float, ...]], rng: random.Random) -> dict[str, float]:
    """PB2's choice (Parker-Holder et al. 2020): a time-varying Gaussian process models how much
    an interval improves the score from (time, score before, values); the next values maximise
    its upper confidence bound at (now, the donor's score). Values chosen for other copies at this
    boundary count as observed at their predicted mean, so a batch spreads out. Candidates are 512
    Sobol points (Ray's uses L-BFGS-B restarts). Too little data (the first boundary): a draw."""
    d = len(rules.mutate)
    segments = history.segments[-1000:]
    if len(segments) < 2:
        return {k: float(from_unit(rules.dists[k], rng.random())) for k in rules.mutate}
    sign = direction(rules.mode).sign
    t = np.array([s.epoch for s in segments], dtype=float)
    r = np.array([s.before for s in segments], dtype=float)
    x = np.array([s.values for s in segments], dtype=float).reshape(len(segments), d)
    y = sign * (np.array([s.after for s in segments]) - r)
    t_scale = max(t.max() - t.min(), 1.0)
    r_lo, r_span = r.min(), max(r.max() - r.min(), 1e-9)
    y = (y - y.mean()) / (y.std() if y.std() > 0 else 1.0)
    y = np.clip(y, -2.0, 2.0)
    feats = np.column_stack([(r - r_lo) / r_span, x])
    eps = 0.1

    def kernel(fa: np.ndarray, ta: np.ndarray, fb: np.ndarray, tb: np.ndarray) -> np.ndarray:
        sq = ((fa[:, None, :] - fb[None, :, :]) ** 2).sum(-1)
        decay = (1 - eps) ** (np.abs(ta[:, None] - tb[None, :]) / t_scale * len(set(t.tolist())) / 2)
        return np.exp(-sq / (2 * 0.25)) * decay

    import torch

    cands = torch.quasirandom.SobolEngine(d, scramble=True, seed=rules.seed * 1009 + epoch + len(chosen)) \
        .draw(512).double().numpy()
    c_feats = np.column_stack([np.full(len(cands), (donor_score - r_lo) / r_span), cands])
    c_t = np.full(len(cands), float(epoch))
    obs_f, obs_t, obs_y = feats, t, y
    noise = 1e-2
    k_obs = kernel(obs_f, obs_t, obs_f, obs_t) + noise * np.eye(len(obs_y))
    k_c = kernel(c_feats, c_t, obs_f, obs_t)
    solve = np.linalg.solve(k_obs, np.column_stack([obs_y, k_c.T]))
    mean = k_c @ solve[:, 0]
    if chosen:  # the variance model also sees this batch's picks (Desautels et al. 2014)
        pick_f = np.column_stack([np.full(len(chosen), (donor_score - r_lo) / r_span), np.array(chosen)])
        all_f, all_t = np.vstack([obs_f, pick_f]), np.concatenate([obs_t, np.full(len(chosen), float(epoch))])
        k_all = kernel(all_f, all_t, all_f, all_t) + noise * np.eye(len(all_t))
        k_ca = kernel(c_feats, c_t, all_f, all_t)
        var = 1.0 - np.einsum("ij,ji->i", k_ca, np.linalg.solve(k_all, k_ca.T))
    else:
        var = 1.0 - np.einsum("ij,ji->i", k_c, solve[:, 1:])
    kappa = math.sqrt(0.2 + max(0.0, math.log(0.4 * len(segments))))
    best = cands[int(np.argmax(mean + kappa * np.sqrt(np.clip(var, 0.0, None))))]
    return {k: float(from_unit(rules.dists[k], float(u))) for k, u in zip(rules.mutate, best, strict=True)}
