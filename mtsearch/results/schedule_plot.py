"""The schedule figures of a population-based study: each trial's values in force over epochs,
its exploits marked, the winner's lineage drawn over them; and one lineage alone, for a card."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtsearch.results.figures import KEY_NAMES, is_log_key, new_figure, save
from mtsearch.results.lineage import LineageSegment, lineage_segments
from mtsearch.results.report import Study, leaderboard, trial_config

# a scheduled key -> the epochs.parquet column of its value in force (`lr`: the optimiser's)
VALUE_COLUMNS = {"loss.w_track": "w_track", "loss.w_dir": "w_dir", "optim.lr": "lr",
                 "optim.weight_decay": "weight_decay"}


def mutated_keys(study: Study) -> list[str]:
    """The searched keys a population may change, in the space's order."""
    return [key for key in study.space.space if key in VALUE_COLUMNS]


def schedule_plot(study: Study, path: Path) -> Path | None:
    """One panel per mutated key: every trial's value per epoch (a thin step line), a dot where it
    trained on from a copy, the winner's lineage as a thick line through the trials that trained it."""
    keys = mutated_keys(study)
    if not keys or not study.epochs:
        return None
    board = leaderboard(study)
    winner = board.rows[0]["trial_id"] if board.rows else None
    segments = _winner_segments(study, winner)
    fig = new_figure(5.2 * len(keys), 4.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    copies = {(str(c["trial_id"]), int(c["epoch"])) for c in study.lineage}
    for ax, key in zip(axes, keys, strict=True):
        column = VALUE_COLUMNS[key]
        values: list[float] = []
        for tid, rows in study.epochs.items():
            points = [(int(r["epoch"]), r[column]) for r in rows if r.get(column) is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            values += ys
            ax.step(xs, ys, where="mid", color="0.6", linewidth=1.0, alpha=0.8)
            marks = [(e, v) for e, v in points if (tid, e - 1) in copies]
            if marks:
                ax.plot(*zip(*marks), "o", color="tab:orange", markersize=5, zorder=3)
        path_points = [(int(r["epoch"]), r[column]) for seg in segments
                       for r in study.epochs.get(seg.trained_by, [])
                       if seg.first <= int(r["epoch"]) <= seg.last and r.get(column) is not None]
        if path_points:  # one line through the trials that trained the winner's weights
            ax.step(*zip(*path_points), where="mid", color="tab:blue", linewidth=2.6, zorder=4)
        if is_log_key(study, key, values):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(KEY_NAMES.get(key, key) + (" (optimiser's)" if column == "lr" else ""))
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(axes[0], winner)
    fig.suptitle(f"{study.name}: the values in force per epoch ({len(study.epochs)} trials, "
                 f"{len(study.lineage)} exploits)")
    return save(fig, path)


def _winner_segments(study: Study, winner: str | None) -> list[LineageSegment]:
    trial = next((t for t in study.trials if str(t.get("trial_id")) == winner), None)
    if trial is None or not trial.get("config"):
        return []
    return lineage_segments(study.lineage, str(winner), trial_config(study, trial))


def _legend(ax: Any, winner: str | None) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.6", linewidth=1.0),
               Line2D([], [], color="tab:orange", marker="o", linestyle=""),
               Line2D([], [], color="tab:blue", linewidth=2.6)]
    labels = ["a trial", "trains on from a copy (exploit)", f"the winner's lineage ({winner})"]
    ax.legend(handles, labels, fontsize=8, loc="best")


def lineage_figure(segments: Sequence[LineageSegment], path: Path) -> Path | None:
    """One lineage's values over its epochs, a panel per scheduled key, each segment labelled by
    the trial that trained it (the card's plot)."""
    keys = list(segments[0].values) if segments else []
    if not keys:
        return None
    fig = new_figure(4.2 * len(keys), 3.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        xs = [e for s in segments for e in (s.first - 0.5, s.last + 0.5)]
        ys = [s.values[key] for s in segments for _ in (0, 1)]
        ax.plot(xs, ys, color="tab:blue", linewidth=2.2)
        for s in segments:
            ax.annotate(s.trained_by.split("_")[-1], ((s.first + s.last) / 2, s.values[key]),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        if min(ys) > 0 and max(ys) / min(ys) > 30:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(KEY_NAMES.get(key, key))
        ax.grid(True, alpha=0.3)
    fig.suptitle("the schedule (labels: the trial that trained each segment)")
    return save(fig, path)
