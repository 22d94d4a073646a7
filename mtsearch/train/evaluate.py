"""Evaluation: video-level Hit@1/Hit@5 on a split the caller names, direction accuracy, tracking."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mtsearch.config import TrialConfig
from mtsearch.train.device import autocast, loader_workers


def named(split: str, figures: dict[str, float | None]) -> dict[str, float | None]:
    """`evaluate`'s figures as the columns of `split` (`val_hit1`, or `test_hit1`, ...)."""
    return {f"{split}_{k}" if k in ("hit1", "hit5", "mean_class_acc") else k: v for k, v in figures.items()}


def mean_class_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of each class present, averaged over those classes (each class counts the
    same, however many videos it has)."""
    correct = (scores.argmax(dim=1) == labels).float()
    classes = labels.unique()
    return torch.stack([correct[labels == c].mean() for c in classes]).mean().item()


def hit_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (k capped at the class count)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    cfg: TrialConfig,
    device: torch.device,
) -> dict[str, float | None]:
    """Video-level Hit@1/Hit@5 and mean class accuracy: softmax averaged over each video's clips
    (its non-overlapping clips, or K temporal clips x N crops: the dataset's `views`).

    Which clips the direction head sees reversed is fixed per clip (seeded by `seed`), not per
    batch, so every figure is the same whatever `eval.batch_size` is. Sums stay on the device
    until the end: one host sync per evaluation.
    """
    from mtsearch.data.clips import normalise_batch
    from mtsearch.model.multibranch import StepDraws

    num_videos, num_clips = loader.dataset.num_videos, len(loader.dataset)
    model.eval()
    reversed_clips = torch.zeros(num_clips, dtype=torch.bool)
    order = torch.randperm(num_clips, generator=torch.Generator().manual_seed(cfg.seed + 7))
    reversed_clips[order[: num_clips // 2]] = True
    reversed_clips = reversed_clips.to(device)
    prob_sum: torch.Tensor | None = None
    clip_count = torch.zeros(num_videos, device=device)
    labels = torch.full((num_videos,), -1, dtype=torch.long, device=device)
    dir_correct = torch.zeros((), device=device)
    cosine_sum = torch.zeros((), device=device)
    tracking = None
    if getattr(model, "tracking", None) is not None:
        from mtsearch.train.tracking_eval import TrackingEval

        tracking = TrackingEval(loader.dataset, cfg, model, device)
    offset = 0
    for x, y, vid in loader:
        x = normalise_batch(x.to(device, non_blocking=True))
        y, vid = y.to(device, non_blocking=True), vid.to(device, non_blocking=True)
        draws = StepDraws(reverse=reversed_clips[offset : offset + len(vid)])
        with autocast(device):
            out = model(x, track=False, draws=draws)
            if tracking is not None:
                tracking.add(out.features, x, offset)
        offset += len(vid)
        probs = F.softmax(out.logits.float(), dim=1)
        if prob_sum is None:
            prob_sum = torch.zeros(num_videos, probs.shape[1], device=device)
        prob_sum.index_add_(0, vid, probs)
        clip_count.index_add_(0, vid, torch.ones_like(vid, dtype=clip_count.dtype))
        labels[vid] = y
        if out.dir_logits is not None:
            dir_correct += (out.dir_logits.argmax(1) == out.dir_labels).sum()
        if out.feature_cosine is not None:
            cosine_sum += out.feature_cosine.sum()
    model.train()
    if prob_sum is None:
        return {}
    seen = clip_count > 0
    scores = (prob_sum[seen] / clip_count[seen, None]).cpu()
    seen_labels = labels[seen].cpu()
    return {
        "hit1": hit_at_k(scores, seen_labels, 1),
        "hit5": hit_at_k(scores, seen_labels, 5),
        "mean_class_acc": mean_class_accuracy(scores, seen_labels),
        "dir_acc": dir_correct.item() / offset if model.dir_head is not None and offset else None,
        "track_feat_cos": cosine_sum.item() / offset if model.tracking is not None and offset else None,
        **(tracking.result() if tracking is not None else {}),
    }


def evaluate_once(
    model: torch.nn.Module, clips: Any, cfg: TrialConfig, device: torch.device
) -> dict[str, float | None]:
    """One evaluation on a split the trainer reads once (the test split); its workers end with it."""
    from mtsearch.data.clips import make_loader

    if not len(clips):
        return {}
    loader = make_loader(clips, cfg.eval_batch_size, False, loader_workers(cfg, device), device, cfg.seed)
    return evaluate(model, loader, cfg, device)
