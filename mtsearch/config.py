"""One trial's configuration: typed, validated in one place, thesis defaults (presets.py: sizes).

Keys are addressed by dotted names (`loss.w_track`) everywhere: in config files (nested mappings
or dotted keys, mixed freely), in space files, in Parquet columns. Values a preset decides
(`data.crop`, `track.patch`) default to `None` and are filled in by `resolved()`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from mtsearch.errors import InvalidInput, did_you_mean
from mtsearch.key_checks import (
    CACHE_FORMATS,
    CHECKS,
    CLIPS_VIEWS,
    EVAL_RUNGS,
    SOURCE_FPS,
    VAL_CARVINGS,
    check_cross_fields,
)
from mtsearch.presets import BRANCHES, PRESETS, Preset, normalize_branches, tracking_defaults
from mtsearch.schedules import SCHEDULABLE, Schedule, is_schedule, parse_schedule, plain
from mtsearch.values import as_float, as_int
from mtsearch.yamlio import dump_yaml, read_yaml

# the keys that change a tensor's shape: trials equal in all of them may train side by side in one
# process (train/side_by_side.py) and share one memory probe (search/packing.py)
SHAPE_KEYS: tuple[str, ...] = ("model.preset", "optim.batch_size", "data.crop", "data.clip_frames",
                               "model.branches", "track.patch", "track.past_frames")
# keys whose default (None) the preset decides: `resolved()` writes them out
DERIVED_KEYS: tuple[str, ...] = (
    "data.crop", "track.patch", "data.short_side", "eval.batch_size", "optim.lr",
    "data.val_fraction", "data.selection", "data.val_carving", "data.fps", "data.flip",
    "data.cache_format", "eval.views", "eval.val_views", "loss.w_track", "loss.sim_weight",
    "track.temperature",
    "track.localizer", "track.target_patch", "track.center_features", "track.patch_select",
    "track.crop_grad", "track.projection",
)
VAL_FRACTION, SELECTION = 0.2, "val"  # the honest protocol's defaults
# keys that change how a trial computes, not what: a resumed run or study may change them
EXECUTION_KEYS: tuple[str, ...] = ("eval.batch_size", "cuda_graph", "compile")
# datasets whose videos come at many rates (Kinetics: 24-30 from YouTube) or a low one (SSv2: 12):
# data.fps defaults to each video's own rate there
SOURCE_RATE_DATASETS: tuple[str, ...] = ("kinetics", "ssv2")
# the test protocol papers use per dataset (eval.views): K temporal clips x N spatial crops
DATASET_VIEWS: dict[str, str] = {"kinetics": "10x3", "ssv2": "2x3"}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None  # None: the built-in synthetic set in the cache folder
    split: int = 1
    fps: float | str | None = None  # frames per second, or `source`; None: 30 (kinetics, ssv2: source)
    clip_frames: int = 13  # s
    crop: int | None = None  # None: the preset's (thesis 240)
    short_side: int | None = None  # resize before cropping; None: crop * 256/240 (TimeCycle)
    cache_dir: str | None = None  # None: $MTSEARCH_CACHE or ~/.cache/mtsearch
    workers: int | None = None  # DataLoader workers; None: 0 on CPU, up to 8 on CUDA
    val_fraction: float | None = None  # validation videos carved from training; None: 0.2
    selection: str | None = None  # what evaluations in training use: val | test (thesis); None: val
    val_carving: str | None = None  # closest | greedy (how records before v6 carved); None: closest
    flip: str | None = None  # on | off | swap (mirrored classes swap labels); None: on (ssv2: swap)
    cache_format: str | None = None  # jpeg | raw; None: jpeg (records before v7: raw)
    cache_quality: int = 90  # JPEG quality of cached frames


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "thesis"
    branches: tuple[str, ...] = BRANCHES


@dataclass(frozen=True)
class TrackConfig:
    frame_gap: int = 4  # f
    past_frames: int = 3  # k
    patch: int | None = None  # None: the preset's (thesis 80 = crop/3)
    # how the branch departs from the thesis's formula; None: `tracking_defaults`
    temperature: float | None = None  # affinity softmax temperature (thesis: track_dim ** -0.5)
    localizer: str | None = None  # conv (thesis: two convs + one linear) | softargmax
    target_patch: str | None = None  # encode (thesis: re-encoded pixels) | crop (of the frame's features)
    center_features: bool | None = None  # subtract each frame's mean feature before normalising (thesis: no)
    patch_select: str | None = None  # uniform (thesis) | motion (among the most changing windows)
    crop_grad: bool | None = None  # gradient through where each step crops (thesis: yes)
    projection: str | None = None  # relu (thesis: TimeCycle's 1x1 conv + ReLU) | linear (no ReLU)
    detach_target: bool = False  # stop the gradient through the target patch feature
    warmup_epochs: int = 0  # first epochs in which l_track trains the branch but not the trunk
    cycle_loss: str = "grid"  # grid (thesis: theta vs theta_gt) | walk (cross-entropy of the last affinity)


@dataclass(frozen=True)
class LossConfig:
    w_track: float | Schedule | None = None  # w1 (thesis 25; None: `tracking_defaults`, tiny 0.25)
    w_dir: float | Schedule = 2.0  # w2 (these four keys may be schedules: schedules.py)
    track_lambda: float = 0.1  # lambda: weight of the skip and long cycle terms in l_track
    sim_weight: float | None = None  # weight of l_sim in l_track (thesis 1; None: `tracking_defaults`)


@dataclass(frozen=True)
class OptimConfig:
    lr: float | Schedule | None = None  # None: the preset's (thesis 2e-4)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float | Schedule = 1e-4
    batch_size: int = 4
    epochs: int = 100
    plateau_patience: int = 10
    grad_clip: float = 10.0  # max gradient norm (TimeCycle); 0 turns clipping off


@dataclass(frozen=True)
class EvalConfig:
    every: int | str = 2  # evaluate every N epochs, or `rungs`: at `at` (the scheduler's milestones)
    at: tuple[int, ...] | None = None  # with every: rungs, the epochs evaluated besides the last
    batch_size: int | None = None  # None: 4 x optim.batch_size (forward only; results do not depend on it)
    views: str | None = None  # the test protocol: clips | KxN; None: clips (kinetics 10x3, ssv2 2x3)
    val_views: str | None = None  # evaluations during training; None: eval.views (kinetics, ssv2: 1x1)


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # CPU threads; None: $OMP_NUM_THREADS or every core (searches: CPUs/trial)
    cuda_graph: bool = True  # capture the training step in a CUDA graph (GPU only; see train.py)
    compile: bool | None = None  # torch.compile trunk, heads, tracker steps (GPU only); None: thesis only

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str | Path = "<config>") -> TrialConfig:
        """Build and validate from nested and/or dotted keys; errors name `source` and the key."""
        return cls().with_overrides(flatten_keys(data or {}, source), source)

    def with_overrides(self, flat: Mapping[str, Any], source: str | Path = "<config>") -> TrialConfig:
        """A copy with dotted-key overrides applied, every value coerced and checked."""
        values = self.to_flat()
        for key, raw in flat.items():
            if key not in _FIELDS:
                raise InvalidInput(source, key, "unknown key" + did_you_mean(key, _FIELDS))
            values[key] = _coerce(key, raw, source)
        cfg = _build(values)
        check_cross_fields(cfg, source)
        return cfg

    # ---- derived values -----------------------------------------------------------------------
    @property
    def preset(self) -> Preset:
        return PRESETS[self.model.preset]

    @property
    def crop(self) -> int:
        return self.data.crop if self.data.crop is not None else self.preset.crop

    @property
    def patch(self) -> int:
        if self.track.patch is not None:
            return self.track.patch
        if self.data.crop is None:
            return self.preset.patch
        return max(8, round(self.data.crop / 3 / 8) * 8)

    @property
    def lr(self) -> float:
        return self.optim.lr if self.optim.lr is not None else self.preset.lr

    @property
    def selection(self) -> str:
        return self.data.selection if self.data.selection is not None else SELECTION

    @property
    def val_carving(self) -> str:
        return self.data.val_carving if self.data.val_carving is not None else VAL_CARVINGS[0]

    @property
    def fps(self) -> float | None:
        """The frame rate clips are read at; None: the videos' own (`data.fps: source`)."""
        fps = self.data.fps
        if fps is None:
            fps = SOURCE_FPS if self.data.dataset in SOURCE_RATE_DATASETS else 30.0
        return None if fps == SOURCE_FPS else float(fps)

    @property
    def cache_format(self) -> str:
        """How the frame cache stores the frames clips are read from (lossy jpeg changes them)."""
        return self.data.cache_format if self.data.cache_format is not None else CACHE_FORMATS[0]

    @property
    def flip(self) -> str:
        if self.data.flip is not None:
            return self.data.flip
        return "swap" if self.data.dataset == "ssv2" else "on"

    @property
    def views(self) -> str:
        """The test split's protocol (`clips` or `KxN`)."""
        return self.eval.views if self.eval.views is not None else DATASET_VIEWS.get(self.data.dataset, CLIPS_VIEWS)

    @property
    def val_views(self) -> str:
        """The protocol of the validation split's evaluations during training: one centre clip on
        the datasets papers test with many views (their cost is paid every `eval.every` epochs)."""
        if self.eval.val_views is not None:
            return self.eval.val_views
        if self.eval.views is None and self.data.dataset in DATASET_VIEWS:
            return "1x1"
        return self.views

    @property
    def val_fraction(self) -> float:
        return self.data.val_fraction if self.data.val_fraction is not None else VAL_FRACTION

    @functools.cached_property
    def tracking(self) -> dict[str, Any]:
        """The tracking branch's tracking keys with the preset's defaults filled in (dotted names).
        Cached (the config is frozen): the training step reads `loss.w_track` from it."""
        flat = self.to_flat()
        defaults = tracking_defaults(self.model.preset)
        return {k: flat[k] if flat[k] is not None else v for k, v in defaults.items()}

    @property
    def eval_batch_size(self) -> int:
        if self.eval.batch_size is not None:
            return self.eval.batch_size
        return 4 * self.optim.batch_size

    @property
    def short_side(self) -> int:
        if self.data.short_side is not None:
            return self.data.short_side
        return max(self.crop, round(self.crop * 256 / 240))

    def has(self, branch: str) -> bool:
        return branch in self.model.branches

    def evaluates(self, epoch: int) -> bool:
        """Whether epoch `epoch` evaluates the validation split: every `eval.every` epochs, or with
        `rungs` at `eval.at` (none outside a search: the last alone); the last epoch always."""
        if epoch == self.optim.epochs:
            return True
        if self.eval.every == EVAL_RUNGS:
            return epoch in (self.eval.at or ())
        return epoch % int(self.eval.every) == 0

    def resolved(self) -> TrialConfig:
        """Preset-dependent defaults written out, so the config runs the same anywhere."""
        values = {"data.crop": self.crop, "track.patch": self.patch,
                  "data.short_side": self.short_side, "eval.batch_size": self.eval_batch_size,
                  "optim.lr": self.lr, "data.val_fraction": self.val_fraction,
                  "data.selection": self.selection, "data.val_carving": self.val_carving,
                  "data.fps": SOURCE_FPS if self.fps is None else self.fps, "data.flip": self.flip,
                  "data.cache_format": self.cache_format, "eval.views": self.views, "eval.val_views": self.val_views, **self.tracking}
        assert set(values) == set(DERIVED_KEYS)
        return self.with_overrides(values)

    # ---- output -------------------------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, (section, name) in _FIELDS.items():
            obj = getattr(self, section) if section else self
            flat[key] = getattr(obj, name)
        return flat

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (lists, not tuples) for YAML/JSON."""
        nested: dict[str, Any] = {}
        for key, value in self.to_flat().items():
            value = list(value) if isinstance(value, tuple) else plain(value)
            section, _, name = key.rpartition(".")
            (nested.setdefault(section, {}) if section else nested)[name] = value
        return nested

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def load_config(path: str | Path) -> TrialConfig:
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidInput(path, None, "expected a mapping of config keys", type(data).__name__)
    return TrialConfig.from_mapping(data, path)


def flatten_keys(
    data: Mapping[str, Any],
    source: str | Path,
    prefix: str = "",
    is_value: Callable[[Any], bool] | None = None,
) -> dict[str, Any]:
    """Nested mappings and dotted keys -> {dotted key: value}; a key given twice is an error.

    `is_value` marks mappings that are values, not sections (a space file's `{uniform: [0, 1]}`).
    """
    flat: dict[str, Any] = {}
    for raw_key, value in data.items():
        if not isinstance(raw_key, str):
            raise InvalidInput(source, prefix + str(raw_key), "keys must be strings", raw_key)
        key = prefix + raw_key
        leaf = is_value is not None and is_value(value)
        if key in _SECTIONS and not leaf:
            if not isinstance(value, Mapping):
                raise InvalidInput(source, key, f"expected a mapping of {key}.* keys", value)
            inner = flatten_keys(value, source, key + ".", is_value)
        elif isinstance(value, Mapping) and key not in _FIELDS and not leaf:
            hint = did_you_mean(key, list(_FIELDS) + list(_SECTIONS))
            raise InvalidInput(source, key, "unknown key" + hint)
        else:
            inner = {key: value}
        for k, v in inner.items():
            if k in flat:
                raise InvalidInput(source, k, "given twice (nested and dotted)")
            flat[k] = v
    return flat


def config_keys() -> list[str]:
    return list(_FIELDS)


# ---- field table and checks ------------------------------------------------------------------

_SECTION_TYPES: dict[str, Any] = {
    f.name: f.default_factory
    for f in fields(TrialConfig)
    if f.default_factory is not dataclasses.MISSING
}
_SECTIONS = frozenset(_SECTION_TYPES)


def _field_table() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for f in fields(TrialConfig):
        if f.name in _SECTION_TYPES:
            for sub in fields(_SECTION_TYPES[f.name]):
                table[f"{f.name}.{sub.name}"] = (f.name, sub.name)
        else:
            table[f.name] = ("", f.name)
    return table


_FIELDS = _field_table()


def _type_of(key: str) -> Any:
    section, name = _FIELDS[key]
    owner = _SECTION_TYPES[section] if section else TrialConfig
    return get_type_hints(owner)[name]


def column_type(key: str) -> str:
    """A key's value type as a table column: bool, int, float or string (branch masks: labels)."""
    if key == "model.branches":
        return "string"
    if key == "data.fps" or key in SCHEDULABLE:
        return "float"  # a searched value is a number (`source`, a schedule: base values only)
    typ = _type_of(key)
    for base, kind in ((bool, "bool"), (int, "int"), (float, "float")):
        if typ is base or typ == base | None:
            return kind
    return "string"


def _coerce(key: str, raw: Any, source: str | Path) -> Any:
    typ = _type_of(key)
    text = str(typ)
    optional = raw is None and "None" in text
    try:
        if optional:
            value = None
        elif key == "model.branches":
            value = normalize_branches(raw)
        elif key in SCHEDULABLE and is_schedule(raw):
            value = parse_schedule(raw, key)
        elif typ is bool or text == "bool | None":
            if not isinstance(raw, bool):
                raise ValueError("expected true or false")
            value = raw
        elif key == "data.fps":
            value = SOURCE_FPS if raw == SOURCE_FPS else as_float(raw)
        elif key == "eval.every":
            try:
                value = EVAL_RUNGS if raw == EVAL_RUNGS else as_int(raw)
            except ValueError:
                raise ValueError("expected a number of epochs, or rungs (a scheduler's milestones)") from None
        elif key == "eval.at":
            if not isinstance(raw, (list, tuple)):
                raise ValueError("expected a list of epochs")
            value = tuple(sorted({as_int(e) for e in raw}))
        elif key == "optim.betas":
            if not isinstance(raw, (list, tuple)) or len(raw) != 2:
                raise ValueError("expected two numbers [beta1, beta2]")
            value = (as_float(raw[0]), as_float(raw[1]))
        elif text.startswith("int") or typ is int:
            value = as_int(raw)
        elif text.startswith("float") or typ is float:
            value = as_float(raw)
        elif text.startswith("str") or typ is str:
            if isinstance(raw, Path):
                raw = str(raw)
            if not isinstance(raw, str):
                raise ValueError("expected a string")
            value = raw
        else:  # pragma: no cover - every field type is handled above
            raise ValueError(f"unsupported type {text}")
    except ValueError as exc:
        raise InvalidInput(source, key, str(exc), raw) from None
    check = CHECKS.get(key)
    for one in ([v for _, v in value.steps] if isinstance(value, Schedule) else [value]):
        problem = check(one) if check and one is not None else None
        if problem:
            raise InvalidInput(source, key, problem, raw)
    return value


def _build(flat: Mapping[str, Any]) -> TrialConfig:
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTION_TYPES}
    top: dict[str, Any] = {}
    for key, value in flat.items():
        section, name = _FIELDS[key]
        (sections[section] if section else top)[name] = value
    built = {name: _SECTION_TYPES[name](**vals) for name, vals in sections.items()}
    return TrialConfig(**built, **top)


def shape_key(cfg: TrialConfig) -> tuple[Any, ...]:
    """A config's values of SHAPE_KEYS, resolved: equal keys, equal tensor shapes."""
    flat = cfg.resolved().to_flat()
    return tuple(flat[key] for key in SHAPE_KEYS)
