"""`mtsearch train CONFIG.yaml`: one training run without Ray, with a progress bar per epoch."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from mtsearch.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from mtsearch.config import TrialConfig, load_config
from mtsearch.errors import InvalidInput, StorageFull, storage_failure
from mtsearch.files import check_output_dir
from mtsearch.results.report import fmt_number
from mtsearch.yamlio import read_yaml


def _fmt(value: Any, pct: bool = False) -> str:
    """The report's one number formatter; fractions as percent points with a % sign."""
    text = fmt_number(value, 100.0 if pct else 1.0)
    return text + "%" if pct and value is not None else text


def _resumed_history(out: Path) -> list[dict[str, Any]]:
    """The epochs the checkpoint holds: the run resumes after them, so metrics.parquet starts
    from them (a kill between the checkpoint and the Parquet write loses no row)."""
    from mtsearch.train import checkpoint_history

    return checkpoint_history(out / "checkpoint")


_FLAGS = {"optim.epochs": "--epochs", "data.root": "--data"}  # config keys the flags set
_SOURCE = "command line"


def load_config_file(path: str | Path) -> TrialConfig:
    """`load_config`, and an empty file (or one of comments only) is an error, not the defaults:
    it is more often a mistake (a truncated copy, the wrong file) than a wish for them."""
    if read_yaml(path) is None:
        raise InvalidInput(path, None, "empty file: no config keys; write `{}` to mean the defaults")
    return load_config(path)


def _with_flags(cfg: TrialConfig, args: argparse.Namespace) -> TrialConfig:
    """The config with --epochs/--data applied; a bad value names the flag the user typed."""
    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["optim.epochs"] = args.epochs
    if args.data is not None:
        overrides["data.root"] = args.data
    try:
        return cfg.with_overrides(overrides, _SOURCE)
    except InvalidInput as exc:
        if exc.key not in _FLAGS or exc.key not in overrides:
            raise
        raise InvalidInput(_SOURCE, _FLAGS[exc.key], exc.what, exc.got) from None


def check_runnable(cfg: TrialConfig, source: str | Path, data_flag: bool = False) -> None:
    """What `fit` would refuse only after the run folder exists, refused first (InvalidInput):
    a CUDA device this machine lacks, a dataset root that is missing or of the wrong layout, a
    `data.fps` above a video's frame rate (the trainer stops at the first such video).

    Reads the split files and the video headers (no decoding); torch is imported only for a
    `device: cuda…`, whose answer needs it.
    """
    from mtsearch.data.datasets import index_for_config
    from mtsearch.search.preflight import fps_refusal, source_rates

    cfg = cfg.resolved()
    if cfg.device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(cfg.device.partition(":")[2] or 0)
        if count == 0:
            raise InvalidInput(source, "device", "CUDA is not available on this machine", cfg.device)
        if index >= count:
            raise InvalidInput(source, "device", f"this machine has {count} GPU(s): cuda:0"
                               + (f" to cuda:{count - 1}" if count > 1 else ""), cfg.device)
    try:
        index = index_for_config(cfg)
    except InvalidInput as exc:
        if data_flag and exc.key == "data.root":
            raise InvalidInput(exc.file, "--data", exc.what, exc.got) from None
        raise exc if exc.file else exc.with_file(source) from None
    if cfg.fps is None:
        return  # every video at its own rate
    why = fps_refusal(cfg.fps, source_rates(index.train + index.test), index.root)
    if why:
        raise InvalidInput(source, "data.fps", why, cfg.fps)


def _epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """One epoch in one line: losses, hit rates, the tracking gain where there is one, speed."""
    val = ""
    if metrics["val_hit1"] is not None:
        val = f"  val Hit@1 {_fmt(metrics['val_hit1'], True)}  Hit@5 {_fmt(metrics['val_hit5'], True)}"
        for gain in ("track_gain", "cycle_gain"):  # does the tracking branch track
            if metrics.get(gain) is not None:
                val += f"  {gain.replace('_', ' ')} {metrics[gain]:.2f}"
                break
    return (f"epoch {metrics['epoch']:>3}/{epochs}  loss {metrics['loss']:.4f}  "
            f"train Hit@1 {_fmt(metrics['train_hit1'], True)}{val}  "
            f"{metrics['clips_per_s']:.1f} clips/s  {metrics['epoch_s']:.1f} s")


def _result_table(result: Any, config: str) -> Any:
    from rich.table import Table

    table = Table(title=f"mtsearch train: {config}")
    table.add_column("status")
    for column in ("epochs", "best epoch", "best val Hit@1", "best val Hit@5", "final loss", "test Hit@1"):
        table.add_column(column, justify="right")
    table.add_row(
        result.status,
        str(result.epochs_done),
        _fmt(result.best_epoch),
        _fmt(result.best_val_hit1, True),
        _fmt(result.best_val_hit5, True),
        _fmt(result.history[-1]["loss"] if result.history else None),
        _fmt(result.test_hit1, True),
    )
    return table


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _with_flags(load_config_file(args.config), args)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    check_output_dir(out, "--out")
    check_runnable(cfg, args.config, data_flag=args.data is not None)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mtsearch.results.store import write_metrics
    from mtsearch.train import fit

    console = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.parquet"
    rows = _resumed_history(out)
    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} clips/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    state = {"task": None, "epoch": None}
    epochs = cfg.optim.epochs

    def on_batch(done: int, total: int, loss: float, rate: float) -> None:
        if state["task"] is None:
            epoch = (rows[-1]["epoch"] + 1) if rows else 1
            state["epoch"] = epoch
            state["task"] = progress.add_task("train", total=total, epoch=epoch, epochs=epochs,
                                              loss=loss, rate=rate)
        progress.update(state["task"], completed=done, loss=loss, rate=rate)

    def on_epoch(metrics: dict[str, Any], _ckpt: Path | None) -> None:
        nonlocal rows
        rows = [r for r in rows if r["epoch"] < metrics["epoch"]] + [metrics]
        write_metrics(metrics_path, rows)
        if state["task"] is not None:
            progress.remove_task(state["task"])
            state["task"] = None
        progress.console.print(_epoch_line(metrics, epochs))

    def log(message: str) -> None:
        progress.console.print(message, highlight=False)

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {message}", highlight=False)

    resume_cmd = f"mtsearch train {shlex.quote(args.config)} --out {shlex.quote(str(out))}"
    try:
        with progress:
            result = fit(cfg, out, on_epoch=on_epoch, resume=True, log=log, on_batch=on_batch,
                         warn=warn)
    except KeyboardInterrupt:
        err.print(f"interrupted; resume with: {resume_cmd}")
        return EXIT_INTERRUPTED
    except StorageFull as exc:  # a full frame cache or run folder: what, where, and how to go on
        sys.stderr.write(f"error: {exc.render(resume_cmd)}\n")
        return EXIT_FAILED
    except (RuntimeError, OSError, MemoryError) as exc:
        disk = storage_failure(exc)
        if disk is not None:
            sys.stderr.write(f"error: {disk.render(resume_cmd)}\n")
            return EXIT_FAILED
        sys.stderr.write(f"error: training failed: {exc}\n")
        return EXIT_FAILED

    console.print(_result_table(result, args.config))
    console.print(f"metrics: {metrics_path}   checkpoints: {out / 'checkpoint'}")
    split = "validation split" if result.selection == "val" else "test split (data.selection: test)"
    console.print(f"val Hit@1 is on the {split}; test Hit@1: the final weights, once", highlight=False)
    if result.status == "diverged":
        sys.stderr.write(f"error: training diverged: {result.error}\n")
        return EXIT_FAILED
    return EXIT_OK
