"""One trial: `fit(config, on_epoch=...)`, a plain function that knows nothing of Ray.

The files each do one job: `step` (the build sequence, the training step and an epoch of it),
`evaluate` (video-level Hit@k on a split the caller names), `checkpoint` (state.pt in and out),
`device` (where and how it computes) and `fit` (the loop that ties them together).
"""

from mtsearch.train.checkpoint import CHECKPOINT_FILE, checkpoint_history
from mtsearch.train.device import (
    compile_wanted,
    configure_torch,
    loader_workers,
    peak_memory_gib,
    pick_device,
)
from mtsearch.train.evaluate import evaluate, hit_at_k
from mtsearch.train.fit import FitResult, OnEpoch, fit, load_clips
from mtsearch.train.step import (
    GRAPH_WARMUP,
    SYNC_EVERY,
    Diverged,
    Training,
    TrainStep,
    build_training,
    make_optimizer,
    step_lr_scheduler,
)

__all__ = [
    "CHECKPOINT_FILE", "GRAPH_WARMUP", "SYNC_EVERY", "Diverged", "FitResult", "OnEpoch", "TrainStep",
    "Training", "build_training", "checkpoint_history", "compile_wanted", "configure_torch", "evaluate",
    "fit", "hit_at_k", "load_clips", "loader_workers", "make_optimizer", "peak_memory_gib", "pick_device",
    "step_lr_scheduler",
]
