"""The searched keys of a space or grid file: their distributions, read and checked one key at a
time, and a trial's searched values expanded back into config keys."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtsearch.config import TrialConfig, column_type, config_keys, flatten_keys
from mtsearch.errors import InvalidInput, did_you_mean
from mtsearch.presets import branches_label

# the split a study selects on: every trial of a study must see the same one (SPEC: never searched)
STUDY_WIDE: tuple[str, ...] = ("data.split", "data.val_fraction", "data.selection")
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "loguniform", "int", "logint", "choice", "grid")


@dataclass(frozen=True)
class Distribution:
    """One searched key: `kind` is a DISTRIBUTIONS name; `values` the bounds or the options.

    Bounds are inclusive for `int`/`logint`. Options of `model.branches` are stored as their
    canonical string label (`cls+track`), which Optuna can hash and the config accepts as is.
    """

    kind: str
    values: tuple[Any, ...]

    def to_yaml(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.values)}


def check_key(key: Any, section: str, source: str) -> str:
    keys = config_keys()
    if not isinstance(key, str) or key not in keys:
        raise InvalidInput(source, f"{section}.{key}", "unknown config key" + did_you_mean(str(key), keys))
    if key in ("device", "data.cache_dir", "data.workers"):
        raise InvalidInput(source, f"{section}.{key}", "is a machine setting; put it under base, not in the search")
    if key in STUDY_WIDE:
        raise InvalidInput(source, f"{section}.{key}", "is study-wide (every trial must use the same split); "
                           "set it under base, not in the search")
    return key


def space_section(raw: Any, source: str, algorithm: str) -> dict[str, Distribution]:
    if raw is None or raw == {}:
        raise InvalidInput(source, "space", "needs at least one searched key (e.g. loss.w_track: {loguniform: [1, 100]})")
    if not isinstance(raw, Mapping):
        raise InvalidInput(source, "space", "expected a mapping of config key -> distribution", raw)
    raw = flatten_space(raw, source, "space")
    space: dict[str, Distribution] = {}
    for key, spec in raw.items():
        key = check_key(key, "space", source)
        dotted = f"space.{key}"
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise InvalidInput(source, dotted, "expected one distribution, e.g. {loguniform: [1, 100]}; "
                               "distributions: " + ", ".join(DISTRIBUTIONS), spec)
        kind, args = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            raise InvalidInput(source, dotted, "unknown distribution; use one of " + ", ".join(DISTRIBUTIONS)
                               + did_you_mean(str(kind), DISTRIBUTIONS), kind)
        dist = distribution(key, kind, args, source, dotted)
        if algorithm == "grid" and kind not in ("grid", "choice"):
            raise InvalidInput(source, dotted, "search.algorithm grid needs grid or choice values", kind)
        if algorithm != "grid" and kind == "grid":
            raise InvalidInput(source, dotted, "grid values need search.algorithm: grid (or use choice)")
        if algorithm == "grid":
            dist = Distribution("grid", dist.values)
        space[key] = dist
    return space


def flatten_space(raw: Mapping[str, Any], source: str, section: str) -> dict[str, Any]:
    """Nested sections (`loss: {w_track: {...}}`) as well as dotted keys, through config's
    flattener; a one-key mapping naming a distribution is a value, not a section."""
    def is_distribution(value: Any) -> bool:
        return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS

    return prefixed_call(lambda: flatten_keys(raw, source, is_value=is_distribution), section)


def distribution(key: str, kind: str, args: Any, source: str, dotted: str) -> Distribution:
    integer_key = column_type(key) == "int"
    if kind in ("uniform", "loguniform", "int", "logint"):
        ok = (isinstance(args, (list, tuple)) and len(args) == 2
              and all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args))
        need = "two integers" if kind in ("int", "logint") else "two numbers"
        if not ok or args[0] >= args[1]:
            raise InvalidInput(source, dotted, f"{kind} needs {need} low < high", list(args) if isinstance(args, (list, tuple)) else args)
        low, high = args
        if kind in ("int", "logint"):
            if not all(float(a).is_integer() for a in args):
                raise InvalidInput(source, dotted, f"{kind} needs {need} low < high", list(args))
            low, high = int(low), int(high)
        else:
            low, high = float(low), float(high)
            if integer_key:
                raise InvalidInput(source, dotted, f"{key} takes integers: use int or logint instead of {kind}")
        if kind in ("loguniform", "logint") and low <= 0:
            raise InvalidInput(source, dotted, f"{kind} needs low > 0", list(args))
        if key == "model.branches":
            raise InvalidInput(source, dotted, "model.branches takes choice or grid", kind)
        return Distribution(kind, (low, high))
    # choice / grid
    if not isinstance(args, (list, tuple)) or not args:
        raise InvalidInput(source, dotted, f"{kind} needs a non-empty list of values", args)
    values: list[Any] = []
    for value in args:
        if key == "model.branches":
            try:
                value = branches_label(value)
            except ValueError as exc:
                raise InvalidInput(source, dotted, str(exc), value) from None
        elif isinstance(value, (list, tuple, Mapping)):
            raise InvalidInput(source, dotted, f"{kind} values must be numbers or strings", value)
        if value in values:
            raise InvalidInput(source, dotted, f"{kind} lists a value twice", value)
        values.append(value)
    return Distribution(kind, tuple(values))


def grid_section(raw: Any, source: str) -> dict[str, Distribution]:
    """`key: [values]` factors; `a.x,b.y: [[1, 2], [3, 4]]` ties keys into one factor (paired levels)."""
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidInput(source, "grid", "needs at least one factor (key: [values])", raw)
    raw = flatten_space(raw, source, "grid")
    grid: dict[str, Distribution] = {}
    seen: set[str] = set()
    for factor, values in raw.items():
        dotted = f"grid.{factor}"
        if any(not p.strip() for p in str(factor).split(",")):
            raise InvalidInput(source, dotted, "an empty key; tied keys are listed as `a.x,b.y`")
        parts = [check_key(p.strip(), "grid", source) for p in str(factor).split(",")]
        for part in parts:
            if part in seen:
                raise InvalidInput(source, dotted, f"{part} is in two factors")
            seen.add(part)
        if not isinstance(values, (list, tuple)):
            raise InvalidInput(source, dotted, "expected a list of values", values)
        if not values:
            raise InvalidInput(source, dotted, "an empty factor makes an empty grid", [])
        if len(parts) == 1:
            grid[parts[0]] = distribution(parts[0], "grid", values, source, dotted)
            continue
        levels: list[tuple[Any, ...]] = []
        for level in values:
            if not isinstance(level, (list, tuple)) or len(level) != len(parts):
                raise InvalidInput(source, dotted, f"each level must list {len(parts)} values "
                                   f"({', '.join(parts)})", level)
            level = tuple(distribution(p, "grid", [v], source, dotted).values[0] for p, v in zip(parts, level))
            if level in levels:
                raise InvalidInput(source, dotted, "grid lists a value twice", list(level))
            levels.append(level)
        grid[",".join(parts)] = Distribution("grid", tuple(levels))
    return grid


def factor_keys(factor: str) -> list[str]:
    """The config keys of a grid factor (`loss.w_track,loss.w_dir` -> both)."""
    return factor.split(",")


def expand_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled values keyed by config key: tied factors (`a,b: [x, y]`) become `a: x, b: y`."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if "," in key:
            out.update(zip(factor_keys(key), value))
        else:
            out[key] = value
    return out


def check_space_values(space: Mapping[str, Distribution], base: TrialConfig, source: str, section: str) -> None:
    """Every value a trial can receive must be a valid config value on top of `base`."""
    for key, dist in space.items():
        probes = list(dist.values)
        if dist.kind in ("int", "logint") and dist.values[1] - dist.values[0] > 1:
            probes.insert(1, dist.values[0] + 1)
        for value in probes:
            try:
                base.with_overrides(expand_params({key: value}), source)
            except InvalidInput as exc:
                what = exc.what if exc.key in ("", key) else f"{exc.key}: {exc.what}"
                got = list(value) if isinstance(value, tuple) else value
                raise InvalidInput(source, f"{section}.{key}", what, got) from None


def prefixed_call(build: Callable[[], Any], section: str) -> Any:
    """Run `build`, naming the section in any InvalidInput it raises (`base.optim.lr`)."""
    try:
        return build()
    except InvalidInput as exc:
        raise InvalidInput(exc.file, f"{section}.{exc.key}" if exc.key else section, exc.what, exc.got) from None


def plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
