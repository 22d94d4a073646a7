"""`mtsearch leaderboard | report | export | plot`: read a study folder and show or write results.

Tables go to the terminal through rich; `--format md|csv|json` writes plain text to stdout so it can
be piped or pasted (markdown into a paper, csv into a spreadsheet, json into scripts). The text
layouts live in `mtsearch.cli.render`; this module picks one per command and format.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtsearch import report
from mtsearch.cli import render
from mtsearch.errors import InvalidInput


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: do not squeeze wide tables into 80 columns
        console = Console(highlight=False, width=200)
    return console


def _rich_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]
) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for name, right in zip(header, numeric):
        table.add_column(name, justify="right" if right else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _print_leaderboard(console: Any, board: report.Leaderboard) -> None:
    header, rows = render.leaderboard_cells(board)
    title = f"{board.study}: top {len(rows)} by {board.metric} ({board.mode})"
    console.print(_rich_table(title, header, rows, render.numeric_columns(rows, len(header))))
    for line in render.leaderboard_footer(board):
        console.print(line, markup=False)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Ranked trials; trials without a score (failed, not yet evaluated) are listed below, unranked."""
    study = report.load_study(args.study)
    board = report.leaderboard(study, top=args.top)
    if args.format == "json":
        sys.stdout.write(render.leaderboard_json(board))
    elif args.format == "csv":
        sys.stdout.write(render.leaderboard_csv(board))
    elif args.format == "md":
        sys.stdout.write(render.leaderboard_markdown(board))
    else:
        _print_leaderboard(_console(), board)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Grids: the ablation table with paired deltas; searches: leaderboard summary + importances."""
    study = report.load_study(args.study)
    if study.is_grid:
        _report_grid(study, args.format)
    else:
        _report_search(study, args.format)
    return 0


def _report_grid(study: report.Study, fmt: str) -> None:
    result = report.ablation(study)
    if fmt == "json":
        sys.stdout.write(render.ablation_json(result))
    elif fmt == "csv":
        sys.stdout.write(render.ablation_csv(result))
    elif fmt == "md":
        sys.stdout.write(render.ablation_markdown(result))
    else:
        console = _console()
        header, rows = render.ablation_cells(result)
        title = (
            f"{result.study}: {result.metric} ({result.mode}) per cell over seeds; "
            f"Δ paired against the reference on the same seeds"
        )
        console.print(_rich_table(title, header, rows, render.ABLATION_RIGHT_ALIGNED))
        console.print(result.reading, markup=False)


def _report_search(study: report.Study, fmt: str) -> None:
    board = report.leaderboard(study, top=5)
    imps = report.param_importances(study)
    if fmt == "json":
        sys.stdout.write(render.search_report_json(board, imps))
    elif fmt == "csv":
        sys.stdout.write(render.importances_csv(imps))
    elif fmt == "md":
        sys.stdout.write(render.search_report_markdown(board, imps))
    else:
        console = _console()
        _print_leaderboard(console, board)
        console.print(render.importance_note(imps), markup=False)
        rows = render.importance_rows(imps)
        if rows:
            console.print(
                _rich_table("", render.IMPORTANCE_HEADER, rows, render.IMPORTANCE_RIGHT_ALIGNED)
            )


def cmd_export(args: argparse.Namespace) -> int:
    """The N-th best trial's resolved config as YAML that `mtsearch train` runs as is."""
    from mtsearch.files import write_atomic

    study = report.load_study(args.study)
    trial = report.ranked_trial(study, args.rank)
    cfg = report.trial_config(study, trial)
    out = Path(args.out) if args.out else study.path / "best.yaml"
    if out.is_dir():
        raise InvalidInput(out, "--out", "is a folder, expected a file path")
    score = report.fmt_number(report.best_score(study, trial))
    header = (
        f"# exported by `mtsearch export {study.path} --rank {args.rank}`: trial {trial.get('trial_id')}, "
        f"status {trial.get('status')}, best {study.metric} {score}\n"
    )
    write_atomic(out, header + cfg.to_yaml())
    _console().print(
        f"wrote {out} (rank {args.rank}: trial {trial.get('trial_id')}, "
        f"{study.metric} {score}); run it with: mtsearch train {out}",
        markup=False,
        soft_wrap=True,
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Write the study's PNG figures and print their paths."""
    from mtsearch.plots import make_plots

    study = report.load_study(args.study)
    out_dir = Path(args.out) if args.out else study.path / "plots"
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(out_dir, "--out", "is a file, expected a folder")
    console = _console()
    err = sys.stderr
    paths = make_plots(study, out_dir, warn=lambda message: err.write(f"warning: {message}\n"))
    if not paths:
        err.write(f"nothing to plot yet in {study.path} (no recorded epochs or scored trials)\n")
        return 0
    for path in paths:
        console.print(str(path), markup=False, soft_wrap=True)
    return 0
