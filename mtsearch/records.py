"""Every format mtsearch ever wrote, and its upgrade to today's: the one module that knows old files.

A record (a checkpoint, a trial's config in trials.parquet, a study's space.yaml) carries
`record_version`. Records written before the stamp existed are dated here, once, by what they
hold; `upgrade_*` then applies one step per era, oldest first, so the rest of the package reads
the current format only. A change of format adds an era: bump RECORD_VERSION, add its step.

Eras (RECORD_VERSION is the current one):
  1  before the fast path: the trunk, tracking projection and localizer were Conv3d with a time
     kernel of 1, so their weights and Adam moments were 5-D (out, in, 1, k, k)
  2  the 2D trunk; no validation split: evaluations and selection ran on the test split
  3  validation splits (data.val_fraction, data.selection); no tracking keys: the thesis's formula
  4  the tracking keys (loss.sim_weight, track.temperature, ...), not yet stamped
  5  stamped records; the validation split taken greedily (whole groups until the target)
  6  the validation split that comes closest to its target (data.val_carving: closest)
  7  compressed frame cache: clips read from JPEG frames (data.cache_format: jpeg); before, raw;
     data.flip, eval.views and eval.val_views: before, on / clips / clips
  8  resources.trials_per_process; before, resources.fuse (same values); the trials.parquet
     columns fuse_group and fuse_k kept their names
Preset-decided values (DERIVED_KEYS left unset) are a moving default rather than an era: a resumed
run or study keeps the values it recorded (`adopt_recorded`), as when tiny's learning rate changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtsearch.config import DERIVED_KEYS, ModelConfig, TrialConfig, flatten_keys
from mtsearch.errors import InvalidInput
from mtsearch.presets import PRESETS, THESIS_TRACKING, thesis_temperature

RECORD_VERSION = 8
VERSION_KEY = "record_version"
FAST_PATH, VALIDATION, TRACKING_KEYS, CLOSEST_SPLIT, JPEG_CACHE, PER_PROCESS = 2, 3, 4, 6, 7, 8  # each era's first version
# what a run did before the JPEG cache: exact decoded frames, flipped training clips keeping their
# class, the thesis's averaged clips for every evaluation
BEFORE_VIEWS: dict[str, Any] = {"data.cache_format": "raw", "data.flip": "on", "eval.views": "clips",
                                "eval.val_views": "clips"}
# what a run recorded before validation splits did: it evaluated and selected on the test split
TEST_PROTOCOL: dict[str, Any] = {"data.selection": "test", "data.val_fraction": 0.0}


def stamped(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` (a nested config or space) with today's record version, as every writer stores it."""
    return {VERSION_KEY: RECORD_VERSION, **{k: v for k, v in record.items() if k != VERSION_KEY}}


def unstamped(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` without its version stamp: a user may give a recorded space.yaml back as a space file."""
    return {k: v for k, v in record.items() if k != VERSION_KEY}


# ---- configs (trials.parquet's config column, a checkpoint's config) ----------------------------

def config_version(record: Mapping[str, Any], source: str | Path = "<config>") -> int:
    """The record version of a recorded config (nested or dotted); unstamped ones dated by content."""
    if VERSION_KEY in record:
        return _checked_version(record[VERSION_KEY], source)
    flat = flatten_keys(unstamped(record), source)
    if "data.selection" not in flat:
        return FAST_PATH  # era 1 and 2 configs are alike: only their weights differ
    if any(key not in flat for key in THESIS_TRACKING):
        return VALIDATION  # (loss.w_track is older than the others, which came together)
    return TRACKING_KEYS


def upgrade_config(record: Mapping[str, Any], source: str | Path = "<config>") -> dict[str, Any]:
    """A recorded config as today's dotted keys, every era's meaning kept."""
    return _upgraded(flatten_keys(unstamped(record), source), config_version(record, source))


def _upgraded(flat: dict[str, Any], version: int) -> dict[str, Any]:
    """Dotted config keys of a record of `version`, one step per era since (a config, or a study's
    base in its space.yaml)."""
    if version < VALIDATION:
        flat = {**flat, **TEST_PROTOCOL}
    if version < TRACKING_KEYS:
        flat = _with_thesis_tracking(flat)
    if version < CLOSEST_SPLIT and flat.get("data.val_carving") is None:
        flat = {**flat, "data.val_carving": "greedy"}
    if version < JPEG_CACHE:
        flat = {**BEFORE_VIEWS, **flat}  # what its trainer did before the keys existed
    return flat


def config_from_record(record: Mapping[str, Any], source: str | Path = "<config>") -> TrialConfig:
    """A config a run recorded (checkpoint, trials.parquet), upgraded and validated."""
    return TrialConfig().with_overrides(upgrade_config(record, source), source)


def recorded_selection(record: Mapping[str, Any]) -> str:
    """The split a recorded config selected on: `val`, or `test` (data.selection: test, or a run
    from before validation splits)."""
    selection = upgrade_config(record).get("data.selection")
    return str(selection) if selection is not None else "val"


def adopt_recorded(cfg: TrialConfig, recorded: TrialConfig) -> TrialConfig:
    """`cfg` with the keys it leaves to the preset (DERIVED_KEYS unset) as `recorded` ran them.

    A run or study resumed under a newer version keeps the defaults it started with (tiny's learning
    rate changed with the preset learning rates) instead of being refused as changed.
    """
    mine, theirs = cfg.to_flat(), recorded.to_flat()
    kept = {k: theirs[k] for k in DERIVED_KEYS if mine[k] is None and theirs[k] is not None}
    return cfg.with_overrides(kept) if kept else cfg


def _with_thesis_tracking(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Era 3 and before: the run computed the thesis's tracking formula, so it keeps it."""
    missing = {k: v for k, v in THESIS_TRACKING.items() if k not in flat}
    preset = PRESETS.get(str(flat.get("model.preset", ModelConfig.preset)))
    if "track.temperature" in missing and preset is not None:
        missing["track.temperature"] = thesis_temperature(preset.track_dim)
    return {**missing, **flat}


# ---- a study's space.yaml -----------------------------------------------------------------------

def upgrade_space(data: Any, source: str | Path) -> Any:
    """A recorded space.yaml in today's format: an older study's new trials run as its first did."""
    if not isinstance(data, Mapping):
        return data  # the space validation names what is wrong with it
    base = data.get("base")
    if VERSION_KEY in data:
        version = _checked_version(data[VERSION_KEY], source)
    elif isinstance(base, Mapping):
        version = config_version(base, source)
    else:
        version = RECORD_VERSION
    data = unstamped(data)
    if isinstance(base, Mapping):
        data["base"] = _upgraded(flatten_keys(base, source), version)
    resources = data.get("resources")
    if version < PER_PROCESS and isinstance(resources, Mapping) and "fuse" in resources:
        data["resources"] = {("trials_per_process" if k == "fuse" else k): v for k, v in resources.items()}
    return data


# ---- checkpoints ------------------------------------------------------------------------------

def checkpoint_version(state: Mapping[str, Any], source: str | Path) -> int:
    """A checkpoint's record version; an unstamped one with 5-D trunk weights is era 1."""
    if VERSION_KEY in state:
        return _checked_version(state[VERSION_KEY], source)
    first_conv = state.get("model", {}).get("trunk.conv1.0.weight")
    if first_conv is not None and first_conv.dim() == 5:
        return 1
    return config_version(state["config"], source)


def upgrade_checkpoint(
    state: dict[str, Any],
    source: str | Path,
    weight_shapes: Mapping[str, Sequence[int]],
    param_shapes: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """A checkpoint's state in today's layout, for a model whose state_dict has `weight_shapes` and
    whose optimiser holds parameters of `param_shapes` (in its order)."""
    if checkpoint_version(state, source) < FAST_PATH:
        state = {**state, "model": squeezed_weights(state["model"], weight_shapes),
                 "optimizer": _reshaped_moments(state["optimizer"], param_shapes)}
    return state


def squeezed_weights(weights: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """Era 1: 5-D (out, in, 1, k, k) weights of what is now a 2D conv lose their time axis (the
    parameters kept their names: only the shape differs). `shapes`: the model's state_dict shapes."""
    out = dict(weights)
    for name, value in weights.items():
        shape = shapes.get(name)
        if shape is not None and len(shape) == 4 and value.dim() == 5 and value.shape[2] == 1:
            out[name] = value.squeeze(2)
    return out


def _reshaped_moments(saved: Mapping[str, Any], param_shapes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Era 1: Adam's moments of the 5-D weights take their 2D parameters' shapes."""
    state = {}
    for index, values in saved.get("state", {}).items():
        shape = tuple(param_shapes[int(index)]) if int(index) < len(param_shapes) else None
        state[index] = {
            key: value.reshape(shape)
            if shape is not None and hasattr(value, "dim") and value.dim() > 0
            and tuple(value.shape) != shape and value.numel() == _numel(shape) else value
            for key, value in values.items()
        }
    return {**saved, "state": state}


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _checked_version(value: Any, source: str | Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(source, VERSION_KEY, "must be a positive integer", value)
    if value > RECORD_VERSION:
        raise InvalidInput(source, VERSION_KEY, f"written by a newer mtsearch (this one reads up to "
                           f"{RECORD_VERSION}); upgrade mtsearch to read it", value)
    return value


# ---- pickles (Ray Tune's saved state of an interrupted study) ---------------------------------

# Tune pickles the study's callback, searcher and trial-folder function by module path; these are
# the paths the flat layout (record versions 1-4) gave them (`search.study.accept_moved_modules`
# makes them resolve).
MOVED_MODULES: dict[str, str] = {
    **{f"mtsearch.{name}": f"mtsearch.search.{name}" for name in (
        "tuning", "study", "packing", "confirm", "cluster", "preflight", "footprint")},
    **{f"mtsearch.{name}": f"mtsearch.results.{name}" for name in (
        "store", "stats", "report", "plots", "card")},
    "mtsearch.tracking_eval": "mtsearch.train.tracking_eval",
}
# the flat layout's `mtsearch.search` held what these hold now (the searcher, before it moved to
# `mtsearch.tuning`, included)
FLAT_SEARCH_MODULES = ("mtsearch.search.driver", "mtsearch.search.recording", "mtsearch.search.trainable",
                       "mtsearch.search.tuning")
