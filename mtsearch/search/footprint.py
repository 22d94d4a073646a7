"""What a study will need on disk, so a search that cannot fit is flagged before it starts.

A study holds checkpoints: each running trial has Tune's last reported checkpoint and the
trainer's working copy, and the best `storage.keep_checkpoints` finished trials keep theirs. The
size of one is measured from the study's own checkpoints once there are some (a resumed study),
else estimated from the network's parameter count: weights and Adam's two moments, in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtsearch.config import TrialConfig
from mtsearch.files import disk_usage, human_bytes
from mtsearch.space import SpaceSpec

_BYTES_PER_PARAMETER = 4 * 3  # float32 weights + Adam's exp_avg and exp_avg_sq
_CLASSES_GUESS = 51  # before the dataset is indexed (HMDB-51); the classifier is a small part


@dataclass(frozen=True)
class Footprint:
    checkpoint_bytes: int
    how: str  # "measured" or "from N parameters"
    checkpoints: int  # how many the study holds at its fullest

    @property
    def total(self) -> int:
        return self.checkpoint_bytes * self.checkpoints


def study_footprint(spec: SpaceSpec, study_dir: Path, tune_dir: str = "tune") -> Footprint:
    checkpoints = spec.storage.keep_checkpoints + 2 * spec.concurrent_trials
    if spec.scheduler.population_based:  # each member's weights of the last two boundaries, for copies
        checkpoints += 2 * spec.concurrent_trials
    measured = [disk_usage(p) for p in (study_dir / tune_dir).glob("*/checkpoint_*") if p.is_dir()]
    if measured:
        return Footprint(max(measured), "measured", checkpoints)
    params = max(parameter_count(cfg) for cfg in _model_variants(spec))
    seeds = 1 if spec.is_ablation else spec.search.seeds_per_trial  # a trial's checkpoint holds each seed's
    how = f"from {params / 1e6:.1f} M parameters" + (f" × {seeds} seeds" if seeds > 1 else "")
    return Footprint(params * _BYTES_PER_PARAMETER * seeds, how, checkpoints)


def shortfall_warning(spec: SpaceSpec, study_dir: Path) -> str | None:
    """A warning when the disk under `study_dir` has less free space than the study may use."""
    from mtsearch.errors import free_bytes

    free = free_bytes(study_dir)
    if free is None:
        return None
    need = study_footprint(spec, study_dir)
    if free >= need.total:
        return None
    return (f"only {human_bytes(free)} free under {study_dir}; the study may need {human_bytes(need.total)} "
            f"({need.checkpoints} checkpoints of {human_bytes(need.checkpoint_bytes)}, {need.how}: "
            f"{spec.storage.keep_checkpoints} kept + 2 per running trial); lower storage.keep_checkpoints or "
            "search.max_concurrent, or free space")


def _model_variants(spec: SpaceSpec) -> list[TrialConfig]:
    """The base config, and the base with each searched model key at each of its values."""
    variants = [spec.base]
    for key, dist in spec.space.items():
        if key.startswith("model.") and dist.kind in ("choice", "grid"):
            for value in dist.values:
                try:
                    variants.append(spec.base.with_overrides({key: value}, spec.source))
                except Exception:  # noqa: BLE001 - a tied grid level; the base stands in for it
                    continue
    return variants


def parameter_count(cfg: TrialConfig) -> int:
    """The network's parameter count, built on the meta device (no memory, no arithmetic)."""
    import torch

    from mtsearch.model import MultiBranchNet

    with torch.device("meta"):
        net = MultiBranchNet(cfg, _CLASSES_GUESS)
    return sum(p.numel() for p in net.parameters())
