"""The trainer: `fit(config, on_epoch=...)`, a plain function that knows nothing of Ray.

One epoch = one random clip per training video (thesis §4.2). Evaluation every `eval.every`
epochs and after the last: video-level prediction by averaging softmax over all non-overlapping
centre-cropped clips, Hit@1/Hit@5 over videos, direction accuracy on the same clips.
Checkpoints (model, optimizer, scheduler, RNG states, history) are written atomically after
every epoch, so a killed run resumes from its last finished epoch and reproduces the metrics
of an uninterrupted run (same seed, CPU): every random choice is seeded from (seed, epoch).
ReduceLROnPlateau is stepped each epoch on the epoch's training loss ("the learning rate is
reduced whenever the loss plateaus", thesis §4.2), so its patience counts epochs.

On a GPU the host must never wait for the device inside an epoch: loader workers hand
over uint8 clips in pinned memory, normalised on the device; a step's random choices are drawn on
the host and copied once; losses accumulate on the device and are read every SYNC_EVERY steps.
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
from mtsearch.files import atomic_output
from mtsearch.metrics import EVALUATED
from mtsearch.store import EPOCH_COLUMNS, best_epoch

CHECKPOINT_FILE = "state.pt"
# keys a resumed run may change: more epochs, and settings that do not change what is computed
RESUMABLE_CHANGES = frozenset({"optim.epochs", "eval.batch_size", "cuda_graph", "compile"})

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
    test_hit1: float | None = None  # the final weights on the test split (selection: val)
    test_hit5: float | None = None
    selection: str = "val"  # the split its evaluations ran on (a resumed older run: test)


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
    *,
    on_epoch: OnEpoch | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    on_batch: OnBatch | None = None,
    warn: Callable[[str], None] | None = None,
) -> FitResult:
    """Train `cfg` for `optim.epochs` epochs; checkpoints go to `out_dir/checkpoint/`.

    `log` gets progress notes, `warn` (default: `log`) the videos skipped as unreadable.
    """
    from mtsearch.data.clips import make_loader

    say = log or (lambda msg: None)
    warn = warn or say
    ckpt_file = Path(out_dir) / "checkpoint" / CHECKPOINT_FILE if out_dir is not None else None
    if resume and ckpt_file is not None and ckpt_file.exists():
        cfg = cfg.adopting(TrialConfig.from_record(_read_checkpoint(ckpt_file)["config"], ckpt_file))
    cfg = cfg.resolved()
    device = pick_device(cfg.device)
    configure_torch(device, cfg.threads)
    ckpt_dir = Path(out_dir) / "checkpoint" if out_dir is not None else None
    train_set, val_set, test_set, num_classes = load_clips(cfg, warn)
    # what evaluations during training (ASHA, Optuna, best_epoch) see; the test split once at the end
    eval_set = val_set if cfg.selection == "val" else test_set

    _seed_everything(cfg.seed)
    training = build_training(cfg, num_classes, device, warn)
    model, optimizer, scheduler, step = training.model, training.optimizer, training.scheduler, training.step
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resume and ckpt_dir is not None and (ckpt_dir / CHECKPOINT_FILE).exists():
        state = _load_checkpoint(ckpt_dir, cfg, model, optimizer, scheduler, device)
        history = state["history"]
        start_epoch = state["epoch"] + 1
        say(f"resuming from epoch {state['epoch']} ({ckpt_dir})")

    workers = loader_workers(cfg, device)
    train_loader = make_loader(train_set, cfg.optim.batch_size, True, workers, device, cfg.seed)
    eval_loader = make_loader(eval_set, cfg.eval_batch_size, False, workers, device, cfg.seed)

    status, error = "completed", None
    for epoch in range(start_epoch, cfg.optim.epochs + 1):
        _seed_everything(cfg.seed * 100_003 + epoch)
        train_set.set_epoch(epoch)
        if model.track_trains_trunk != (epoch > cfg.track.warmup_epochs):
            model.track_trains_trunk = epoch > cfg.track.warmup_epochs
            step.forget_graph()  # a captured step would keep the warm-up's detached trunk
        t0 = time.perf_counter()
        try:
            train_stats = _train_epoch(step, model, train_loader, cfg, epoch, on_batch)
        except Diverged as exc:
            status, error = "diverged", str(exc)
            say(f"epoch {epoch}: {error}")
            break
        step_lr_scheduler(scheduler, optimizer, train_stats["loss"])
        do_eval = epoch % cfg.eval.every == 0 or epoch == cfg.optim.epochs
        val = evaluate(model, eval_loader, cfg, device) if do_eval and len(eval_set) else {}
        test = {}
        if epoch == cfg.optim.epochs:  # the final weights meet the test split once
            test = val if eval_set is test_set else _evaluate_once(model, test_set, cfg, device)
        metrics = _epoch_row(epoch, train_stats, val, test, optimizer, time.perf_counter() - t0)
        history.append(metrics)
        metrics = {**metrics, "peak_mem_gib": peak_memory_gib(device), "device": device_label(device)}
        if ckpt_dir is not None:
            _save_checkpoint(ckpt_dir, cfg, epoch, model, optimizer, scheduler, history)
        if on_epoch is not None and on_epoch(metrics, ckpt_dir) is False:
            status = "stopped" if epoch < cfg.optim.epochs else "completed"
            break

    return _fit_result(status, error, history, cfg.selection)


def _epoch_row(epoch: int, train_stats: dict[str, Any], val: dict[str, Any], test: dict[str, Any],
               optimizer: torch.optim.Optimizer, seconds: float) -> dict[str, Any]:
    """One epochs.parquet row: the training figures, the evaluation's (on the split it selects
    with) and, after the last epoch, the test split's."""
    metrics = {
        "epoch": epoch,
        **train_stats,
        **{name: val.get(name) for name in EVALUATED},
        "lr": float(optimizer.param_groups[0]["lr"]),
        "epoch_s": seconds,
        "test_hit1": test.get("val_hit1"),
        "test_hit5": test.get("val_hit5"),
    }
    return {key: metrics.get(key) for key in EPOCH_COLUMNS}


def _fit_result(status: str, error: str | None, history: list[dict[str, Any]], selection: str) -> FitResult:
    best = best_epoch(history)
    return FitResult(
        status=status,
        epochs_done=len(history),
        best_epoch=best["epoch"] if best else None,
        best_val_hit1=best["val_hit1"] if best else None,
        best_val_hit5=best["val_hit5"] if best else None,
        error=error,
        history=history,
        test_hit1=history[-1].get("test_hit1") if history else None,
        test_hit5=history[-1].get("test_hit5") if history else None,
        selection=selection,
    )


@dataclass
class Training:
    """What a trial trains with, built one way (`build_training`) for `fit`, the memory probe and
    the benchmarks, so that each measures the step a trial really runs."""

    model: Any  # MultiBranchNet
    optimizer: torch.optim.Optimizer
    scheduler: Any  # ReduceLROnPlateau on the training loss
    step: TrainStep


def build_training(
    cfg: TrialConfig, num_classes: int, device: torch.device, warn: Callable[[str], None],
    *, bf16: bool = True,
) -> Training:
    """The network (channels-last and compiled stages on a GPU, as `compile_wanted` says), its
    optimiser, learning-rate schedule and training step. Seed first for a trial's own weights."""
    from mtsearch.model import MultiBranchNet

    model = MultiBranchNet(cfg, num_classes).to(device)
    if device.type == "cuda":
        model = model.channels_last()
    if compile_wanted(cfg, device):
        model.compile_stages()
    use_graph = cfg.cuda_graph and device.type == "cuda"
    optimizer = make_optimizer(model, cfg, device, use_graph)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=cfg.optim.plateau_patience
    )
    step = TrainStep(model, optimizer, cfg, device, use_graph, warn, bf16=bf16)
    return Training(model, optimizer, scheduler, step)


def _evaluate_once(
    model: torch.nn.Module, clips: Any, cfg: TrialConfig, device: torch.device
) -> dict[str, float | None]:
    """One evaluation on a split the trainer reads once (the test split); its workers end with it."""
    from mtsearch.data.clips import make_loader

    if not len(clips):
        return {}
    loader = make_loader(clips, cfg.eval_batch_size, False, loader_workers(cfg, device), device, cfg.seed)
    return evaluate(model, loader, cfg, device)


def device_label(device: torch.device) -> str:
    """`cpu` or `cuda:0 NVIDIA H200`: what a trial ran on, for trials.parquet."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by this process on CUDA, else the process's peak RSS, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def load_clips(cfg: TrialConfig, warn: Callable[[str], None]) -> tuple[Any, Any, Any, int]:
    """(training clips, validation clips, test clips, number of classes) of a resolved config.

    The validation videos are carved from the training split (`data.val_fraction`, see
    data/splits.py). Fills the frame cache; unreadable videos are skipped with `warn`.
    """
    from mtsearch.data.cache import FrameCache
    from mtsearch.data.clips import TestClips, TrainClips, usable_videos
    from mtsearch.data.datasets import index_for_config
    from mtsearch.data.splits import carve
    from mtsearch.paths import frames_dir

    index = index_for_config(cfg, warn=warn)
    split = carve(index, cfg.val_fraction)
    cache = FrameCache(frames_dir(cfg.data.cache_dir))
    fps, short, frames = cfg.data.fps, cfg.short_side, cfg.data.clip_frames
    train_items = usable_videos(split.train, cache, fps, short, warn)
    val_items = usable_videos(split.val, cache, fps, short, warn)
    test_items = usable_videos(split.test, cache, fps, short, warn)
    if not train_items:
        raise RuntimeError(f"no usable training videos in {index.root} (split {cfg.data.split})")
    train_set = TrainClips(train_items, cache, fps, short, frames, cfg.crop, cfg.seed)
    val_set = TestClips(val_items, cache, fps, short, frames, cfg.crop)
    test_set = TestClips(test_items, cache, fps, short, frames, cfg.crop)
    return train_set, val_set, test_set, len(index.classes)


MAX_WORKERS = 8  # loader workers a GPU trial needs at most (thesis: data_wait 0.05 with 8)


def loader_workers(cfg: TrialConfig, device: torch.device) -> int:
    """DataLoader workers: `data.workers`, else none on the CPU (the step is the bottleneck), and
    on CUDA one fewer than the CPUs the trial may use (`threads`: a search pins it to
    `cpus_per_trial`), at most MAX_WORKERS; the main process keeps one CPU.
    """
    if cfg.data.workers is not None:
        return cfg.data.workers
    if device.type != "cuda":
        return 0
    cpus = cfg.threads if cfg.threads is not None else len(os.sched_getaffinity(0))
    return max(0, min(MAX_WORKERS, cpus - 1))


def make_optimizer(
    model: torch.nn.Module, cfg: TrialConfig, device: torch.device, cuda_graph: bool = False
) -> torch.optim.Optimizer:
    """Adam (thesis §4.2); fused on CUDA (one kernel for all parameters).

    For a CUDA graph it is capturable and its learning rate a device tensor, so the graph reads
    the rate that ReduceLROnPlateau sets instead of the one it was captured with.
    """
    options: dict[str, Any] = {"betas": cfg.optim.betas, "weight_decay": cfg.optim.weight_decay}
    lr: float | torch.Tensor = cfg.lr
    if device.type == "cuda":
        options["fused"] = True
        if cuda_graph:
            options["capturable"] = True
            lr = torch.tensor(cfg.lr, device=device)
    return torch.optim.Adam(model.parameters(), lr=lr, **options)


def step_lr_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer, loss: float | None) -> None:
    """ReduceLROnPlateau on the epoch's loss, keeping a tensor learning rate the same tensor."""
    rates = [group["lr"] for group in optimizer.param_groups]
    scheduler.step(loss)
    for group, rate in zip(optimizer.param_groups, rates):
        if isinstance(rate, torch.Tensor) and group["lr"] is not rate:
            rate.fill_(float(group["lr"]))
            group["lr"] = rate


# ---- one epoch ---------------------------------------------------------------------------------

SYNC_EVERY = 20  # training steps between host reads of the running sums (NaN check, progress bar)
GRAPH_WARMUP = 3  # eager steps before a CUDA graph is captured (cuDNN autotuning, Adam's state)
_SUMS = ("loss", "loss_cls", "loss_track", "loss_dir")  # summed * clips; then correct, first bad


class TrainStep:
    """Forward, losses, backward, clipping and Adam on one batch, queued without a host sync.

    The epoch's running sums (losses weighted by clips, correct predictions) and the first step
    whose loss was not finite stay on the device; `read()` fetches them, which the epoch does
    every SYNC_EVERY steps, so a NaN/inf loss ends the run within that many steps.

    With `cuda_graph` (CUDA only) the whole step is captured once in a CUDA graph after
    GRAPH_WARMUP eager steps and replayed for every full batch: one launch instead of thousands,
    which is what small presets are bound by. Inputs are copied into static buffers first; a
    batch of another size (an epoch's last) runs eagerly on the same weights and optimizer.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: TrialConfig,
        device: torch.device,
        cuda_graph: bool,
        warn: Callable[[str], None],
        bf16: bool = True,
    ):
        self.model, self.optimizer, self.cfg, self.device = model, optimizer, cfg, device
        self.use_graph = cuda_graph and device.type == "cuda"
        self.bf16 = bf16  # autocast on CUDA (the trainer always; benchmarks also measure fp32)
        self.warn = warn
        self.graph: Any = None
        self.static: tuple[Any, ...] | None = None
        self.eager_steps = 0
        self.sums = torch.zeros(len(_SUMS) + 1, device=device)
        self.first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.long, device=device)
        self.counter = torch.zeros((), dtype=torch.long, device=device)

    def forget_graph(self) -> None:
        """Drop a captured step (the step itself changed); the next full batches capture anew."""
        self.graph, self.static, self.eager_steps = None, None, 0

    def reset(self) -> None:
        """Zero the running sums (in place: a captured graph keeps adding into the same memory)."""
        self.sums.zero_()
        self.first_bad.fill_(_NO_BAD_STEP)
        self.counter.zero_()

    def read(self) -> tuple[dict[str, float], int | None]:
        """(sums, first step with a non-finite loss or None): one host sync."""
        values = torch.cat([self.sums, self.first_bad.view(1).to(self.sums.dtype)]).tolist()
        sums = dict(zip((*_SUMS, "correct"), values))
        bad = int(values[-1])
        return sums, (bad if bad != _NO_BAD_STEP else None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, draws: Any) -> None:
        if self.graph is not None and self.static is not None and x.shape == self.static[0].shape:
            static_x, static_y, static_draws = self.static
            pairs = [(static_x, x), (static_y, y), (static_draws.reverse, draws.reverse),
                     (static_draws.patch_theta, draws.patch_theta),
                     (static_draws.patch_pick, draws.patch_pick)]
            for static, value in pairs:
                if static is not None:
                    static.copy_(value, non_blocking=True)
            self.graph.replay()
            return
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        draws = draws.to(self.device, non_blocking=True)
        if self.use_graph and self.graph is None:
            full = y.shape[0] == self.cfg.optim.batch_size  # capture the common shape only
            if full and self.eager_steps >= GRAPH_WARMUP and self._capture(x, y, draws):
                self.graph.replay()  # capturing records the step; replaying runs it
                return
            if self.use_graph:  # warm-up steps run on a side stream, as capture requires
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    self._step(x, y, draws)
                torch.cuda.current_stream(self.device).wait_stream(side)
                self.eager_steps += 1
                return
        self._step(x, y, draws)
        self.eager_steps += 1

    def _step(self, x_uint8: torch.Tensor, y: torch.Tensor, draws: Any) -> None:
        from mtsearch.data.clips import normalise_batch
        from mtsearch.model import compute_losses

        x = normalise_batch(x_uint8)  # (B, 3, T, H, W) float32, channels-last-3d
        with _autocast(self.device, cache=not self.use_graph, enabled=self.bf16):
            out = self.model(x, track=True, draws=draws)
            losses = compute_losses(out, y, self.cfg)
        loss = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            n = y.shape[0]
            zero = loss.new_zeros(())
            terms = [losses.get(key, zero).detach().float() * n for key in _SUMS]
            correct = (out.logits.detach().argmax(1) == y).sum().float()
            self.sums += torch.stack([*terms, correct])
            self.counter += 1
            bad = ~torch.isfinite(loss.detach())
            self.first_bad.copy_(torch.where(bad, torch.minimum(self.first_bad, self.counter), self.first_bad))

    def _capture(self, x: torch.Tensor, y: torch.Tensor, draws: Any) -> bool:
        """Capture one step on static copies of this batch; False (and eager from now on) on failure."""
        static = (x.clone(), y.clone(), draws.clone())
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates its grads
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._step(*static)
        except Exception as exc:  # an op that cannot be captured: keep training eagerly
            self.warn(f"CUDA graph capture failed, training without it: {exc}")
            self.use_graph = False
            torch.cuda.synchronize(self.device)
            return False
        self.graph, self.static = graph, static
        return True


_NO_BAD_STEP = 2**62


def _train_epoch(
    step: TrainStep,
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    cfg: TrialConfig,
    epoch: int,
    on_batch: OnBatch | None,
) -> dict[str, float | None]:
    model.train()
    step.reset()
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # patches, reversals
    clips = 0
    total = len(loader)
    start = time.perf_counter()
    waited = 0.0
    batches = iter(loader)
    done = 0

    def checked_sums() -> dict[str, float]:
        """The running sums (one host sync); a non-finite loss so far ends the epoch."""
        sums, bad = step.read()
        if bad is not None:
            raise Diverged(f"non-finite loss at epoch {epoch}, batch {bad}")
        return sums

    def report_progress(sums: dict[str, float]) -> None:
        if on_batch is not None:
            on_batch(done, total, sums["loss"] / clips, clips / (time.perf_counter() - start))

    while True:
        before = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - before
        if batch is None:
            break
        x, y = batch
        done += 1
        clips += y.shape[0]
        step(x, y, model.draw(y.shape[0], gen))  # host draws, in the landed order
        if done % SYNC_EVERY == 0:
            report_progress(checked_sums())
    sums = checked_sums()
    if done % SYNC_EVERY and clips:
        report_progress(sums)  # the epoch's last refresh
    seconds = time.perf_counter() - start
    ran = {key for key in _SUMS if key == "loss" or cfg.has(key.removeprefix("loss_"))}
    stats: dict[str, float | None] = {
        key: (sums[key] / clips if clips and key in ran else None) for key in _SUMS
    }
    stats["train_hit1"] = sums["correct"] / clips if clips else None
    stats["clips_per_s"] = clips / seconds if seconds > 0 else None
    stats["data_wait"] = min(1.0, waited / seconds) if seconds > 0 else None
    return stats


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    cfg: TrialConfig,
    device: torch.device,
) -> dict[str, float | None]:
    """Video-level Hit@1/Hit@5: softmax averaged over each video's non-overlapping clips.

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
        from mtsearch.tracking_eval import TrackingEval

        tracking = TrackingEval(loader.dataset, cfg, model, device)
    offset = 0
    for x, y, vid in loader:
        x = normalise_batch(x.to(device, non_blocking=True))
        y, vid = y.to(device, non_blocking=True), vid.to(device, non_blocking=True)
        draws = StepDraws(reverse=reversed_clips[offset : offset + len(vid)])
        with _autocast(device):
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
        "val_hit1": hit_at_k(scores, seen_labels, 1),
        "val_hit5": hit_at_k(scores, seen_labels, 5),
        "dir_acc": dir_correct.item() / offset if model.dir_head is not None and offset else None,
        "track_feat_cos": cosine_sum.item() / offset if model.tracking is not None and offset else None,
        **(tracking.result() if tracking is not None else {}),
    }


# ---- plumbing ----------------------------------------------------------------------------------

def compile_wanted(cfg: TrialConfig, device: torch.device) -> bool:
    """`compile` on a GPU; unset, only for `thesis`, where about a minute of compilation buys
    1.26x per step over an hour-long trial. On the CPU compiling costs more than a trial saves."""
    if device.type != "cuda":
        return False
    return cfg.compile if cfg.compile is not None else cfg.model.preset == "thesis"


def configure_torch(device: torch.device, threads: int | None) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if threads is not None:
        torch.set_num_threads(threads)  # CPU results depend on it: pinned for reproducibility
    elif "OMP_NUM_THREADS" not in os.environ:
        # all cores this process may use (Ray sets OMP_NUM_THREADS to the trial's CPUs)
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def _autocast(device: torch.device, cache: bool = True, enabled: bool = True) -> torch.autocast:
    """bf16 on CUDA; `cache=False` under CUDA graph capture (the autocast cache must not persist)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache, enabled=enabled)
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
        "optimizer": _portable_optimizer_state(optimizer),
        "scheduler": scheduler.state_dict(),
        "history": history,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    with atomic_output(ckpt_dir / CHECKPOINT_FILE) as tmp:  # fsync, then rename
        torch.save(state, tmp)


def _portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with plain-number learning rates (loads into any Adam)."""
    state = optimizer.state_dict()
    state["param_groups"] = [
        {**group, "lr": float(group["lr"])} for group in state["param_groups"]
    ]
    return state


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load Adam's state, keeping tensor learning rates tensors and reshaping pre-fast-path state.

    Before the fast path, the trunk's and the tracking branch's weights were 5-D (out, in, 1, k, k);
    their Adam moments had that shape too and are reshaped to the 2D weights they belong to.
    """
    rates = [group["lr"] for group in optimizer.param_groups]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in saved.get("state", {}).items():
        param = params[int(index)] if int(index) < len(params) else None
        if param is None:
            continue
        for key, value in values.items():
            if (
                isinstance(value, torch.Tensor) and value.dim() > 0
                and value.shape != param.shape and value.numel() == param.numel()
            ):
                values[key] = value.reshape(param.shape)
    optimizer.load_state_dict(saved)
    for group, rate in zip(optimizer.param_groups, rates):
        if isinstance(rate, torch.Tensor):
            rate.fill_(float(group["lr"]))
            group["lr"] = rate


def checkpoint_history(ckpt_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics saved in a checkpoint folder ([] when there is none)."""
    path = Path(ckpt_dir) / CHECKPOINT_FILE
    return list(_read_checkpoint(path)["history"]) if path.exists() else []


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint memory-mapped on the CPU (cheap: tensors are read only when touched)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # a damaged checkpoint is a user-facing input problem
        raise InvalidInput(path, None, f"cannot read checkpoint: {exc}") from None


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
    saved = TrialConfig.from_record(state["config"], path).to_flat()
    current = cfg.to_flat()
    for key, value in current.items():
        if key not in RESUMABLE_CHANGES and saved.get(key) != value:
            raise InvalidInput(
                path, key,
                f"differs from the checkpoint's value {saved.get(key)!r}; use another --out folder",
                value,
            )
    model.load_state_dict(state["model"])  # an old (3D trunk) layout loads too
    _load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu() if hasattr(rng["torch"], "cpu") else rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
