"""The `mtsearch` command line: argument parsing, dispatch, and error -> exit code mapping.

Handlers live in the sibling modules and are imported only when their command runs, so
`mtsearch --help` and input validation never pay for importing torch or ray.
Exit codes: 0 ok, 1 the work failed at run time, 2 invalid input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from mtsearch import __version__

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one `error:` line with exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(EXIT_INVALID)


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse type: a bad one is a usage error naming the flag)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (got {text!r})") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text!r})")
    return value


def _address_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join an existing Ray cluster: HOST:PORT, ray://HOST:PORT or auto "
                   "(default: start a local one)")
    p.add_argument("--connect-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="give up on --address when no cluster answers within this time (default 30)")


def _search_options(p: argparse.ArgumentParser, samples: bool = True) -> None:
    p.add_argument("--trials-dir", default="trials", help="where studies live (default: trials)")
    p.add_argument("--name", help="study name (overrides the file's `name`)")
    if samples:  # a grid enumerates its trials: `ablate` takes --repeats instead
        p.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples; "
                       "with --resume, more than the study's extends it)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (overrides search.max_concurrent)")
    _address_options(p)
    p.add_argument("--data", metavar="ROOT", help="dataset root (overrides data.root)")
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of the live display")
    p.add_argument("--resume", action="store_true", help="continue an interrupted or existing study")
    p.add_argument("--dry-run", action="store_true", help="check the file and print the resolved space, the "
                   "trial count, the network shapes, the resources and the disk it would use; train and "
                   "write nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mtsearch",
        description="Hyperparameter search and ablations for multi-branch video models.",
    )
    parser.add_argument("--version", action="version", version=f"mtsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="run a search (Ray Tune + Optuna + ASHA)")
    p.add_argument("space", metavar="SPACE.yaml")
    _search_options(p)
    p.add_argument("--from", dest="from_study", metavar="STUDY",
                   help="a pbt/pb2 search: start the population from the top trials of an earlier study "
                   "(their values at its last epoch), then a Sobol design for the rest")
    p.set_defaults(handler="run:cmd_run")

    p = sub.add_parser("ablate", help="run a grid of configs x seeds")
    p.add_argument("space", metavar="GRID.yaml")
    _search_options(p, samples=False)
    p.add_argument("--repeats", type=int, help="seeds per cell (overrides repeats; with --resume, "
                   "more than the study's adds seeds)")
    p.set_defaults(handler="run:cmd_ablate")

    _result_commands(sub)
    _run_alone_commands(sub)
    _data_commands(sub)
    return parser


def _result_commands(sub: Any) -> None:
    """What reads a study: leaderboard, report, confirm, export, plot."""
    p = sub.add_parser("leaderboard", help="ranked table of a study's trials")
    p.add_argument("study", metavar="trials/NAME")
    p.add_argument("--top", type=int, default=10, help="rows to show (default 10)")
    p.add_argument("--format", choices=["table", "md", "csv", "json"], default="table",
                   help="table for people (default); md, csv, json for machines (raw fractions)")
    p.set_defaults(handler="results:cmd_leaderboard")

    p = sub.add_parser("report", help="ablation table: mean, 95%% CI, paired deltas")
    p.add_argument("study", metavar="trials/NAME")
    p.add_argument("--format", choices=["table", "md", "csv", "json"], default="table",
                   help="table for people (default); md, csv, json for machines (raw fractions)")
    p.add_argument("--optimistic", action="store_true",
                   help="also the best-epoch Δ columns (biased toward the noisier cell)")
    p.set_defaults(handler="results:cmd_report")

    p = sub.add_parser("confirm", help="race a study's top configurations over seeds")
    p.add_argument("study", metavar="trials/NAME")
    p.add_argument("--top", type=int, default=3, help="configurations in the race (default 3)")
    p.add_argument("--seeds", type=int, default=10, help="at most this many seeds each (default 10: "
                   "above --first-test, where racing can stop early)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="the race's error rate, spent over its rounds and pairs (default 0.05)")
    p.add_argument("--first-test", type=int, default=5, metavar="N",
                   help="no configuration is dropped before N seeds (default 5)")
    _address_options(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted race")
    p.set_defaults(handler="confirm:cmd_confirm")

    p = sub.add_parser("export", help="a trial's config as YAML for `mtsearch train`")
    p.add_argument("study", metavar="trials/NAME")
    p.add_argument("--rank", type=int, default=1, help="1 = best (default)")
    p.add_argument("--out", metavar="FILE", help="default: trials/NAME/best.yaml (the card: best.md)")
    p.add_argument("--from-confirm", action="store_true",
                   help="export the winner of `mtsearch confirm` instead of the search's top trial")
    p.add_argument("--to", nargs=2, metavar=("TRACKER", "DEST"),
                   help="the whole study to a tracker instead: `tensorboard DIR` or `mlflow URI` "
                        "(sqlite:///mlflow.db, file:./mlruns or a server); again updates, never duplicates")
    p.set_defaults(handler="results:cmd_export")

    p = sub.add_parser("plot", help="PNG figures of a study")
    p.add_argument("study", metavar="trials/NAME")
    p.add_argument("--out", metavar="DIR", help="default: trials/NAME/plots")
    p.set_defaults(handler="results:cmd_plot")


def _run_alone_commands(sub: Any) -> None:
    """What runs without Ray: train, model."""
    p = sub.add_parser("train", help="one training run without Ray")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--epochs", type=int, help="override optim.epochs")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config name>); re-run resumes")
    p.add_argument("--data", metavar="ROOT", help="dataset root (overrides data.root)")
    p.set_defaults(handler="train:cmd_train")

    p = sub.add_parser("model", help="the network stage by stage (like the thesis's Table 3.1)")
    p.add_argument("--preset", default="thesis", help="thesis | small | tiny (default thesis)")
    p.add_argument("--branches", default="cls,track,dir", help="e.g. cls,track (default cls,track,dir)")
    p.add_argument("--num-classes", type=int, default=51, help="default 51 (HMDB-51)")
    p.add_argument("--config", metavar="CONFIG.yaml", help="take preset, crop, clip and branches from a config")
    p.set_defaults(handler="model:cmd_model")


def _data_commands(sub: Any) -> None:
    """`data synth`, `data check` and `data cache`."""
    data = sub.add_parser("data", help="datasets: write the synthetic set, check a dataset")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=_Parser)
    p = data_sub.add_parser("synth", help="write the built-in synthetic dataset")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default 6, at most 10)")
    p.add_argument("--videos-per-class", type=int, default=None, help="default 40")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler="data:cmd_synth")
    p = data_sub.add_parser("check", help="index a dataset; counts per class and unreadable videos")
    p.add_argument("root", metavar="ROOT", nargs="?", help="dataset root (synthetic: default cache)")
    p.add_argument("--dataset", choices=["hmdb51", "ucf101", "kinetics", "ssv2", "list", "synthetic"],
                   default=None, help="layout (default: detected from ROOT; synthetic without ROOT)")
    p.add_argument("--split", type=int, choices=[1, 2, 3], default=1)
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate the clips are read at (default: data.fps's default for the dataset)")
    p.add_argument("--clip-frames", type=int, default=13, help="frames a clip needs (default 13)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="validation videos carved from training (data.val_fraction; default 0.2)")
    p.add_argument("--show-split", choices=["train", "val", "test"],
                   help="list that part's videos, one per line, and stop (audit the split)")
    p.add_argument("--decode", action="store_true",
                   help="decode every video in full (slow; finds damage the headers hide)")
    p.add_argument("--short-side", type=int, default=256,
                   help="data.short_side the cache size is estimated at (default 256, thesis)")
    p.add_argument("--cache-format", choices=["jpeg", "raw"], default="jpeg",
                   help="data.cache_format the cache size is estimated for (default jpeg)")
    p.add_argument("--cache-dir", default=None, help="data.cache_dir (default: $MTSEARCH_CACHE or "
                   "~/.cache/mtsearch)")
    p.set_defaults(handler="data:cmd_check")
    p = data_sub.add_parser("cache", help="the frame cache's size per dataset and setting; --clean "
                            "removes entries of videos that changed or vanished")
    p.add_argument("--cache-dir", default=None, help="data.cache_dir (default: $MTSEARCH_CACHE or "
                   "~/.cache/mtsearch)")
    p.add_argument("--clean", action="store_true",
                   help="remove the entries of videos that changed or vanished (and old temp files)")
    p.add_argument("--all", action="store_true", help="with --clean: remove every entry")
    p.set_defaults(handler="data:cmd_cache")
    data.set_defaults(handler=None, _help=data.print_help)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        getattr(args, "_help", parser.print_help)()
        return EXIT_INVALID  # a command is missing: a usage error, as `mtsearch data` alone is
    module_name, func_name = handler.split(":")
    from mtsearch.errors import InvalidInput

    try:
        module = importlib.import_module(f"mtsearch.cli.{module_name}")
        return int(getattr(module, func_name)(args) or EXIT_OK)
    except InvalidInput as exc:
        sys.stderr.write(f"error: {exc.render()}\n")
        return EXIT_INVALID
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


def entry() -> None:
    sys.exit(main())
