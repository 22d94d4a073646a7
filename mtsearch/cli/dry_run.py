"""`mtsearch run SPACE --dry-run` (and `ablate`): what a study would do, checked and printed,
with nothing trained, started or written (no Ray, no study folder, no built-in set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtsearch.errors import free_bytes
from mtsearch.files import human_bytes
from mtsearch.space import SpaceSpec


def dry_run(spec: SpaceSpec, trials_dir: Path, say: Any) -> int:
    """Print the resolved space, the trials, the network shapes, the resources and the disk."""
    from mtsearch.search.footprint import study_footprint
    from mtsearch.search.packing import shape_label, sharing_note, spec_shapes

    study_dir = trials_dir / spec.name
    say(f"# {spec.source}, as `mtsearch {'ablate' if spec.is_ablation else 'run'}` would run it "
        f"(defaults filled in; nothing was trained or written)")
    say(spec.to_yaml().rstrip())
    say("")
    say(f"study folder: {study_dir}" + (" (exists: --resume continues it)" if study_dir.exists() else ""))
    seeds = 1 if spec.is_ablation else spec.search.seeds_per_trial
    what = (f"{spec.total_trials} trials" if spec.is_enumerated
            else f"{spec.total_trials} sampled trials ({spec.search.algorithm})")
    if seeds > 1:
        what += f", each {seeds} seeds in one process: {spec.total_trials * seeds} training runs"
    if spec.scheduler.population_based:
        say(f"trials: {population_line(spec)}")
    else:
        say(f"trials: {what}, {spec.search.max_concurrent} at a time, up to {spec.max_epochs} epochs each"
            + (f"; ASHA stops weak ones from epoch {spec.scheduler.grace_period}"
               if spec.scheduler.type == "asha" else ""))
    say(f"evaluation: {evaluation_line(spec)}")
    shapes = spec_shapes(spec)
    say(f"network shapes: {len(shapes)}: " + "; ".join(
        f"{shape_label(cfg)} ({_millions(cfg)} M parameters)" for cfg in shapes.values()))
    say(f"resources: {_gpu_choice(spec)}")
    say(sharing_note(spec, on_gpus=_has_gpu()))
    need = study_footprint(spec, study_dir)
    free = free_bytes(study_dir if study_dir.exists() else _existing_parent(study_dir))
    say(f"disk: up to {human_bytes(need.total)} of checkpoints ({need.checkpoints} of "
        f"{human_bytes(need.checkpoint_bytes)}, {need.how}: {spec.storage.keep_checkpoints} kept + 2 per "
        f"running trial)" + (f"; {human_bytes(free)} free" if free is not None else ""))
    for line in cache_lines(spec):
        say(line)
    return 0


# keys that choose a trial's frame-cache entries: each distinct setting is its own copy of the data
_CACHE_KEYS = frozenset({"data.fps", "data.short_side", "data.crop", "data.cache_format",
                         "data.cache_quality", "data.cache_dir"})


def cache_settings(spec: SpaceSpec) -> list[Any]:
    """One config per distinct frame-cache setting the space can produce (a range: both ends)."""
    import itertools

    from mtsearch.distributions import expand_params, factor_keys

    levels: dict[str, list[Any]] = {}
    for factor, dist in spec.space.items():
        if set(factor_keys(factor)) & _CACHE_KEYS:
            ranged = dist.kind in ("int", "logint", "uniform", "loguniform")
            levels[factor] = list(dist.values[:2]) if ranged else list(dist.values)
    settings: dict[tuple[Any, ...], Any] = {}
    for combo in itertools.product(*levels.values()):
        cfg = spec.trial_config(expand_params(dict(zip(levels, combo)))).resolved()
        key = (cfg.fps, cfg.short_side, cfg.cache_format, cfg.data.cache_quality, cfg.data.cache_dir)
        settings.setdefault(key, cfg)
    return list(settings.values())


def cache_lines(spec: SpaceSpec) -> list[str]:
    """What the frame cache will need for the study's data at each setting, and the free space;
    a warning where it will not fit. Reads the videos' headers and a few frames, writes nothing."""
    from mtsearch.data.cache import FrameCache
    from mtsearch.data.cache_usage import estimate_need
    from mtsearch.data.datasets import check_videos, load_index
    from mtsearch.errors import InvalidInput
    from mtsearch.paths import frames_dir

    configs = cache_settings(spec)
    cfg = configs[0]
    root = cfg.data.root
    if root is None:
        from mtsearch.data.synthetic import builtin_set, builtin_set_ready

        built = builtin_set(cfg.data.cache_dir)
        if not builtin_set_ready(cfg.data.cache_dir):
            return ["frame cache: the built-in set is not built yet (about 30 MB of video; the first "
                    "trial builds it); `mtsearch data check` then estimates its cache"]
        root = built
    try:
        index = load_index(cfg.data.dataset, root, cfg.data.split)
    except InvalidInput as exc:
        return [f"frame cache: not estimated ({exc.render()})"]
    lines, short = [], []
    for setting in configs:
        checks = check_videos(index.train + index.test, setting.data.clip_frames, setting.fps)
        cache = FrameCache(frames_dir(setting.data.cache_dir), format=setting.cache_format,
                           quality=setting.data.cache_quality)
        need = estimate_need(checks, cache, setting.fps, setting.short_side)
        at = "source fps" if setting.fps is None else f"{setting.fps:g} fps"
        fmt = f"jpeg q{cache.quality}" if cache.format == "jpeg" else "raw"
        free = f"{human_bytes(need.free)} free" if need.free is not None else "free space unknown"
        lines.append(f"frame cache at {at}, short side {setting.short_side}, {fmt}: needs "
                     f"{human_bytes(need.total)} for {need.videos} videos ({human_bytes(need.cached)} "
                     f"cached); {free} on {cache.root}")
        if not need.fits:
            short.append(f"warning: the frame cache will not fit on {cache.root}: {human_bytes(need.missing)} "
                         f"more needed at {at}, short side {setting.short_side}, {human_bytes(need.free)} "
                         "free; set data.cache_dir to a larger disk")
    return lines + short


def _millions(cfg: Any) -> str:
    from mtsearch.search.footprint import parameter_count

    return f"{parameter_count(cfg) / 1e6:.2f}"


def _gpu_choice(spec: SpaceSpec) -> str:
    """What `gpus_per_trial` will be, as far as this machine can tell without starting anything."""
    cpus = f"{spec.resources.cpus_per_trial:g} CPU{'s' if spec.resources.cpus_per_trial != 1 else ''} per trial"
    if not spec.resources.auto:
        return f"{cpus}, {spec.resources.gpus_per_trial:g} GPU per trial (as set)"
    if spec.base.device == "cpu":
        return f"{cpus}, on the CPU (base.device: cpu)"
    import torch

    if not torch.cuda.is_available():
        return f"{cpus}; gpus_per_trial auto: no GPU on this machine, so trials run on the CPU " \
               "(on a cluster, the driver decides from Ray's GPUs)"
    return (f"{cpus}; gpus_per_trial auto: each network shape's memory peak is measured on one GPU "
            f"before the first trial, and trials are packed by it (at most "
            f"{spec.resources.max_trials_per_gpu} per GPU)")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def population_line(spec: SpaceSpec) -> str:
    """What a population-based search does, in one line: its members, boundaries and explore rule."""
    from mtsearch.mutations import boundaries

    s = spec.scheduler
    at = boundaries(s, spec.max_epochs)
    how = ("PB2 picks the copies' values (a GP bandit over the ranges)" if s.type == "pb2" else
           f"values resampled from the space with p {s.resample_probability:g}, else scaled by "
           + " or ".join(f"×{f:g}" for f in s.perturbation_factors))
    return (f"a population of {s.population} trials ({s.type}), all {s.population} at once, "
            f"{spec.max_epochs} epochs each: after epoch{'s' if len(at) > 1 else ''} "
            f"{', '.join(map(str, at))} the bottom {s.quantile:.0%} copy the top {s.quantile:.0%} "
            f"(weights and config) and train on with {', '.join(s.mutate or ())} explored: {how}; "
            f"{s.population * spec.max_epochs} training epochs in all")


def evaluation_line(spec: SpaceSpec) -> str:
    """The epochs a trial evaluates the validation split at, and what picked them."""
    base, epochs = spec.base, spec.max_epochs
    at = [e for e in range(1, epochs + 1) if base.evaluates(e)]
    if base.eval.every == "rungs":
        why = {"asha": "ASHA's rungs", "pbt": "the boundaries", "pb2": "the boundaries"}.get(
            spec.scheduler.type, "no scheduler")
        how = f"eval.every: rungs ({why} and the last epoch)"
    else:
        how = f"eval.every: {base.eval.every}"
    shown = ", ".join(map(str, at[:12])) + (f", … ({len(at)} in all)" if len(at) > 12 else "")
    return f"validation split at epoch{'s' if len(at) > 1 else ''} {shown} of {epochs}, by {how}"
