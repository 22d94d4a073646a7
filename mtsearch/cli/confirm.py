"""`mtsearch confirm trials/NAME`: race the top configurations over seeds, then say who won."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from rich.console import Console
from rich.table import Table

from mtsearch.cli import EXIT_INTERRUPTED, EXIT_OK
from mtsearch.cli.run import _log_changes


def cmd_confirm(args: argparse.Namespace) -> int:
    from mtsearch.metrics import display_scale
    from mtsearch.results.report import fmt_number
    from mtsearch.search.confirm import race

    console, err = Console(), Console(stderr=True)

    def log(message: str) -> None:
        err.print(message, markup=False, highlight=False, soft_wrap=True)

    seen: dict[str, Any] = {}
    resume_cmd = " ".join(shlex.quote(p) for p in [
        "mtsearch", "confirm", args.study, "--top", str(args.top), "--seeds", str(args.seeds),
        "--alpha", str(args.alpha), "--first-test", str(args.first_test), "--resume", *(["--address", args.address] if args.address else []),
        *(["--connect-timeout", f"{args.connect_timeout:g}"] if args.address and args.connect_timeout != 30.0
          else [])])
    try:
        result = race(args.study, args.top, args.seeds, args.alpha, first_test=args.first_test,
                      resume=args.resume, log=log,
                      address=args.address, connect_timeout=args.connect_timeout, on_update=lambda p: _log_changes(p, seen, err))
    except KeyboardInterrupt:
        log(f"interrupted; resume with: {resume_cmd}")
        return EXIT_INTERRUPTED
    scale, unit = display_scale(result.metric, [v for c in result.contenders for v in c.scores.values()])
    leader = result.leader()
    table = Table(title=f"confirm: {result.metric} ({result.mode}) over seeds "
                        f"{result.seeds[0]}..{result.seeds[-1]}, final epoch")
    for column in ("config", *leader.values, "seeds", "mean ± 95% CI",
                   f"{leader.label} - it (the test's interval)", "dropped"):
        table.add_column(column)
    for c in result.contenders:
        s = c.summary()
        mean = "—" if s.mean is None else f"{s.mean * scale:.1f}{unit}" + (
            f" ± {s.half_width * scale:.1f}" if s.half_width is not None else "")
        delta = "leader" if c is leader else _tested(result, c, scale)
        dropped = "—" if c.dropped_after is None else \
            f"after {c.dropped_after} seeds (racing p = {c.p_adjusted:.3g})"
        values = (fmt_number(v) if isinstance(v, float) else str(v) for v in c.values.values())
        seeds = str(len(c.scores)) + (f" ({len(c.failed)} failed: counted against it)" if c.failed else "")
        table.add_row(c.label, *values, seeds, mean, delta, dropped)
    console.print(table)
    console.print("the interval is the one the racing test used: 95% adjusted for the pairs and "
                  "looks, so it holds 0 exactly when the configuration was kept", markup=False, highlight=False)
    console.print(result.verdict() + ".", markup=False, highlight=False)
    console.print(f"seed-runs: {result.seed_runs()} of {len(result.contenders) * len(result.seeds)} "
                  f"({len(result.contenders)} configurations x {len(result.seeds)} seeds)",
                  markup=False, highlight=False)
    if result.test_line():
        console.print(result.test_line() + ".", markup=False, highlight=False)
    if result.interrupted:
        log(f"interrupted; resume with: {resume_cmd}")
        return EXIT_INTERRUPTED
    console.print(f"results: {result.study_dir} (mtsearch report / leaderboard / plot read it)",
                  markup=False, highlight=False)
    return EXIT_OK


def _tested(result: Any, contender: Any, scale: float) -> str:
    """The leader's lead over a contender with the interval of its latest racing test; the
    plain paired mean where no test was made yet."""
    decided = result.decision_interval(contender)
    test = contender.test
    if decided is None or test is None or test.mean is None:
        d = result.delta(result.leader(), contender)
        return "—" if d.mean is None else f"{d.mean * scale:+.1f} (not tested)"
    low, high, level = decided
    return f"{test.mean * scale:+.1f} ({low * scale:+.1f}, {high * scale:+.1f}; {level * 100:.4g}%)"
