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

from mtsearch.cli import render
from mtsearch.errors import InvalidInput
from mtsearch.results import ablation, importance, report
from mtsearch.results.cost import study_cost


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: do not squeeze wide tables into 80 columns
        console = Console(highlight=False, width=200)
    return console


WHOLE = ("rank", "trial_id", "status")  # never folded: a broken id or status misreads


def _rich_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool],
    width: int | None = None,
) -> Any:
    from rich import box
    from rich.table import Table

    if width is None:  # boxed, cells wrap their words (the ablation report)
        table = Table(title=title, title_justify="left", header_style="bold")
    else:  # light rules and no outer edge: a dozen columns of numbers fit 80-100 columns whole
        table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                      show_edge=False, pad_edge=False, collapse_padding=True)
    fixed = _column_widths(header, rows, numeric, width)
    for i, (name, right) in enumerate(zip(header, numeric)):
        whole = name in WHOLE
        table.add_column(name, justify="right" if right else "left", overflow="fold", no_wrap=whole,
                         min_width=max([len(name), *(len(str(r[i])) for r in rows)]) if whole else None,
                         width=fixed[i])
    for row in rows:
        table.add_row(*row)
    return table


def _column_widths(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool],
                   width: int | None) -> list[int | None]:
    """Fixed widths for the number columns when the table is wider than the terminal: each at
    least its numbers (ids, statuses and numbers never break across lines), the spare columns
    given to their headers in order; the headers fold. None everywhere when it fits."""
    cells = [max([len(name) if name in WHOLE else 0, *(len(str(r[i])) for r in rows)])
             for i, name in enumerate(header)]
    natural = sum(max(len(name), c) for name, c in zip(header, cells)) + 2 * (len(header) - 1)
    if width is None or natural <= width:
        return [None] * len(header)
    squeezed = [i for i, name in enumerate(header) if numeric[i] and name not in WHOLE]
    widths: list[int | None] = [None] * len(header)
    for i in squeezed:
        widths[i] = max(cells[i], 4)
    spare = width - 1 - 2 * (len(header) - 1) - sum(
        widths[i] if widths[i] is not None else max(len(header[i]), cells[i]) for i in range(len(header)))
    for i in squeezed:
        extra = min(max(spare, 0), len(header[i]) - (widths[i] or 0))
        if extra > 0:
            widths[i] = (widths[i] or 0) + extra
            spare -= extra
    return widths


def _print_leaderboard(console: Any, board: report.Leaderboard) -> None:
    header, rows, same = render.drop_constant_columns(*render.leaderboard_cells(board), keep=render.LEADING)
    title = f"{board.study}: top {len(rows)} by {board.metric} ({board.mode})"
    console.print(_rich_table(title, header, rows, render.numeric_columns(rows, len(header)), console.width))
    for line in ([render.same_line(same)] if same else []) + render.leaderboard_footer(board):
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
    if study.is_ablation:
        _report_grid(study, args.format, args.optimistic)
    else:
        _report_search(study, args.format)
    return 0


def _report_grid(study: report.Study, fmt: str, optimistic: bool = False) -> None:
    result = ablation.ablation(study)
    if fmt == "json":
        sys.stdout.write(render.ablation_json(result))
    elif fmt == "csv":
        sys.stdout.write(render.ablation_csv(result))
    elif fmt == "md":
        sys.stdout.write(render.ablation_markdown(result, optimistic))
    else:
        console = _console()
        header, rows = render.ablation_cells(result, optimistic)
        title = (
            f"{result.study}: {result.metric} ({result.mode}) per cell over seeds; "
            f"Δ paired against the reference on the same seeds"
        )
        aligned = (False, False) + (True,) * (len(header) - 3) + (False,)
        console.print(_rich_table(title, header, rows, aligned))
        console.print(result.reading, markup=False)
        cost = study_cost(study.trials)
        if cost is not None:
            console.print(cost.line(), markup=False)


def _report_search(study: report.Study, fmt: str) -> None:
    board = report.leaderboard(study, top=5)
    imps = importance.param_importances(study)
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
    """The N-th best trial's resolved config as YAML that `mtsearch train` runs as is, and its
    result card (`best.md`) beside it; `--from-confirm`: the winner of `mtsearch confirm`."""
    from mtsearch.files import write_atomic
    from mtsearch.results.card import render_card, schedule_segments
    from mtsearch.results.lineage import segments_comment
    from mtsearch.results.schedule_plot import lineage_figure
    from mtsearch.results.stats import summarize
    from mtsearch.search.confirm import CONFIRM_DIR, read_race

    if args.to:
        return _export_to_tracker(args)
    study = report.load_study(args.study)
    out = _export_path(args, study)
    race = read_race(study.path)
    if args.from_confirm:
        if race is None:
            raise InvalidInput(study.path / CONFIRM_DIR, "--from-confirm",
                               "no finished race here; run `mtsearch confirm` first")
        winner = next(c for c in race["contenders"] if c["rank"] == race["leader"])
        child = report.load_study(study.path / CONFIRM_DIR)
        runs = sorted((t for t in child.trials if t.get("status") == "completed"
                       and _matches(report.trial_config(child, t).to_flat(), winner["values"])),
                      key=lambda t: t.get("seed"))
        if not runs:
            raise InvalidInput(study.path / CONFIRM_DIR, "--from-confirm", "the winner has no completed run")
        source, trial = child, runs[0]
        spent = race.get("seed_runs", sum(len(c["scores"]) for c in race["contenders"]))
        most = race.get("seed_runs_max", len(race["contenders"]) * len(race["seeds"]))
        what = (f"`mtsearch confirm` on {study.path} (top {race['top']}, up to {len(race['seeds'])} seeds, "
                f"alpha {race['alpha']}; {spent} of {most} seed-runs spent): search rank #{winner['rank']} "
                f"won; {race['verdict']}")
    else:
        source, trial = study, report.ranked_trial(study, args.rank)
        winner = None
        board = report.leaderboard(study)
        seeds = report.seeds_per_configuration(study)
        each = f"the mean of {seeds} seeds each" if seeds > 1 else "one seed each"
        what = (f"the final {study.metric} (last evaluated epoch) of rank {args.rank} of {board.total_ranked} ranked trials "
                f"in study {study.path} ({each})")
        flat = report.trial_config(study, trial).to_flat()
        winner = next((c for c in (race or {}).get("contenders", []) if _matches(flat, c["values"])), None)
    cfg = report.trial_config(source, trial)
    score = report.metric_text(study.metric, report.final_score(source, trial))
    how = "--from-confirm" if args.from_confirm else f"--rank {args.rank}"
    header = (
        f"# exported by `mtsearch export {study.path} {how}`: trial {trial.get('trial_id')}, "
        f"status {trial.get('status')}, final {study.metric} {score}\n"
    )
    segments = schedule_segments(source, trial, cfg)
    schedule_png = None
    if segments:  # a schedule (a population's winner): the segments its weights went through
        header += segments_comment(segments)
        schedule_png = out.with_suffix(".schedule.png")
    confirmed = summarize(winner["scores"].values()) if winner is not None else None
    group = report.seed_rows(source, trial)  # search.seeds_per_trial: the configuration's seeds
    searched = summarize(report.final_score(source, t) for t in group) if len(group) > 1 else None
    card = render_card(source, trial, cfg, yaml_path=out, selected_by=what, confirmed=confirmed,
                       confirm_seeds=[int(s) for s in winner["scores"]] if winner is not None else None,
                       searched=searched, searched_seeds=[int(t["seed"]) for t in group] if searched else None,
                       warn=lambda message: None, schedule_png=schedule_png)
    if searched is not None and searched.mean is not None:
        score = report.metric_text(study.metric, searched.mean) + f" (mean of {searched.n} seeds)"
    write_atomic(out, header + cfg.to_yaml())
    card_path = out.with_suffix(".md")
    write_atomic(card_path, card)
    if schedule_png is not None:
        lineage_figure(segments, schedule_png)
    _console().print(
        f"wrote {out} and {card_path} ({how.lstrip('-')}: trial {trial.get('trial_id')}, "
        f"{study.metric} {score}); run it with: mtsearch train {out}",
        markup=False,
        soft_wrap=True,
    )
    return 0


def _export_path(args: argparse.Namespace, study: report.Study) -> Path:
    """Where the config goes (`--out`, default best.yaml in the study); its card goes beside it."""
    from mtsearch.files import check_output_file

    out = Path(args.out) if args.out else study.path / "best.yaml"
    check_output_file(out, "--out")
    if out.suffix == ".md":  # the card goes beside the YAML as <stem>.md: it would replace it
        raise InvalidInput(None, "--out", "the config is YAML; the card is written beside it as "
                           "<name>.md, so end the path in .yaml", str(out))
    if out.with_suffix(".md").is_dir():
        raise InvalidInput(None, "--out", f"the result card goes beside it as "
                           f"{str(out.with_suffix('.md'))!r}, and that is a folder", str(out))
    return out


def _matches(flat: dict[str, Any], values: dict[str, Any]) -> bool:
    """A config carries a race contender's searched values (branch masks compared as labels)."""
    from mtsearch.presets import branches_label

    def plain(key: str, value: Any) -> Any:
        return branches_label(value) if key == "model.branches" else value

    return all(plain(k, flat.get(k)) == plain(k, v) for k, v in values.items())


def cmd_plot(args: argparse.Namespace) -> int:
    """Write the study's PNG figures and print their paths."""
    from mtsearch.files import check_output_dir
    from mtsearch.results.plots import make_plots

    study = report.load_study(args.study)
    out_dir = Path(args.out) if args.out else study.path / "plots"
    check_output_dir(out_dir, "--out")
    console = _console()
    err = sys.stderr
    paths = make_plots(study, out_dir, warn=lambda message: err.write(f"warning: {message}\n"))
    if not paths:
        err.write(f"nothing to plot yet in {study.path} (no recorded epochs or scored trials)\n")
        return 0
    for path in paths:
        console.print(str(path), markup=False, soft_wrap=True)
    return 0


def _export_to_tracker(args: argparse.Namespace) -> int:
    """`export --to tensorboard DIR` / `--to mlflow URI`: the whole study, every trial a run."""
    tracker, dest = args.to
    from mtsearch.settings import MIRRORS

    if tracker not in MIRRORS:
        raise InvalidInput(None, "--to", f"must be one of {', '.join(MIRRORS)}", tracker)
    if args.out or args.from_confirm or args.rank != 1:
        raise InvalidInput(None, "--to", "exports the whole study; it takes no --out, --rank or --from-confirm")
    if tracker == "tensorboard":
        from mtsearch.files import check_output_dir
        from mtsearch.results.tensorboard import export_tensorboard, require_tensorboard

        require_tensorboard()
        check_output_dir(Path(dest), "--to tensorboard")
        done = export_tensorboard(report.load_study(args.study), dest)
        print(f"exported {done.runs} trials to {done.root}; open it with: tensorboard --logdir {done.root}")
        return 0
    from mtsearch.results.mlflow_export import export_mlflow, require_mlflow
    from mtsearch.search.confirm import CONFIRM_DIR, RACE_FILE, read_race

    require_mlflow()
    study = report.load_study(args.study)
    exported = export_mlflow(study, dest, read_race(study.path), study.path / CONFIRM_DIR / RACE_FILE)
    print(f"exported {len(exported.trial_runs)} trials to {dest} (experiment {study.name}, parent run "
          f"{exported.parent_run_id}); open it with: mlflow ui --backend-store-uri {dest}")
    return 0
