"""The training step and one epoch of it: forward, losses, backward, clipping and Adam, with the
host never waiting on the device inside an epoch.

`build_training` is the one build sequence (model -> optimiser -> schedule -> step) that `fit`,
the memory probe and every benchmark use, so each measures the step a trial really runs. On a GPU,
loader workers hand over uint8 clips in pinned memory, normalised on the device; a step's random
choices are drawn on the host and copied once; losses accumulate on the device and are read every
SYNC_EVERY steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from mtsearch.config import TrialConfig
from mtsearch.train.device import autocast, compile_wanted
from mtsearch.train.in_force import in_force

OnBatch = Callable[[int, int, float, float], None]  # (done, total, running loss, clips/s)


class Diverged(Exception):
    """A NaN/inf loss: the run stops with status `diverged`."""


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
        self.side_stream: Any = None  # capture_stream() where the current stream is the default
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
            if self.use_graph:  # warm-up steps run on the stream the capture will use
                with self._on_capture_stream():
                    self._step(x, y, draws)
                self.eager_steps += 1
                return
        self._step(x, y, draws)
        self.eager_steps += 1

    def _step(self, x_uint8: torch.Tensor, y: torch.Tensor, draws: Any) -> None:
        from mtsearch.data.clips import normalise_batch
        from mtsearch.model import compute_losses

        x = normalise_batch(x_uint8)  # (B, 3, T, H, W) float32, channels-last-3d
        with autocast(self.device, cache=not self.use_graph, enabled=self.bf16):
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
        stream = self.capture_stream()
        try:
            stream.wait_stream(torch.cuda.current_stream(self.device))
            stream.synchronize()
            self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates its grads
            # on this step's own stream (a slot's, for its life), never the class-wide one that
            # torch.cuda.graph draws by default and every thread would share
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                self._step(*static)
        except Exception as exc:  # an op that cannot be captured: keep training eagerly
            self.warn(f"CUDA graph capture failed, training without it: {exc}")
            self.use_graph = False
            stream.synchronize()
            return False
        self.graph, self.static = graph, static
        return True

    def capture_stream(self) -> Any:
        """The stream warm-up and capture run on: the current one where it is not the device's
        default (a slot's own stream), else one side stream of this step's, made once (capture
        cannot run on the default stream)."""
        current = torch.cuda.current_stream(self.device)
        if current != torch.cuda.default_stream(self.device):
            return current
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream(self.device)
        return self.side_stream

    @contextmanager
    def _on_capture_stream(self) -> Iterator[None]:
        """Run on `capture_stream()`, ordered after and before the current stream's work."""
        current = torch.cuda.current_stream(self.device)
        stream = self.capture_stream()
        if stream == current:
            yield
            return
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            yield
        current.wait_stream(stream)


_NO_BAD_STEP = 2**62


def train_epoch(
    step: TrainStep,
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    cfg: TrialConfig,
    epoch: int,
    on_batch: OnBatch | None,
) -> dict[str, float | None]:
    """One epoch of `step` over `loader`: the epoch's mean losses, training hit@1, clips/s and
    the fraction of time spent waiting for data. Diverged on a non-finite loss."""
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
    stats["train_clips"], stats["train_s"] = clips, seconds
    return stats

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


def put_in_force(training: Training, cfg: TrialConfig, keys: Iterable[str]) -> None:
    """Make `cfg`'s values of `keys` (loss weights, `optim.lr`, `optim.weight_decay`: keys that
    change no tensor) the ones the next steps train with: the step's config, the optimiser's param
    groups (a tensor learning rate keeps its tensor) and a fresh plateau rule (the losses it
    compared were of the old values). A captured CUDA graph holds the loss weights and the weight
    decay as constants, so it is captured anew."""
    keys = set(keys)
    if not keys:
        return
    optimizer, step = training.optimizer, training.step
    for group in optimizer.param_groups:
        if "optim.lr" in keys:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(cfg.lr)
            else:
                group["lr"] = cfg.lr
        if "optim.weight_decay" in keys:
            group["weight_decay"] = cfg.optim.weight_decay
    plateau = training.scheduler
    plateau.best, plateau.num_bad_epochs, plateau.cooldown_counter = plateau.mode_worse, 0, 0
    step.cfg = cfg
    if keys - {"optim.lr"}:
        step.forget_graph()


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
    *, bf16: bool = True, compile_tracking: bool = True,
) -> Training:
    """The network (channels-last and compiled stages on a GPU, as `compile_wanted` says), its
    optimiser, learning-rate schedule and training step. Seed first for a trial's own weights.
    `bf16` and `compile_tracking` are for benchmarks that measure what each buys."""
    from mtsearch.model import MultiBranchNet

    cfg = in_force(cfg, 1)  # a schedule's first values; train_epochs puts later ones in force
    model = MultiBranchNet(cfg, num_classes).to(device)
    if device.type == "cuda":
        model = model.channels_last()
    if compile_wanted(cfg, device):
        model.compile_stages(tracking=compile_tracking)
    use_graph = cfg.cuda_graph and device.type == "cuda"
    optimizer = make_optimizer(model, cfg, device, use_graph)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=cfg.optim.plateau_patience
    )
    step = TrainStep(model, optimizer, cfg, device, use_graph, warn, bf16=bf16)
    return Training(model, optimizer, scheduler, step)
