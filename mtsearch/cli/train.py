"""`mtsearch train CONFIG.yaml`: one training run without Ray, with a progress bar per epoch."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from mtsearch.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from mtsearch.config import load_config
from mtsearch.errors import InvalidInput
from mtsearch.report import fmt_number


def _fmt(value: Any, pct: bool = False) -> str:
    """The report's one number formatter; fractions as percent points with a % sign."""
    text = fmt_number(value, 100.0 if pct else 1.0)
    return text + "%" if pct and value is not None else text


def _resumed_history(out: Path) -> list[dict[str, Any]]:
    """The epochs the checkpoint holds: the run resumes after them, so metrics.parquet starts
    from them (a kill between the checkpoint and the Parquet write loses no row)."""
    from mtsearch.train import checkpoint_history

    return checkpoint_history(out / "checkpoint")


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["optim.epochs"] = args.epochs
    if args.data is not None:
        overrides["data.root"] = args.data
    cfg = cfg.with_overrides(overrides, "command line")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if out.exists() and not out.is_dir():
        raise InvalidInput(out, None, "--out must be a folder")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from mtsearch.store import write_metrics
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
        val = ""
        if metrics["val_hit1"] is not None:
            val = f"  val Hit@1 {_fmt(metrics['val_hit1'], True)}  Hit@5 {_fmt(metrics['val_hit5'], True)}"
            for gain in ("track_gain", "cycle_gain"):  # does the tracking branch track (issue 13)
                if metrics.get(gain) is not None:
                    val += f"  {gain.replace('_', ' ')} {metrics[gain]:.2f}"
                    break
        progress.console.print(
            f"epoch {metrics['epoch']:>3}/{epochs}  loss {metrics['loss']:.4f}  "
            f"train Hit@1 {_fmt(metrics['train_hit1'], True)}{val}  "
            f"{metrics['clips_per_s']:.1f} clips/s  {metrics['epoch_s']:.1f} s"
        )

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
    except (RuntimeError, OSError, MemoryError) as exc:
        sys.stderr.write(f"error: training failed: {exc}\n")
        return EXIT_FAILED

    table = Table(title=f"mtsearch train: {args.config}")
    table.add_column("status")
    table.add_column("epochs", justify="right")
    table.add_column("best epoch", justify="right")
    table.add_column("best val Hit@1", justify="right")
    table.add_column("best val Hit@5", justify="right")
    table.add_column("final loss", justify="right")
    table.add_column("test Hit@1", justify="right")
    table.add_row(
        result.status,
        str(result.epochs_done),
        _fmt(result.best_epoch),
        _fmt(result.best_val_hit1, True),
        _fmt(result.best_val_hit5, True),
        _fmt(result.history[-1]["loss"] if result.history else None),
        _fmt(result.test_hit1, True),
    )
    console.print(table)
    console.print(f"metrics: {metrics_path}   checkpoints: {out / 'checkpoint'}")
    split = "validation split" if result.selection == "val" else "test split (data.selection: test)"
    console.print(f"val Hit@1 is on the {split}; test Hit@1: the final weights, once", highlight=False)
    if result.status == "diverged":
        sys.stderr.write(f"error: training diverged: {result.error}\n")
        return EXIT_FAILED
    return EXIT_OK
