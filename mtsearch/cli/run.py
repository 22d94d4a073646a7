"""`mtsearch run SPACE.yaml` and `mtsearch ablate GRID.yaml`: validate, search, show progress.

The space is validated (space.py) before Ray is imported or anything is written under
`trials/`; the driver (search.py) then runs the study and calls back with snapshots, which are
drawn as a rich live leaderboard, or as plain log lines with `--quiet`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mtsearch.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from mtsearch.cli.render import column_decimals
from mtsearch.errors import InvalidInput
from mtsearch.files import check_output_dir, disk_usage, human_bytes
from mtsearch.metrics import direction, display_scale
from mtsearch.results.report import METRIC_DIGITS, fmt_number, metric_text
from mtsearch.results.store import is_ranked
from mtsearch.space import ABLATION, SEARCH

TOP = 10
_STATUS_STYLE = {"running": "cyan", "completed": "green", "pruned": "yellow", "error": "red", "diverged": "magenta"}


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args, SEARCH)


def _print_results(console: Console, spec: Any, study_dir: Path) -> None:
    """Where the study's files are, and the disk they take."""
    files = ["trials.parquet", "epochs.parquet", "space.yaml"]
    files += ["lineage.parquet"] if spec.scheduler.population_based else [] if spec.is_enumerated else ["optuna.db"]
    console.print(f"results: {study_dir} ({', '.join(files)})", markup=False, highlight=False)
    console.print(f"disk: {human_bytes(disk_usage(study_dir))} in {study_dir} "
                  f"(checkpoints of the best {spec.storage.keep_checkpoints} trials kept)",
                  markup=False, highlight=False)


def _population_from(spec: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """`--from STUDY`: the top trials of an earlier study as a population's first members, each
    its values of this space at its last epoch (a range's value kept inside this space's bounds)."""
    study_path = getattr(args, "from_study", None)
    if study_path is None:
        return []
    if not spec.scheduler.population_based:
        raise InvalidInput(None, "--from", "takes the initial population of a pbt or pb2 search; this "
                           f"space's scheduler is {spec.scheduler.type}", study_path)
    if args.resume and (Path(args.trials_dir) / spec.name).exists():
        raise InvalidInput(None, "--from", "a resumed study keeps the population it started with", study_path)
    from mtsearch.results import report
    from mtsearch.train.in_force import in_force

    study = report.load_study(study_path)
    ranked = report.leaderboard(study).total_ranked
    if not ranked:
        raise InvalidInput(study.path, "--from", "no trial of this study has a score to rank it by")
    members = []
    for rank in range(1, min(ranked, spec.scheduler.population) + 1):
        trial = report.ranked_trial(study, rank)
        cfg = report.trial_config(study, trial)
        flat = in_force(cfg, cfg.optim.epochs).to_flat()
        members.append({key: _inside(dist, flat.get(key), key, trial, study.path)
                        for key, dist in spec.space.items()})
    return members


def _inside(dist: Any, value: Any, key: str, trial: dict[str, Any], source: Path) -> Any:
    if dist.kind == "choice":
        if value not in dist.values:
            raise InvalidInput(source, "--from", f"trial {trial.get('trial_id')}'s {key} {value!r} is not one "
                               f"of this space's choices {list(dist.values)}")
        return value
    low, high = dist.values
    return min(max(value, low), high)


def cmd_ablate(args: argparse.Namespace) -> int:
    return _run(args, ABLATION)


def _run(args: argparse.Namespace, kind: str) -> int:
    from mtsearch.space import load_space, with_study_count

    spec = load_space(args.space, kind)
    repeats = getattr(args, "repeats", None)
    num_samples = getattr(args, "num_samples", None)  # `run` only: a grid enumerates its trials
    spec = spec.with_cli(name=args.name, num_samples=num_samples, max_concurrent=args.max_concurrent,
                         data_root=args.data, repeats=repeats)
    check_output_dir(Path(args.trials_dir) / spec.name, "--trials-dir")
    if args.resume and num_samples is None and repeats is None:
        spec = with_study_count(spec, Path(args.trials_dir) / spec.name)
    _check_data_root(spec)
    population_from = _population_from(spec, args)
    console = Console()
    err = Console(stderr=True)
    from mtsearch.data.synthetic import builtin_set_ready
    from mtsearch.search.preflight import check_fps

    builtin_pending = spec.base.data.root is None and not builtin_set_ready(spec.base.data.cache_dir)
    if not (args.dry_run and builtin_pending):  # a dry run writes nothing, the built-in set included
        check_fps(spec)
    if args.dry_run:
        from mtsearch.cli.dry_run import dry_run

        if builtin_pending:
            err.print("note: the built-in synthetic set is not built yet; the first run writes it "
                      "(about a minute), so data.fps was not checked against its videos", markup=False)
        if population_from:
            console.print(f"initial population: {len(population_from)} of {spec.scheduler.population} "
                          f"from the top of {args.from_study}, the rest a Sobol design", markup=False, soft_wrap=True)
        return dry_run(spec, Path(args.trials_dir), lambda line: console.print(line, markup=False,
                                                                              highlight=False, soft_wrap=True))
    command = "ablate" if kind == ABLATION else "run"
    resume_cmd = _resume_command(command, args, spec.name)

    from mtsearch.search.driver import run_search  # heavy: ray, optuna

    state: dict[str, Any] = {"progress": None, "seen": {}}
    log = (lambda msg: err.print(msg, markup=False, highlight=False))

    def on_update(progress: Any) -> None:
        state["progress"] = progress
        if args.quiet:
            _log_changes(progress, state["seen"], console)

    try:
        if args.quiet:
            outcome = run_search(spec, args.trials_dir, resume=args.resume, address=args.address,
                                 connect_timeout=args.connect_timeout, on_update=on_update, log=log,
                                 population_from=population_from)
        else:
            with Live(get_renderable=lambda: _render(state["progress"]), console=console,
                      refresh_per_second=2, transient=True):
                outcome = run_search(spec, args.trials_dir, resume=args.resume, address=args.address,
                                     connect_timeout=args.connect_timeout, on_update=on_update, log=log,
                                     population_from=population_from)
    except KeyboardInterrupt:
        err.print(f"interrupted; resume with: {resume_cmd}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED

    progress = outcome.progress
    console.print(_leaderboard(progress, TOP))
    console.print(_counts_line(progress))
    if outcome.storage is not None:
        err.print(f"error: {outcome.storage.render(resume_cmd)}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_FAILED
    if outcome.machine_failed:
        err.print(f"warning: {len(outcome.machine_failed)} trial(s) ended on a fault of the machine "
                  f"({', '.join(outcome.machine_failed)}), not of their configuration; rerun them with: "
                  f"{resume_cmd}", markup=False, highlight=False, soft_wrap=True)
    if outcome.interrupted:
        err.print(f"interrupted; resume with: {resume_cmd}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    _print_results(console, spec, outcome.study_dir)
    finished = [r for r in progress.rows if r["status"] in ("completed", "pruned")]
    if progress.rows and not finished:
        err.print("error: every trial failed; see the error column in trials.parquet", markup=False)
        return EXIT_FAILED
    return EXIT_OK


def _check_data_root(spec: Any) -> None:
    """A missing dataset folder is invalid input (exit 2) before anything starts."""
    root = spec.base.data.root
    if root and not Path(root).expanduser().is_dir():
        raise InvalidInput(spec.source, "base.data.root", "dataset folder not found", root)


def _resume_command(command: str, args: argparse.Namespace, name: str) -> str:
    parts = ["mtsearch", command, args.space, "--resume"]
    if args.name:
        parts += ["--name", name]
    if args.trials_dir != "trials":
        parts += ["--trials-dir", args.trials_dir]
    if args.data:
        parts += ["--data", args.data]
    if args.address:
        parts += ["--address", args.address]
        if args.connect_timeout != 30.0:
            parts += ["--connect-timeout", f"{args.connect_timeout:g}"]
    if getattr(args, "num_samples", None) is not None:
        parts += ["--num-samples", str(args.num_samples)]
    if getattr(args, "repeats", None) is not None:
        parts += ["--repeats", str(args.repeats)]
    return " ".join(shlex.quote(p) for p in parts)


# ---- rendering -----------------------------------------------------------------------------------

def _ranked(progress: Any) -> list[dict[str, Any]]:
    scored = [r for r in progress.rows if is_ranked(r.get("status"), r.get("score"))]
    return sorted(scored, key=lambda r: direction(progress.mode).rank_key(r["score"]))


def _leaderboard(progress: Any, top: int) -> Table:
    table = Table(title=f"{progress.name}: top {top} by {progress.metric} ({progress.mode})", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("trial")
    table.add_column("status")
    ranked = _ranked(progress)[:top]
    scale, unit = display_scale(progress.metric, [row["score"] for row in ranked])
    table.add_column(f"{progress.metric} ({unit})" if unit else progress.metric, justify="right")  # last evaluated
    table.add_column("epochs", justify="right")
    for key in progress.searched_keys:
        table.add_column(key, justify="right")
    copies = any("exploits" in row for row in progress.rows)  # a population: values now, copies made
    if copies:
        table.add_column("exploits", justify="right")
    decimals = {k: column_decimals([row.get(k) for row in ranked]) for k in progress.searched_keys}
    for rank, row in enumerate(ranked, 1):
        status = row["status"] or "running"
        table.add_row(str(rank), row["trial_id"], Text(status, style=_STATUS_STYLE.get(status, "")),
                      fmt_number(row["score"], scale, digits=METRIC_DIGITS), fmt_number(row.get("epochs_done")),
                      *(fmt_number(row.get(k), decimals=decimals[k]) for k in progress.searched_keys),
                      *([fmt_number(row.get("exploits"))] if copies else []))
    return table


def _counts_line(progress: Any) -> Text:
    text = Text()
    for status, count in progress.counts.items():
        text.append(f"{status} {count}  ", style=_STATUS_STYLE.get(status, ""))
    text.append(_gpu_line(progress.rows))
    return text


def _gpu_line(rows: list[dict[str, Any]]) -> str:
    """`on GPUs: 6 running, up to 4 per GPU` while trials hold GPU shares; else nothing."""
    shares = [r["gpu_share"] for r in rows if r["status"] == "running" and (r.get("gpu_share") or 0) > 0]
    if not shares:
        return ""
    return f"on GPUs: {len(shares)} running, up to {round(1 / min(shares))} per GPU"


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _render(progress: Any) -> Any:
    if progress is None:
        return Text("starting Ray ...")
    finished = sum(v for k, v in progress.counts.items() if k != "running")
    elapsed = time.time() - progress.started
    done_here = finished - progress.done_at_start
    eta = "?"
    if done_here > 0 and finished < progress.total:
        eta = _clock(elapsed / done_here * (progress.total - finished))
    elif finished >= progress.total:
        eta = "0:00"
    bar = ProgressBar(total=max(progress.total, 1), completed=finished, width=40)
    line = Text(f" {finished}/{progress.total} trials  elapsed {_clock(elapsed)}  ETA {eta}  ")
    header = Table.grid(padding=0)
    header.add_row(bar, line)
    return Group(header, _counts_line(progress), _leaderboard(progress, TOP))


def _log_changes(progress: Any, seen: dict[str, tuple[Any, Any]], console: Console) -> None:
    """--quiet: one plain line per trial start, status change and evaluated epoch."""
    finished = sum(v for k, v in progress.counts.items() if k != "running")
    for row in progress.rows:
        key = (row["status"], row.get("epochs_done"))
        if seen.get(row["trial_id"]) == key:
            continue
        seen[row["trial_id"]] = key
        params = ", ".join(f"{k}={fmt_number(row.get(k))}" for k in progress.searched_keys)
        epochs = row.get("epochs_done") or 0
        what = "started" if row["status"] == "running" and not epochs else f"{row['status']} epoch {epochs}"
        console.print(
            f"[{finished}/{progress.total}] trial {row['trial_id']} {what}"
            f" {progress.metric}={metric_text(progress.metric, row.get('score'))}"
            + (f" error: {row['error']}" if row.get("error") else "") + f" ({params})",
            markup=False, highlight=False, soft_wrap=True,
        )
    sys.stdout.flush()
