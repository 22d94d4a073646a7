"""How many trials share one GPU: `resources.gpus_per_trial: auto`.

Before the first trial the driver measures, on a GPU, the peak memory of the trainer's own step
for every network shape the space can produce (preset, batch, crop, clip frames, branches, patch,
past frames; not the loss weights, which change no tensor), and gives each trial the GPU share
that fits its shape's peak plus a margin. Ray's GPU fractions are reservations, not limits: the
measured peak is what makes them safe. A trial that still runs out of memory is retried with a
larger share (search.py).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtsearch.config import SHAPE_KEYS, TrialConfig, shape_key
from mtsearch.distributions import expand_params, factor_keys
from mtsearch.files import write_atomic
from mtsearch.space import SpaceSpec

# the keys that change a step's tensors; a range (`int`) is probed at its high end
MARGIN = 0.15  # on top of the measured peak: allocator growth over an epoch, an evaluation
CONTEXT_GIB = 0.75  # per process and outside the allocator: CUDA context, cuBLAS/cuDNN handles
PROBE_CLASSES = 101  # the classifier's width hardly matters; the largest standard dataset's
PROBE_FILE = "gpu_memory.json"  # in the study folder: a resumed study keeps its shares
SHARE_STEP = 1e-4  # Ray's resolution for fractional resources


@dataclass(frozen=True)
class MemoryProbe:
    """One network shape measured on one GPU."""

    peak_gib: float  # the allocator's peak reservation over training steps and one evaluation batch
    total_gib: float  # the GPU's memory
    gpu: str  # its name, e.g. "NVIDIA H200"


@dataclass(frozen=True)
class Packing:
    """The share a shape gets, and why."""

    label: str
    probe: MemoryProbe
    trials_per_gpu: int
    share: float
    by_memory: int
    limit: str  # "" when memory decides, else what capped it: "16 CPUs", "max_trials_per_gpu"

    def message(self) -> str:
        """`thesis b4: 5.5 GiB -> 12 trials per NVIDIA H200 (capped by 16 CPUs: 8)`."""
        text = f"{self.label}: {self.probe.peak_gib:.1f} GiB -> {self.by_memory} trials per {self.probe.gpu}"
        if self.by_memory < 1:
            return f"{self.label}: {self.probe.peak_gib:.1f} GiB, more than one {self.probe.gpu} holds " \
                   f"({self.probe.total_gib:.0f} GiB): one trial per GPU, it may run out of memory"
        if self.limit:
            text += f" (capped by {self.limit}: {self.trials_per_gpu})"
        return text


def shape_label(cfg: TrialConfig) -> str:
    """`thesis b4`, plus whatever departs from the preset's geometry and the three branches."""
    cfg = cfg.resolved()
    plain = TrialConfig.from_mapping({"model.preset": cfg.model.preset}).resolved()
    parts = [f"{cfg.model.preset} b{cfg.optim.batch_size}"]
    if cfg.crop != plain.crop:
        parts.append(f"crop {cfg.crop}")
    if cfg.data.clip_frames != plain.data.clip_frames:
        parts.append(f"{cfg.data.clip_frames} frames")
    if cfg.patch != TrialConfig.from_mapping({"model.preset": cfg.model.preset,
                                               "data.crop": cfg.crop}).resolved().patch:
        parts.append(f"patch {cfg.patch}")
    if cfg.track.past_frames != plain.track.past_frames:
        parts.append(f"k {cfg.track.past_frames}")
    if tuple(cfg.model.branches) != tuple(plain.model.branches):
        parts.append("+".join(cfg.model.branches))
    return " ".join(parts)


def _shape_levels(spec: SpaceSpec) -> dict[str, list[Any]]:
    """Per searched factor that touches a shape key: the values to probe (a range: its top)."""
    levels: dict[str, list[Any]] = {}
    for factor, dist in spec.space.items():
        if not set(factor_keys(factor)) & set(SHAPE_KEYS):
            continue
        levels[factor] = [dist.values[1]] if dist.kind in ("int", "logint") else list(dist.values)
    return levels


def probe_params(spec: SpaceSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's sampled values as the probe saw them: ranged shape keys at their top."""
    out = dict(params)
    for factor, values in _shape_levels(spec).items():
        if spec.space[factor].kind in ("int", "logint") and factor in out:
            out[factor] = values[0]
    return out


def spec_shapes(spec: SpaceSpec) -> dict[tuple[Any, ...], TrialConfig]:
    """Every distinct network shape the space can produce -> one config of that shape."""
    levels = _shape_levels(spec)
    shapes: dict[tuple[Any, ...], TrialConfig] = {}
    for combo in itertools.product(*levels.values()):
        cfg = spec.trial_config(expand_params(dict(zip(levels, combo))))
        shapes.setdefault(shape_key(cfg), cfg)
    return shapes


def plan(probe: MemoryProbe, label: str, cpus_per_gpu: float, cpus_per_trial: float,
         max_per_gpu: int) -> Packing:
    """The share of one shape: as many trials as memory, CPUs and the cap allow, at least one."""
    need = probe.peak_gib * (1 + MARGIN) + CONTEXT_GIB
    by_memory = int(probe.total_gib // need)
    limits = [(by_memory, "")]
    limits.append((int(cpus_per_gpu // cpus_per_trial), f"{cpus_per_gpu:g} CPUs"))
    limits.append((max_per_gpu, "max_trials_per_gpu"))
    count, limit = min(limits, key=lambda item: item[0])
    count = max(1, count)
    if count == by_memory or by_memory < 1:
        limit = ""
    share = math.floor(1 / count / SHARE_STEP) * SHARE_STEP
    return Packing(label, probe, count, round(share, 4), by_memory, limit)


def measure_step_memory(cfg: TrialConfig, device: Any = None) -> MemoryProbe | None:
    """Run where a GPU is visible (a Ray task with num_gpus=1): the trainer's own step, built by
    `build_training` as a trial builds it (compiled stages too), on generated clips of cfg's
    shape, warm-up and CUDA graph capture included, then one evaluation
    batch; the allocator's peak reservation. None when no CUDA device is visible. With
    `device="cpu"` the same run reports the process's peak RSS against the machine's memory."""
    import torch

    from mtsearch.data.clips import normalise_batch
    from mtsearch.model.multibranch import StepDraws
    from mtsearch.train import GRAPH_WARMUP, build_training, configure_torch, peak_memory_gib

    if device is None and not torch.cuda.is_available():
        return None
    device = torch.device(device or "cuda")
    cuda = device.type == "cuda"
    cfg = cfg.resolved()
    configure_torch(device, None)
    training = build_training(cfg, PROBE_CLASSES, device, lambda message: None, bf16=cuda)
    model, step = training.model, training.step  # compiled as the trial's own (`compile_wanted`)
    gen = torch.Generator().manual_seed(0)
    batch = cfg.optim.batch_size
    shape = (batch, cfg.data.clip_frames, cfg.crop, cfg.crop, 3)
    clips = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, PROBE_CLASSES, (batch,), generator=gen)
    if cuda:
        clips, labels = clips.pin_memory(), labels.pin_memory()
    for _ in range(GRAPH_WARMUP + 2):
        step(clips, labels, model.draw(batch, gen))
    step.read()
    model.eval()
    eval_shape = (cfg.eval_batch_size, *shape[1:])
    reverse = torch.zeros(eval_shape[0], dtype=torch.bool, device=device)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
        x = normalise_batch(torch.randint(0, 256, eval_shape, dtype=torch.uint8).to(device))
        model(x, track=False, draws=StepDraws(reverse=reverse))
    if not cuda:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return MemoryProbe(peak_memory_gib(device), total, "cpu")
    torch.cuda.synchronize(device)
    props = torch.cuda.get_device_properties(device)
    return MemoryProbe(torch.cuda.max_memory_reserved(device) / 2**30, props.total_memory / 2**30,
                       props.name)


Probe = Callable[[TrialConfig], "MemoryProbe | None"]


def larger_share(share: float) -> float:
    """The share of an out-of-memory retry: half as many trials on its GPU, at most a whole one."""
    count = max(1, round(1 / share) // 2) if share > 0 else 1
    return round(math.floor(1 / count / SHARE_STEP) * SHARE_STEP, 4)


@dataclass(frozen=True)
class TrialResources:
    """What Tune reserves for a trial, as a function of its config (`tune.with_resources`):
    `cpus` CPUs, and the GPU share of its network's shape (`shares`) or `fixed` for all."""

    cpus: float = 1.0
    fixed: float = 0.0
    shares: Mapping[tuple[Any, ...], float] = field(default_factory=dict)
    spec: SpaceSpec | None = None

    def share(self, config: Mapping[str, Any]) -> float:
        if not self.shares or self.spec is None:
            return self.fixed
        cfg = self.spec.trial_config(expand_params(probe_params(self.spec, config)))
        return self.shares.get(shape_key(cfg), max(self.shares.values()))

    def request(self, share: float) -> Any:
        from ray.tune import PlacementGroupFactory

        bundle = {"CPU": self.cpus, **({"GPU": share} if share > 0 else {})}
        return PlacementGroupFactory([bundle])

    def __call__(self, config: Mapping[str, Any]) -> Any:
        return self.request(self.share(config))


def trials_per_process(spec: SpaceSpec) -> int:
    """K, the trials of one shape that train side by side in one process (`resources.trials_per_process`).

    `auto` is 1: on a CPU, trials sharing a process measured no faster than the same trials as
    separate processes (benchmarks/shared_process.py against benchmarks/packing.py, docs/packing.md),
    and on a GPU it is not measured yet. A configuration's seeds share a process on their own
    (`search.seeds_per_trial`).
    """
    k = spec.resources.trials_per_process
    return k if isinstance(k, int) else 1


def sharing_note(spec: SpaceSpec, on_gpus: bool) -> str:
    """What trains side by side in one process, and why: the line `--dry-run` prints and a search
    starts with (unless `resources.trials_per_process: 1` and one seed a trial)."""
    seeds = 1 if spec.is_ablation else spec.search.seeds_per_trial
    k = trials_per_process(spec)
    parts = []
    if seeds > 1:
        parts.append(f"each trial's {seeds} seeds train side by side in one process (search.seeds_per_trial)")
    if k > 1:
        parts.append(f"trials of one network shape train up to {k} at a time in one process, "
                     "each still its own trial (resources.trials_per_process)")
    elif spec.resources.trials_per_process == 1:
        parts.append("one trial per process (resources.trials_per_process: 1)")
    elif on_gpus:
        parts.append("auto: one trial per process, GPUs shared by measured memory (trials sharing a "
                     "process are not yet measured on a GPU)")
    else:
        parts.append("auto: one trial per process (trials sharing a process gain nothing on a CPU)")
    return "trials per process: " + "; ".join(parts)


def announces_sharing(spec: SpaceSpec) -> bool:
    """Whether a search starts with `sharing_note`: not where the space file asked for one trial a
    process and each trial is one seed."""
    seeds = 1 if spec.is_ablation else spec.search.seeds_per_trial
    return spec.resources.trials_per_process != 1 or seeds > 1


def plan_resources(
    spec: SpaceSpec, study_dir: Path, say: Callable[[str], None], probe: Probe | None = None
) -> TrialResources:
    """Each trial's reservation. An explicit `gpus_per_trial` is used as given. `auto` packs by
    measured memory where Ray has GPUs and trials may use them, else trials run on the CPU.
    Probes are saved in the study folder, so a resumed study keeps its shares."""
    import ray

    resources = spec.resources
    cpus = resources.cpus_per_trial
    if not resources.auto:
        return TrialResources(cpus, float(resources.gpus_per_trial))
    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0.0))
    if gpus == 0 or spec.base.device == "cpu":
        return TrialResources(cpus)
    shapes = spec_shapes(spec)
    labels = {key: shape_label(cfg) for key, cfg in shapes.items()}
    probes = load_probes(study_dir)
    missing = {key: cfg for key, cfg in shapes.items() if labels[key] not in probes}
    measured = _run_probes(list(missing.values()), probe)
    failed = [labels[key] for key, result in zip(missing, measured) if isinstance(result, Exception)]
    if any(result is None for result in measured):
        say(f"Ray lists {gpus:g} GPUs but a trial sees no CUDA device: trials run on the CPU")
        return TrialResources(cpus)
    probes.update({labels[key]: result for key, result in zip(missing, measured)
                   if isinstance(result, MemoryProbe)})
    save_probes(study_dir, probes)
    cpus_per_gpu = float(total.get("CPU", 1.0)) / gpus
    shares: dict[tuple[Any, ...], float] = {}
    lines = []
    for key, label in labels.items():
        if label in failed:
            shares[key] = 1.0
            lines.append(f"{label}: the memory probe failed, one trial per GPU")
            continue
        packing = plan(probes[label], label, cpus_per_gpu, cpus, resources.max_trials_per_gpu)
        shares[key] = packing.share
        lines.append(packing.message())
    say("; ".join(lines))
    return TrialResources(cpus, 0.0, shares, spec)


def _run_probes(configs: list[TrialConfig], probe: Probe | None) -> list[Any]:
    """Each config's MemoryProbe (None: no CUDA device; an Exception: the probe failed). The
    real probe runs as a Ray task on one whole GPU, in a process of its own that exits after."""
    if not configs:
        return []
    if probe is not None:
        results: list[Any] = []
        for cfg in configs:
            try:
                results.append(probe(cfg))
            except Exception as exc:  # noqa: BLE001 - a failed probe costs packing, not the study
                results.append(exc)
        return results
    import ray

    task = ray.remote(num_gpus=1, num_cpus=1, max_calls=1)(measure_step_memory)
    refs = [task.remote(cfg) for cfg in configs]
    results = []
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
    return results


def load_probes(study_dir: Path) -> dict[str, MemoryProbe]:
    path = study_dir / PROBE_FILE
    if not path.exists():
        return {}
    try:
        return {label: MemoryProbe(**row) for label, row in json.loads(path.read_text()).items()}
    except (ValueError, TypeError):  # a damaged file: measure again
        return {}


def save_probes(study_dir: Path, probes: Mapping[str, MemoryProbe]) -> None:
    write_atomic(study_dir / PROBE_FILE, json.dumps({k: asdict(v) for k, v in probes.items()}, indent=1))
