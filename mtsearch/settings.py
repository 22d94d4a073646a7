"""How a study runs: the `search`, `scheduler`, `resources`, `failure` and `storage` sections of a
space file.

Each section is a frozen dataclass, the one place its keys and defaults are written (one line a
key), and a table of how each key is read (`FIELDS`: coercion, check), read the way trial config
keys are (`mtsearch.config`'s coercions and checks), so an error names the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtsearch.errors import InvalidInput, did_you_mean
from mtsearch.metrics import MODES, OBJECTIVES, TEST_METRICS, default_mode
from mtsearch.values import as_float, as_int, at_least, one_of, positive

ALGORITHMS: tuple[str, ...] = ("tpe", "random", "grid", "cmaes")
SCHEDULERS: tuple[str, ...] = ("asha", "none", "pbt", "pb2")
POPULATION_BASED: tuple[str, ...] = ("pbt", "pb2")
# the scheduler keys each type reads (a key of another type is refused, naming the type it is for)
SCHEDULER_KEYS: dict[str, tuple[str, ...]] = {
    "asha": ("type", "grace_period", "reduction_factor"),
    "none": ("type", "grace_period", "reduction_factor"),
    "pbt": ("type", "perturbation_interval", "burn_in", "quantile", "resample_probability",
            "perturbation_factors", "population", "mutate"),
    "pb2": ("type", "perturbation_interval", "burn_in", "quantile", "perturbation_factors", "population",
            "mutate"),
}
MIRRORS: tuple[str, ...] = ("tensorboard", "mlflow")
AUTO = "auto"


@dataclass(frozen=True)
class SearchSettings:
    algorithm: str = "tpe"  # a grid file's default is grid
    num_samples: int = 16
    max_concurrent: int = 2
    seed: int = 0
    seeds_per_trial: int = 1  # a sampled configuration trains this many seeds in one process; their mean scores


@dataclass(frozen=True)
class SchedulerSettings:
    type: str = "asha"
    grace_period: int = 1  # asha
    reduction_factor: float = 3.0  # asha
    perturbation_interval: int = 4  # pbt, pb2: epochs between exploits
    burn_in: int | None = None  # no exploit before this epoch (None: the tracking warm-up)
    quantile: float = 0.25  # the bottom quantile copies the top one
    resample_probability: float = 0.25  # pbt: a mutated key is drawn afresh, else multiplied
    perturbation_factors: tuple[float, ...] = (1.2, 0.8)  # pbt: what a kept key is multiplied by
    population: int = 4  # the trials that train side by side
    mutate: tuple[str, ...] | None = None  # the searched keys PBT changes mid-run (None: all it may)

    @property
    def population_based(self) -> bool:
        return self.type in POPULATION_BASED


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | str = AUTO  # a fraction, whole GPUs, or AUTO: sized from memory
    max_trials_per_gpu: int = 8  # the cap on AUTO's packing (and on OOM retries' neighbours)
    trials_per_process: int | str = AUTO  # trials of one shape side by side in a process: AUTO, 1 or K

    @property
    def auto(self) -> bool:
        return self.gpus_per_trial == AUTO


@dataclass(frozen=True)
class FailureSettings:
    max_failures: int = 0  # retries of the configuration's own failures
    max_restarts: int = 3  # retries after faults of the machine, counted apart


@dataclass(frozen=True)
class Storage:
    """The checkpoints of the best `keep_checkpoints` finished trials are kept, others' deleted;
    `mirror` copies each epoch's rows live to TensorBoard and/or MLflow."""

    keep_checkpoints: int = 3
    mirror: tuple[str, ...] = ()
    tensorboard_dir: str | None = None
    mlflow_uri: str | None = None


SECTIONS: dict[str, type] = {"search": SearchSettings, "scheduler": SchedulerSettings,
                             "resources": Resources, "failure": FailureSettings, "storage": Storage}
# keys of earlier versions a new space file may not use: what they are called now
RENAMED: dict[str, str] = {"resources.fuse": "resources.trials_per_process"}


def seeds_of(seed: int, count: int) -> list[int]:
    """The seeds of one configuration under `search.seeds_per_trial: count`: seed .. seed + count - 1."""
    return [seed + k for k in range(count)]


def defaults(section: str) -> dict[str, Any]:
    """A section's keys and their defaults, in file order."""
    return {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}


def as_record(settings: Any) -> dict[str, Any]:
    """A section's values as a space.yaml writes them (tuples as lists); a scheduler writes its own type's keys."""
    values = dataclasses.asdict(settings)
    if isinstance(settings, SchedulerSettings):
        values = {k: v for k, v in values.items() if k in SCHEDULER_KEYS[settings.type]}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _section(raw: Any, key: str, source: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidInput(source, key, "expected a mapping", raw)
    for sub in raw:
        dotted = f"{key}.{sub}"
        if dotted in RENAMED:
            raise InvalidInput(source, dotted, f"is now called {RENAMED[dotted]} (same values): rename it")
        if sub not in allowed:
            raise InvalidInput(source, dotted, "unknown key" + did_you_mean(str(sub), allowed))
    return dict(raw)


@dataclass(frozen=True)
class SettingField:
    """How one key of a settings section is read: coercion, check (as config keys)."""

    coerce: Callable[[Any], Any]
    check: Callable[[Any], str | None] | None = None


def _more_than_one(v: float) -> str | None:
    return None if v > 1 else "must be > 1"


def _auto_or(coerce: Callable[[Any], Any], expected: str) -> Callable[[Any], Any]:
    """A coercion that lets `auto` through and reads anything else with `coerce`."""
    def read(value: Any) -> Any:
        if value == AUTO:
            return AUTO
        try:
            return coerce(value)
        except ValueError:
            raise ValueError(f"expected {expected}") from None
    return read


_gpus = _auto_or(as_float, "a number of GPUs or auto")


def _gpu_share(v: float | str) -> str | None:
    if v == AUTO:
        return None
    assert isinstance(v, float)
    if v < 0:
        return "must be >= 0"
    if v > 1 and not v.is_integer():
        return "fractions are for sharing one GPU: use a value <= 1 or a whole number"
    return None


_per_process = _auto_or(as_int, "auto, 1 (one trial a process) or a number of trials per process")


def _per_process_count(value: int | str) -> str | None:
    if value == AUTO:
        return None
    assert isinstance(value, int)
    if value < 1:
        return "must be auto, 1 (one trial a process) or a number of trials per process"
    return None


def _optional_epochs(value: Any) -> int | None:
    return None if value is None else as_int(value)


def _fraction_to_half(v: float) -> str | None:
    return None if 0 < v <= 0.5 else "must be > 0 and <= 0.5 (the bottom and the top quantile may not overlap)"


def _probability(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def _factors(value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("expected a non-empty list of factors, e.g. [1.2, 0.8]")
    factors = tuple(as_float(v) for v in value)
    if any(not f > 0 for f in factors):
        raise ValueError("factors must be > 0")
    return factors


def _key_list(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError("expected a list of searched keys, e.g. [loss.w_track, loss.w_dir]")
    return tuple(dict.fromkeys(items))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _mirror_list(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError("expected a list of tensorboard, mlflow")
    for item in items:
        if item not in MIRRORS:
            raise ValueError(f"must be tensorboard or mlflow{did_you_mean(item, MIRRORS)}")
    return tuple(dict.fromkeys(items))


FIELDS: dict[str, dict[str, SettingField]] = {
    "search": {
        "algorithm": SettingField(_text, one_of(ALGORITHMS)),
        "num_samples": SettingField(as_int, at_least(1)),
        "max_concurrent": SettingField(as_int, at_least(1)),
        "seed": SettingField(as_int, at_least(0)),
        "seeds_per_trial": SettingField(as_int, at_least(1)),
    },
    "scheduler": {
        "type": SettingField(_text, one_of(SCHEDULERS)),
        "grace_period": SettingField(as_int, at_least(1)),
        "reduction_factor": SettingField(as_float, _more_than_one),
        "perturbation_interval": SettingField(as_int, at_least(1)),
        "burn_in": SettingField(_optional_epochs, lambda v: None if v is None or v >= 0 else "must be >= 0"),
        "quantile": SettingField(as_float, _fraction_to_half),
        "resample_probability": SettingField(as_float, _probability),
        "perturbation_factors": SettingField(_factors, None),
        "population": SettingField(as_int, at_least(2)),
        "mutate": SettingField(_key_list, None),
    },
    "resources": {
        "cpus_per_trial": SettingField(as_float, positive),
        "gpus_per_trial": SettingField(_gpus, _gpu_share),
        "max_trials_per_gpu": SettingField(as_int, at_least(1)),
        "trials_per_process": SettingField(_per_process, _per_process_count),
    },
    "failure": {
        "max_failures": SettingField(as_int, at_least(0)),
        "max_restarts": SettingField(as_int, at_least(0)),
    },
    "storage": {
        "keep_checkpoints": SettingField(as_int, at_least(0)),
        "mirror": SettingField(_mirror_list, None),
        "tensorboard_dir": SettingField(_optional_text, None),
        "mlflow_uri": SettingField(_optional_text, None),
    },
}


def _settings(
    raw: Any, section: str, source: str, allowed: tuple[str, ...] | None = None, **overrides: Any
) -> dict[str, Any]:
    """A settings section read through FIELDS: unknown keys, coercion and checks name the key;
    a key the file leaves out takes `overrides` or the section's default."""
    fields = FIELDS[section]
    sec = _section(raw, section, source, allowed or tuple(fields))
    values: dict[str, Any] = {}
    for name, default in defaults(section).items():
        spec = fields[name]
        key = f"{section}.{name}"
        raw_value = sec.get(name, overrides.get(name, default))
        try:
            value = spec.coerce(raw_value)
        except ValueError as exc:
            raise InvalidInput(source, key, str(exc), raw_value) from None
        problem = spec.check(value) if spec.check else None
        if problem:
            raise InvalidInput(source, key, problem, raw_value)
        values[name] = value
    return values


def read_search(raw: Any, source: str, ablation: bool) -> SearchSettings:
    allowed = ("max_concurrent",) if ablation else None  # a grid file enumerates its trials
    if ablation and isinstance(raw, Mapping) and "seeds_per_trial" in raw:
        raise InvalidInput(source, "search.seeds_per_trial", "a grid file repeats its cells over seeds "
                           "with `repeats: N`")
    values = _settings(raw, "search", source, allowed, **({"algorithm": "grid"} if ablation else {}))
    if values["algorithm"] == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise InvalidInput(source, "search.algorithm",
                           "cmaes needs the `cmaes` package (pip install cmaes)", "cmaes")
    return SearchSettings(**values)


def read_scheduler(raw: Any, source: str, default_type: str) -> SchedulerSettings:
    """The scheduler section; a key of another scheduler type is refused, naming the type it is for."""
    kind = raw.get("type", default_type) if isinstance(raw, Mapping) else default_type
    if isinstance(raw, Mapping) and kind in SCHEDULER_KEYS:
        for sub in raw:
            owners = [t for t, keys in SCHEDULER_KEYS.items() if sub in keys and t != "none"]
            if sub not in SCHEDULER_KEYS[kind] and owners and f"scheduler.{sub}" not in RENAMED:
                raise InvalidInput(source, f"scheduler.{sub}", f"is a key of scheduler type {' and '.join(owners)}, "
                                   f"not of {kind}", raw[sub])
    return SchedulerSettings(**_settings(raw, "scheduler", source, type=default_type))


def read_resources(raw: Any, source: str) -> Resources:
    return Resources(**_settings(raw, "resources", source))


def read_failure(raw: Any, source: str) -> tuple[int, int]:
    """(max_failures, max_restarts): retries of a failing configuration, and of a failing machine."""
    failure = FailureSettings(**_settings(raw, "failure", source))
    return failure.max_failures, failure.max_restarts


def read_storage(raw: Any, source: str) -> Storage:
    """The storage section; a mirror needs its destination."""
    values = _settings(raw, "storage", source)
    where = {"tensorboard": "tensorboard_dir", "mlflow": "mlflow_uri"}
    for mirror in values["mirror"]:
        if values[where[mirror]] is None:
            raise InvalidInput(source, f"storage.{where[mirror]}", f"is needed to mirror to {mirror}")
    return Storage(**values)


def check_mirror_extras(storage: Storage, source: str) -> None:
    """Before a search starts (not when a recorded study is read): each mirror's extra is there."""
    for mirror in storage.mirror:
        try:
            found = importlib.util.find_spec(mirror)
        except ValueError:  # a module set to None in sys.modules: as good as missing
            found = None
        if found is None:
            raise InvalidInput(source, "storage.mirror",
                               f"{mirror} needs its extra: pip install 'mtsearch[{mirror}]'", mirror)


def check_seeds_per_trial(search: SearchSettings, resources: Resources, space: Mapping[str, Any],
                          source: str) -> None:
    """A configuration's N seeds are base.seed .. base.seed + N - 1, trained side by side in one process."""
    if search.seeds_per_trial <= 1:
        return
    if "seed" in space:
        raise InvalidInput(source, "space.seed", "set search.seeds_per_trial (seeds base.seed .. base.seed"
                           " + N - 1) or a searched seed, not both")
    if isinstance(resources.trials_per_process, int) and resources.trials_per_process > 1:
        raise InvalidInput(source, "resources.trials_per_process", "a configuration's seeds already share "
                           "one process (search.seeds_per_trial): use auto or 1 with it", resources.trials_per_process)


def read_objective(data: Mapping[str, Any], source: str) -> tuple[str, str]:
    """`metric` and `mode`: an epoch metric of the validation split, and min or max."""
    metric = data.get("metric", "val_hit1")
    if metric in TEST_METRICS:
        raise InvalidInput(source, "metric", "the test split is reported, never optimised; use a validation "
                           "metric such as " + metric.replace("test_", "val_", 1), metric)
    if metric not in OBJECTIVES:
        raise InvalidInput(source, "metric", "must be an epoch metric: " + ", ".join(OBJECTIVES)
                           + did_you_mean(str(metric), OBJECTIVES), metric)
    mode = data.get("mode", default_mode(metric))
    if mode not in MODES:
        optuna_words = {"maximize": "max", "maximise": "max", "minimize": "min", "minimise": "min"}
        hint = (f"; did you mean {optuna_words[str(mode).lower()]!r}?" if str(mode).lower() in optuna_words
                else did_you_mean(str(mode), MODES))
        raise InvalidInput(source, "mode", "must be min or max" + hint, mode)
    return metric, mode

