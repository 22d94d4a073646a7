"""The trainer: `fit(config, on_epoch=...)`, a plain function that knows nothing of Ray.

One epoch = one random clip per training video (thesis §4.2). Evaluation every `eval.every`
epochs and after the last: video-level prediction by averaging softmax over all non-overlapping
centre-cropped clips, Hit@1/Hit@5 over videos, direction accuracy on the same clips.
Checkpoints (model, optimizer, scheduler, RNG states, history) are written atomically after
every epoch, so a killed run resumes from its last finished epoch and reproduces the metrics
of an uninterrupted run (same seed, CPU): every random choice is seeded from (seed, epoch).
ReduceLROnPlateau is stepped each epoch on the epoch's training loss ("the learning rate is
reduced whenever the loss plateaus", thesis §4.2), so its patience counts epochs.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtsearch.config import TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.store import EPOCH_COLUMNS

CHECKPOINT_FILE = "state.pt"

OnEpoch = Callable[[dict[str, Any], "Path | None"], "bool | None"]
OnBatch = Callable[[int, int, float, float], None]  # (done, total, running loss, clips/s)


@dataclass
class FitResult:
    status: str  # completed | diverged | stopped
    epochs_done: int
    best_epoch: int | None
    best_val_hit1: float | None
    best_val_hit5: float | None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Diverged(Exception):
    """A NaN/inf loss: the run stops with status `diverged`."""


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(None, "device", "CUDA is not available on this machine", spec)
    return torch.device(spec)


def hit_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (k capped at the class count)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def fit(
    cfg: TrialConfig,
    out_dir: str | Path | None = None,
    on_epoch: OnEpoch | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    on_batch: OnBatch | None = None,
    warn: Callable[[str], None] | None = None,
) -> FitResult:
    """Train `cfg` for `optim.epochs` epochs; checkpoints go to `out_dir/checkpoint/`.

    `log` gets progress notes, `warn` (default: `log`) the videos skipped as unreadable.
    """
    from mtsearch.data.cache import FrameCache
    from mtsearch.data.clips import TestClips, TrainClips, make_loader, usable_videos
    from mtsearch.data.datasets import index_for_config
    from mtsearch.model import MultiBranchNet
    from mtsearch.paths import frames_dir

    say = log or (lambda msg: None)
    warn = warn or say
    cfg = cfg.resolved()
    device = pick_device(cfg.device)
    _configure_torch(device, cfg.threads)
    ckpt_dir = Path(out_dir) / "checkpoint" if out_dir is not None else None

    index = index_for_config(cfg, warn=warn)
    cache = FrameCache(frames_dir(cfg.data.cache_dir))
    fps, short = cfg.data.fps, cfg.short_side
    train_items = usable_videos(index.train, cache, fps, short, warn)
    test_items = usable_videos(index.test, cache, fps, short, warn)
    if not train_items:
        raise RuntimeError(f"no usable training videos in {index.root} (split {cfg.data.split})")
    num_classes = len(index.classes)

    _seed_everything(cfg.seed)
    model = MultiBranchNet(cfg, num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=cfg.optim.plateau_patience
    )
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resume and ckpt_dir is not None and (ckpt_dir / CHECKPOINT_FILE).exists():
        state = _load_checkpoint(ckpt_dir, cfg, model, optimizer, scheduler, device)
        history = state["history"]
        start_epoch = state["epoch"] + 1
        say(f"resuming from epoch {state['epoch']} ({ckpt_dir})")

    workers = cfg.data.workers if cfg.data.workers is not None else (
        min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    )
    train_set = TrainClips(train_items, cache, fps, short, cfg.data.clip_frames, cfg.crop, cfg.seed)
    test_set = TestClips(test_items, cache, fps, short, cfg.data.clip_frames, cfg.crop)
    train_loader = make_loader(train_set, cfg.optim.batch_size, True, workers, device, cfg.seed)
    test_loader = make_loader(test_set, cfg.optim.batch_size, False, workers, device, cfg.seed)

    status, error = "completed", None
    for epoch in range(start_epoch, cfg.optim.epochs + 1):
        _seed_everything(cfg.seed * 100_003 + epoch)
        train_set.set_epoch(epoch)
        t0 = time.perf_counter()
        try:
            train_stats = _train_epoch(model, train_loader, optimizer, cfg, device, epoch, on_batch)
        except Diverged as exc:
            status, error = "diverged", str(exc)
            say(f"epoch {epoch}: {error}")
            break
        scheduler.step(train_stats["loss"])
        do_eval = epoch % cfg.eval.every == 0 or epoch == cfg.optim.epochs
        val = _evaluate(model, test_loader, len(test_items), cfg, device) if do_eval and test_items else {}
        seconds = time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            **train_stats,
            "val_hit1": val.get("val_hit1"),
            "val_hit5": val.get("val_hit5"),
            "dir_acc": val.get("dir_acc"),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_s": seconds,
        }
        metrics = {key: metrics.get(key) for key in EPOCH_COLUMNS}
        history.append(metrics)
        if ckpt_dir is not None:
            _save_checkpoint(ckpt_dir, cfg, epoch, model, optimizer, scheduler, history)
        if on_epoch is not None and on_epoch(metrics, ckpt_dir) is False:
            status = "stopped" if epoch < cfg.optim.epochs else "completed"
            break

    best = best_epoch(history)
    return FitResult(
        status=status,
        epochs_done=len(history),
        best_epoch=best["epoch"] if best else None,
        best_val_hit1=best["val_hit1"] if best else None,
        best_val_hit5=best["val_hit5"] if best else None,
        error=error,
        history=history,
    )


def best_epoch(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluated epoch with the highest val_hit1 (ties: the earlier one)."""
    evaluated = [h for h in history if h.get("val_hit1") is not None]
    if not evaluated:
        return None
    return max(evaluated, key=lambda h: (h["val_hit1"], -h["epoch"]))


# ---- one epoch ---------------------------------------------------------------------------------

def _train_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: TrialConfig,
    device: torch.device,
    epoch: int,
    on_batch: OnBatch | None,
) -> dict[str, float | None]:
    from mtsearch.model import compute_losses

    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # patches, reversals
    sums: dict[str, float] = {}
    clips = correct = 0
    total = len(loader)
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader, 1):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with _autocast(device):
            out = model(x, track=True, generator=gen)
            losses = compute_losses(out, y, cfg)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise Diverged(f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        n = y.shape[0]
        clips += n
        correct += (out.logits.detach().argmax(1) == y).sum().item()
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float().item() * n
        if on_batch is not None:
            on_batch(step, total, sums["loss"] / clips, clips / (time.perf_counter() - start))
    seconds = time.perf_counter() - start
    stats: dict[str, float | None] = {
        key: (sums[key] / clips if key in sums else None)
        for key in ("loss", "loss_cls", "loss_track", "loss_dir")
    }
    stats["train_hit1"] = correct / clips if clips else None
    stats["clips_per_s"] = clips / seconds if seconds > 0 else None
    return stats


@torch.no_grad()
def _evaluate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    num_videos: int,
    cfg: TrialConfig,
    device: torch.device,
) -> dict[str, float | None]:
    """Video-level Hit@1/Hit@5: softmax averaged over each video's non-overlapping clips."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7)  # same reversals every evaluation
    prob_sum: torch.Tensor | None = None
    clip_count = torch.zeros(num_videos)
    labels = torch.full((num_videos,), -1, dtype=torch.long)
    dir_correct = dir_total = 0
    for x, y, vid in loader:
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with _autocast(device):
            out = model(x, track=False, generator=gen)
        probs = F.softmax(out.logits.float(), dim=1).cpu()
        if prob_sum is None:
            prob_sum = torch.zeros(num_videos, probs.shape[1])
        prob_sum.index_add_(0, vid, probs)
        clip_count.index_add_(0, vid, torch.ones(len(vid)))
        labels[vid] = y
        if out.dir_logits is not None:
            dir_correct += (out.dir_logits.argmax(1).cpu() == out.dir_labels.cpu()).sum().item()
            dir_total += len(vid)
    model.train()
    if prob_sum is None:
        return {}
    seen = clip_count > 0
    scores = prob_sum[seen] / clip_count[seen, None]
    return {
        "val_hit1": hit_at_k(scores, labels[seen], 1),
        "val_hit5": hit_at_k(scores, labels[seen], 5),
        "dir_acc": dir_correct / dir_total if dir_total else None,
    }


# ---- plumbing ----------------------------------------------------------------------------------

def _configure_torch(device: torch.device, threads: int | None) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if threads is not None:
        torch.set_num_threads(threads)  # CPU results depend on it: pinned for reproducibility
    elif "OMP_NUM_THREADS" not in os.environ:
        # all cores this process may use (Ray sets OMP_NUM_THREADS to the trial's CPUs)
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def _autocast(device: torch.device) -> torch.autocast:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _seed_everything(seed: int) -> None:
    seed = seed % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save_checkpoint(
    ckpt_dir: Path,
    cfg: TrialConfig,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    history: list[dict[str, Any]],
) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": history,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    tmp = ckpt_dir / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, ckpt_dir / CHECKPOINT_FILE)


def checkpoint_history(ckpt_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics saved in a checkpoint folder ([] when there is none)."""
    path = Path(ckpt_dir) / CHECKPOINT_FILE
    if not path.exists():
        return []
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # a damaged checkpoint is a user-facing input problem
        raise InvalidInput(path, None, f"cannot read checkpoint: {exc}") from None
    return list(state["history"])


def _load_checkpoint(
    ckpt_dir: Path,
    cfg: TrialConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> dict[str, Any]:
    path = ckpt_dir / CHECKPOINT_FILE
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a damaged checkpoint is a user-facing input problem
        raise InvalidInput(path, None, f"cannot read checkpoint: {exc}") from None
    saved = TrialConfig.from_mapping(state["config"], path).to_flat()
    current = cfg.to_flat()
    for key, value in current.items():
        if key != "optim.epochs" and saved.get(key) != value:
            raise InvalidInput(
                path, key,
                f"differs from the checkpoint's value {saved.get(key)!r}; use another --out folder",
                value,
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu() if hasattr(rng["torch"], "cpu") else rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
