"""Space files and grid files -> a validated `SpaceSpec`, checked before anything runs.

A space file (`mtsearch run`) maps dotted config keys to distributions; a grid file
(`mtsearch ablate`) maps them to value lists and repeats every cell over seeds. Every value a
trial could get is checked through `TrialConfig.with_overrides`, so a bad bound fails here with
the key that caused it instead of inside a trial an hour later. Light imports only (stdlib, yaml).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mtsearch.config import EXECUTION_KEYS, TrialConfig, column_type, config_keys, flatten_keys
from mtsearch.distributions import (
    Distribution,
    check_space_values,
    expand_params,
    factor_keys,
    grid_section,
    plain,
    prefixed_call,
    show,
    space_section,
)
from mtsearch.errors import InvalidInput, did_you_mean
from mtsearch.milestones import evaluated_at_milestones, with_milestones
from mtsearch.presets import branches_label
from mtsearch.records import VERSION_KEY, stamped, unstamped, upgrade_space
from mtsearch.settings import (
    Resources,
    SchedulerSettings,
    SearchSettings,
    Storage,
    as_record,
    check_seeds_per_trial,
    read_failure,
    read_objective,
    read_resources,
    read_scheduler,
    read_search,
    read_storage,
)
from mtsearch.values import as_int
from mtsearch.yamlio import dump_yaml, read_yaml

SEARCH, ABLATION = "search", "ablation"  # a space file (`run`) and a grid file (`ablate`)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

_SEARCH_TOP = ("name", "base", "metric", "mode", "search", "scheduler", "resources", "failure", "storage",
               "space")
_GRID_TOP = ("name", "base", "metric", "mode", "search", "scheduler", "resources", "failure", "storage",
             "grid", "repeats", "reference")


@dataclass(frozen=True)
class SpaceSpec:
    """A validated study: what to train (`base` + searched keys), how to search, where it lives."""

    kind: str  # SEARCH (a space file, `mtsearch run`) or ABLATION (a grid file, `mtsearch ablate`)
    name: str
    source: str
    base: TrialConfig
    base_overrides: dict[str, Any]
    metric: str
    mode: str
    search: SearchSettings
    scheduler: SchedulerSettings
    resources: Resources
    max_failures: int
    space: dict[str, Distribution] = field(default_factory=dict)
    repeats: int = 1
    reference: dict[str, Any] | None = None
    storage: Storage = field(default_factory=Storage)  # storage.*: retention and live mirrors
    max_restarts: int = 3  # failure.max_restarts: retries after faults of the machine

    # ---- derived --------------------------------------------------------------------------------
    @property
    def is_enumerated(self) -> bool:
        """True when trials are known before they start: a grid (an ablation, or a search with
        `algorithm: grid`), or a population-based search's population."""
        return self.is_ablation or self.search.algorithm == "grid" or self.scheduler.population_based

    @property
    def concurrent_trials(self) -> int:
        """How many trials run at once at most: a population trains all its members side by side."""
        return self.scheduler.population if self.scheduler.population_based else self.search.max_concurrent

    @property
    def is_ablation(self) -> bool:
        """A grid file (`mtsearch ablate`): cells x repeats, a `cell` column, a reference cell."""
        return self.kind == ABLATION

    @property
    def space_section(self) -> str:
        """Where the file lists its searched keys: `grid` (ablations) or `space` (searches)."""
        return "grid" if self.is_ablation else "space"

    @property
    def searched_keys(self) -> list[str]:
        """Config keys that vary between trials (Parquet columns); `seed` for repeated grids."""
        keys = [k for factor in self.space for k in factor_keys(factor)]
        if self.is_ablation and self.repeats > 1 and "seed" not in keys:
            keys.append("seed")
        return keys

    @property
    def cell_keys(self) -> list[str]:
        """The keys that define a grid cell (the grid factors, not the seed)."""
        return [k for factor in self.space for k in factor_keys(factor) if k != "seed"]

    @property
    def total_trials(self) -> int:
        if self.scheduler.population_based:
            return self.scheduler.population
        if not self.is_enumerated:
            return self.search.num_samples
        cells = math.prod(len(d.values) for d in self.space.values()) if self.space else 1
        return cells * (self.repeats if self.is_ablation else 1)

    @property
    def max_epochs(self) -> int:
        return self.base.optim.epochs

    def param_types(self) -> dict[str, str]:
        """Column type per searched key, from the config field's type: float, int, string or bool."""
        return {key: column_type(key) for key in self.searched_keys}

    def trial_config(self, params: Mapping[str, Any]) -> TrialConfig:
        """The full config of one trial: base plus its sampled values.

        `threads` is pinned to the trial's CPUs unless the base sets it: CPU results depend on the
        thread count, so an exported trial reproduces its metrics under `mtsearch train`.
        """
        overrides = dict(expand_params(params))
        if self.base.threads is None and "threads" not in overrides:
            overrides["threads"] = max(1, int(self.resources.cpus_per_trial))
        return self.base.with_overrides(overrides, self.source)

    def cell_of(self, params: Mapping[str, Any]) -> str:
        """A readable cell id, `model.branches=cls+track,loss.w_dir=2` (seed excluded)."""
        flat = expand_params(params)
        return ",".join(f"{k}={show(flat.get(k))}" for k in self.cell_keys)

    def reference_cell(self) -> str | None:
        return self.cell_of(self.reference) if self.reference is not None else None

    def with_cli(
        self,
        name: str | None = None,
        num_samples: int | None = None,
        max_concurrent: int | None = None,
        data_root: str | None = None,
        repeats: int | None = None,
    ) -> SpaceSpec:
        """Command-line overrides, validated like the file's values."""
        spec = self
        if name is not None:
            spec = replace(spec, name=_check_name(name, "--name", None))
        if repeats is not None:
            if not spec.is_ablation or "seed" in spec.space:
                raise InvalidInput(None, "--repeats", "applies to grid files that repeat seeds with `repeats`",
                                   repeats)
            if repeats < 1:
                raise InvalidInput(None, "--repeats", "must be >= 1", repeats)
            spec = replace(spec, repeats=repeats)
        if num_samples is not None:
            if spec.scheduler.population_based:
                raise InvalidInput(None, "--num-samples", "does not apply to a population-based search "
                                   "(scheduler.population sets the trial count)", num_samples)
            if spec.is_enumerated:
                raise InvalidInput(None, "--num-samples", "does not apply to grids (the grid sets the trial count)",
                                   num_samples)
            if num_samples < 1:
                raise InvalidInput(None, "--num-samples", "must be >= 1", num_samples)
            spec = replace(spec, search=replace(spec.search, num_samples=num_samples))
        if max_concurrent is not None:
            if max_concurrent < 1:
                raise InvalidInput(None, "--max-concurrent", "must be >= 1", max_concurrent)
            spec = replace(spec, search=replace(spec.search, max_concurrent=max_concurrent))
        if data_root is not None:
            overrides = {**spec.base_overrides, "data.root": data_root}
            base = spec.base.with_overrides({"data.root": data_root}, "--data")
            spec = replace(spec, base=base, base_overrides=overrides)
            check_space_values(spec.space, base, spec.source, spec.space_section)
        return spec

    # ---- output ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The study as run, every default written out; `load_space` reads it back unchanged."""
        out: dict[str, Any] = {
            "name": self.name,
            "base": self.filled_base().to_dict(),
            "metric": self.metric,
            "mode": self.mode,
            "search": {**as_record(self.search),
                       "num_samples": self.total_trials if self.is_enumerated else self.search.num_samples},
            "scheduler": as_record(self.scheduler),
            "resources": as_record(self.resources),
            "failure": {"max_failures": self.max_failures, "max_restarts": self.max_restarts},
            "storage": {"keep_checkpoints": self.storage.keep_checkpoints,
                        **({"mirror": list(self.storage.mirror), "tensorboard_dir": self.storage.tensorboard_dir,
                            "mlflow_uri": self.storage.mlflow_uri} if self.storage.mirror else {})},
        }
        if self.is_ablation:
            out["search"] = {"max_concurrent": out["search"]["max_concurrent"]}  # a grid enumerates its trials
            out["grid"] = {k: [plain(v) for v in d.values] for k, d in self.space.items()}  # tied: lists
            out["repeats"] = self.repeats
            if self.reference is not None:
                out["reference"] = {k: plain(v) for k, v in self.reference.items()}
        else:
            out["space"] = {k: {d.kind: [plain(v) for v in d.values]} for k, d in self.space.items()}
        return out

    def filled_base(self) -> TrialConfig:
        """The base with every default the preset resolves written out where no searched key
        changes it (a searched preset leaves crop and lr to each trial); `threads` stays unset:
        each trial takes it from `cpus_per_trial`, which a resume may change."""
        unset = [key for key, value in self.base.to_flat().items() if value is None and key != "threads"]
        variants = [self.base.resolved().to_flat()]
        for factor, dist in self.space.items():
            for value in dist.values:
                try:
                    variants.append(self.trial_config({factor: value}).resolved().to_flat())
                except InvalidInput:  # a value the base cannot take alone (checked per trial)
                    continue
        filled = {key: variants[0][key] for key in unset if variants[0].get(key) is not None
                  and len({repr(variant.get(key)) for variant in variants}) == 1}
        return self.base.with_overrides(filled, self.source) if filled else self.base

    def to_yaml(self) -> str:
        return dump_yaml(stamped(self.to_dict()))

    @property
    def count(self) -> int:
        """What `--resume` may raise to extend a study: `num_samples`, or a grid file's `repeats`."""
        return self.repeats if self.is_ablation else self.search.num_samples

    @property
    def count_flag(self) -> str:
        return "--repeats" if self.is_ablation else "--num-samples"

    def with_count(self, count: int) -> SpaceSpec:
        if self.is_ablation:
            return replace(self, repeats=count)
        return replace(self, search=replace(self.search, num_samples=count))

    def identity(self) -> dict[str, Any]:
        """What must not change between a study's start and its resume (the count may grow)."""
        data = self.to_dict()
        data["search"] = {k: v for k, v in data["search"].items() if k not in ("max_concurrent", "num_samples")}
        data.pop("repeats", None)
        del data["storage"]  # retention changes no result: a resume may change it
        del data["resources"]  # nor where trials run: a study may resume on other machines
        del data["failure"]["max_restarts"]  # nor how often a machine's fault is retried
        for key in EXECUTION_KEYS:  # nor how a trial computes (a default that changed, too)
            section, _, name = key.rpartition(".")
            (data["base"][section] if section else data["base"]).pop(name, None)
        return data


# ---- loading ----------------------------------------------------------------------------------

def load_space(path: str | Path, kind: str | None = None) -> SpaceSpec:
    """Read and validate a space file (`kind=SEARCH`) or grid file (`kind=ABLATION`).

    `kind=None` decides from the file (a `grid:` section -> ABLATION). Errors are `InvalidInput` naming the
    file and the dotted key.
    """
    data = read_yaml(path)
    return space_from_mapping(data, str(path), kind, default_name=Path(path).stem)


def space_from_mapping(
    data: Any, source: str, kind: str | None = None, default_name: str = "study"
) -> SpaceSpec:
    if not isinstance(data, Mapping):
        raise InvalidInput(source, None, "expected a mapping (name, base, metric, search, space ...)",
                           type(data).__name__ if data is not None else "an empty file")
    # a study's space.yaml given back as a space file: read as the record it is
    data = upgrade_space(data, source) if isinstance(data, Mapping) and VERSION_KEY in data else unstamped(data)
    if kind is None:
        kind = ABLATION if "grid" in data else SEARCH
    allowed = _GRID_TOP if kind == ABLATION else _SEARCH_TOP
    for key in data:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            if kind == SEARCH and key in ("grid", "repeats", "reference"):
                hint = "; grid files run with `mtsearch ablate`"
            if kind == ABLATION and key == "space":
                hint = "; space files run with `mtsearch run` (a grid file uses `grid:`)"
            raise InvalidInput(source, str(key), "unknown key" + hint)

    name = _check_name(data.get("name", default_name), "name", source)

    raw_base = data.get("base") or {}
    if not isinstance(raw_base, Mapping):
        raise InvalidInput(source, "base", "expected a mapping of config keys", raw_base)
    base_overrides = _prefixed(prefixed_call(lambda: flatten_keys(raw_base, source), "base"), "base", source)
    base = prefixed_call(lambda: TrialConfig().with_overrides(base_overrides, source), "base")

    metric, mode = read_objective(data, source)

    search = read_search(data.get("search"), source, kind == ABLATION)
    default_sched = "asha" if kind == SEARCH and search.algorithm != "grid" else "none"
    scheduler = read_scheduler(data.get("scheduler"), source, default_sched)
    base = evaluated_at_milestones(base, scheduler, kind == SEARCH and "eval.every" not in base_overrides)
    resources = read_resources(data.get("resources"), source)
    max_failures, max_restarts = read_failure(data.get("failure"), source)
    storage = read_storage(data.get("storage"), source)

    repeats = 1
    if kind == ABLATION:
        space = grid_section(data.get("grid"), source)
        repeats = _repeats(data.get("repeats", 1), source)
        if repeats > 1 and "seed" in space:
            raise InvalidInput(source, "grid.seed", "set either `repeats` (seeds 0..N-1) or a seed grid, not both")
    else:
        space = space_section(data.get("space"), source, search.algorithm)
        check_seeds_per_trial(search, resources, space, source)

    check_space_values(space, base, source, "grid" if kind == ABLATION else "space")
    spec = SpaceSpec(
        kind=kind, name=name, source=source, base=base, base_overrides=base_overrides,
        metric=metric, mode=mode, search=search, scheduler=scheduler, resources=resources,
        max_failures=max_failures, space=space, repeats=repeats, storage=storage,
        max_restarts=max_restarts,
    )
    if kind == ABLATION and data.get("reference") is not None:
        spec = replace(spec, reference=_reference(data["reference"], spec))
    if base.device.startswith("cuda") and resources.gpus_per_trial == 0.0:
        raise InvalidInput(source, "resources.gpus_per_trial", f"must be > 0 when base.device is {base.device}", 0)
    if scheduler.population_based:
        from mtsearch.mutations import check_population_space

        scheduler = check_population_space(scheduler, search, space, base, data.get("search"), source,
                                           kind == ABLATION)
        spec = replace(spec, scheduler=scheduler, search=replace(search, num_samples=scheduler.population))
    if scheduler.type == "asha":
        if "optim.epochs" in space:
            raise InvalidInput(source, "space.optim.epochs",
                               "cannot be searched with the asha scheduler (max_t = optim.epochs)")
        if scheduler.grace_period > base.optim.epochs:
            raise InvalidInput(source, "scheduler.grace_period",
                               f"must be <= optim.epochs ({base.optim.epochs})", scheduler.grace_period)
    return replace(spec, base=with_milestones(spec.base, scheduler))


def load_study_space(study_dir: str | Path) -> SpaceSpec:
    """The `space.yaml` a study was run with (for reports, leaderboards and resume)."""
    path = Path(study_dir) / "space.yaml"
    data = upgrade_space(read_yaml(path), path)
    kind = ABLATION if isinstance(data, Mapping) and "grid" in data else SEARCH
    return space_from_mapping(data, str(path), kind, default_name=Path(study_dir).name)


# ---- sections ---------------------------------------------------------------------------------

def with_study_count(spec: SpaceSpec, study_dir: str | Path) -> SpaceSpec:
    """For a plain `--resume`: the count the study recorded where the file asks for fewer (an
    extended study keeps its extension)."""
    if not (Path(study_dir) / "space.yaml").exists():
        return spec
    saved = load_study_space(study_dir)
    return spec.with_count(saved.count) if saved.count > spec.count else spec


def _check_name(name: Any, key: str, source: str | None) -> str:
    """A study name is one plain folder name: it can never point outside the trials folder."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidInput(source, key, "must be a simple folder name (letters, digits, . _ -; "
                           "no '/', no '..', at most 100 characters)", name)
    return name


def _repeats(value: Any, source: str) -> int:
    try:
        repeats = as_int(value)
    except ValueError as exc:
        raise InvalidInput(source, "repeats", str(exc), value) from None
    if repeats < 1:
        raise InvalidInput(source, "repeats", "must be >= 1", value)
    return repeats


def _reference(raw: Any, spec: SpaceSpec) -> dict[str, Any]:
    source = spec.source
    if not isinstance(raw, Mapping):
        raise InvalidInput(source, "reference", "expected a mapping key -> value naming the baseline cell", raw)
    ref: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in spec.cell_keys:
            raise InvalidInput(source, f"reference.{key}", "not a grid factor"
                               + did_you_mean(str(key), spec.cell_keys))
        if key == "model.branches":
            try:
                value = branches_label(value)
            except ValueError as exc:
                raise InvalidInput(source, f"reference.{key}", str(exc), value) from None
        if key in spec.space and value not in spec.space[key].values:
            raise InvalidInput(source, f"reference.{key}", "not one of the grid's values "
                               + str([plain(v) for v in spec.space[key].values]), value)
        ref[key] = value
    missing = [k for k in spec.cell_keys if k not in ref]
    if missing:
        raise InvalidInput(source, "reference", "must name a value for every grid factor; missing "
                           + ", ".join(missing))
    for factor, dist in spec.space.items():
        if "," in factor:
            level = tuple(ref[k] for k in factor_keys(factor))
            if level not in dist.values:
                raise InvalidInput(source, "reference", f"({', '.join(factor_keys(factor))}) is not one of the "
                                   f"grid's levels {[list(v) for v in dist.values]}", list(level))
    return ref


# ---- helpers ----------------------------------------------------------------------------------

def enumerated_points(spec: SpaceSpec) -> list[dict[str, Any]]:
    """Every trial of a grid: the cells in file order, each repeated over seeds 0..repeats-1."""
    keys = list(spec.space)
    points = []
    for combo in itertools.product(*(spec.space[k].values for k in keys)):
        for seed in range(spec.repeats if spec.is_ablation else 1):
            point = expand_params(dict(zip(keys, combo)))
            if spec.is_ablation and spec.repeats > 1:
                point["seed"] = seed
            points.append(point)
    return points


def _prefixed(flat: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    keys = config_keys()
    for key in flat:
        if key not in keys:
            raise InvalidInput(source, f"{section}.{key}", "unknown config key" + did_you_mean(key, keys))
    return flat


