"""`mtsearch leaderboard | report | export | plot`: read a study folder and show or write results.

Tables go to the terminal through rich; `--format md|csv|json` writes plain text to stdout so it can
be piped or pasted (markdown into a paper, csv into a spreadsheet, json into scripts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtsearch.errors import InvalidInput


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: do not squeeze wide tables into 80 columns
        console = Console(highlight=False, width=200)
    return console


def _rich_table(title: str, header: list[str], rows: list[list[str]], numeric: list[bool]):
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for name, right in zip(header, numeric):
        table.add_column(name, justify="right" if right else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _numeric_flags(header: list[str], rows: list[list[str]]) -> list[bool]:
    from mtsearch.report import _numeric_column

    return [_numeric_column(rows, i) for i in range(len(header))]


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Ranked trials; trials without a score (failed, not yet evaluated) are listed below, unranked."""
    from mtsearch import report

    study = report.load_study(args.study)
    board = report.leaderboard(study, top=args.top)
    if args.format == "json":
        sys.stdout.write(report.leaderboard_json(board))
    elif args.format == "csv":
        sys.stdout.write(report.leaderboard_csv(board))
    elif args.format == "md":
        sys.stdout.write(report.leaderboard_markdown(board))
    else:
        console = _console()
        header, rows = report.leaderboard_cells(board)
        title = f"{board.study}: top {len(rows)} by {board.metric} ({board.mode})"
        console.print(_rich_table(title, header, rows, _numeric_flags(header, rows)))
        for line in report.leaderboard_footer(board):
            console.print(line, markup=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Grids: the ablation table with paired deltas; searches: leaderboard summary + importances."""
    from mtsearch import report

    study = report.load_study(args.study)
    if study.is_grid:
        _report_grid(study, args.format)
    else:
        _report_search(study, args.format)
    return 0


def _report_grid(study, fmt: str) -> None:
    from mtsearch import report

    result = report.ablation(study)
    if fmt == "json":
        sys.stdout.write(report.ablation_json(result))
    elif fmt == "csv":
        sys.stdout.write(report.ablation_csv(result))
    elif fmt == "md":
        sys.stdout.write(report.ablation_markdown(result))
    else:
        console = _console()
        header, rows = report.ablation_cells(result)
        numeric = [False, False] + [True] * 8 + [False]
        title = (
            f"{result.study}: {result.metric} ({result.mode}) per cell over seeds; "
            f"Δ paired against the reference on the same seeds"
        )
        console.print(_rich_table(title, header, rows, numeric))
        console.print(result.reading, markup=False)


def _report_search(study, fmt: str) -> None:
    import json

    from mtsearch import report

    board = report.leaderboard(study, top=5)
    imps = report.param_importances(study)
    if fmt == "json":
        payload = {
            "kind": "search",
            "leaderboard": json.loads(report.leaderboard_json(board)),
            "importances": {
                "values": imps.values,
                "completed_trials": imps.completed_trials,
                "evaluator": imps.evaluator,
                "reason": imps.reason,
            },
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    imp_header = ["parameter", "importance"]
    imp_rows = [[k, f"{v:.3f}"] for k, v in sorted(imps.values.items(), key=lambda kv: -kv[1])]
    imp_note = (
        f"Optuna {imps.evaluator} importances over {imps.completed_trials} completed trials"
        if imps.values
        else f"no parameter importances: {imps.reason}"
    )
    if fmt == "csv":  # the report-specific table; the ranking itself is `leaderboard --format csv`
        sys.stdout.write(
            "parameter,importance\n" + "".join(f"{k},{v}\n" for k, v in imps.values.items())
        )
        return
    if fmt == "md":
        text = report.leaderboard_markdown(board)
        text += f"\n{imp_note}\n\n"
        if imp_rows:
            text += report.markdown_table(imp_header, imp_rows, [False, True])
        sys.stdout.write(text)
        return
    console = _console()
    header, rows = report.leaderboard_cells(board)
    console.print(
        _rich_table(
            f"{board.study}: top {len(rows)} by {board.metric} ({board.mode})",
            header,
            rows,
            _numeric_flags(header, rows),
        )
    )
    for line in report.leaderboard_footer(board):
        console.print(line, markup=False)
    console.print(imp_note, markup=False)
    if imp_rows:
        console.print(_rich_table("", imp_header, imp_rows, [False, True]))


def cmd_export(args: argparse.Namespace) -> int:
    """The N-th best trial's resolved config as YAML that `mtsearch train` runs as is."""
    from mtsearch import report
    from mtsearch.yamlio import write_atomic

    study = report.load_study(args.study)
    trial = report.ranked_trial(study, args.rank)
    cfg = report.trial_config(study, trial)
    out = Path(args.out) if args.out else study.path / "best.yaml"
    if out.is_dir():
        raise InvalidInput(out, "--out", "is a folder, expected a file path")
    score = report.best_score(study, trial)
    header = (
        f"# exported by `mtsearch export {study.path} --rank {args.rank}`: trial {trial.get('trial_id')}, "
        f"status {trial.get('status')}, best {study.metric} {score:.4g}\n"
    )
    write_atomic(out, header + cfg.to_yaml())
    _console().print(
        f"wrote {out} (rank {args.rank}: trial {trial.get('trial_id')}, "
        f"{study.metric} {score:.4g}); run it with: mtsearch train {out}",
        markup=False,
        soft_wrap=True,
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Write the study's PNG figures and print their paths."""
    from mtsearch import report
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
