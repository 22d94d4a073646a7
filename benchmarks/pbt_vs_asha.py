"""Population-based training against ASHA + TPE at an equal budget of training epochs.

Both searches look for the loss weights and learning rate (loss.w_track, loss.w_dir, optim.lr) of
the `tiny` preset on the built-in synthetic data, on the base of `spaces/pbt_weights.yaml` (8
epochs, evaluation every 2 epochs, half a core a trial), and the two space files differ only in
their search and scheduler sections:

  pbt   a population of 4 trained side by side; every 2 epochs the weakest copies the strongest
        and trains on with its values perturbed: 4 x 8 = 32 training epochs, always.
  asha  TPE samples trained under ASHA (Ray Tune's asynchronous rule), 4 at a time. Its number of
        samples is the one whose expected spend is nearest PBT's 32 epochs; the expectation comes
        from a Monte Carlo of Ray's rule (a trial that reaches a rung first always continues, so
        asynchronous ASHA spends more than the synchronous successive-halving arithmetic says,
        which is printed beside it).

Each method runs once per search seed (`search.seed` 0 .. N-1; nothing else changes) through
`python -m mtsearch run FILE --quiet`, interleaved (pbt then asha for each seed) so drift in the
machine's speed hits both. For each study: the leaderboard winner's final validation Hit@1 (at
its last evaluated epoch, the leaderboard's ranking), its test Hit@1, the epochs spent (rows of
epochs.parquet) and the wall time. Then per method the mean with a Student-t 95% interval over
the seeds, and PBT minus ASHA in percentage points with a Welch (unpaired) t interval: the two
methods share no randomness at equal search seeds, so pairing by seed would remove nothing.
The last line is

    pbt_vs_asha: +N.N points (95% CI [lo, hi]), epochs A vs B

    python benchmarks/pbt_vs_asha.py                 # 3 search seeds, 8 epochs (~20-30 min on 2 cores)
    python benchmarks/pbt_vs_asha.py --seeds 5
    python benchmarks/pbt_vs_asha.py --quick         # smoke run: 2 seeds, 4 epochs
    python benchmarks/pbt_vs_asha.py --trials-dir /tmp/pva   # keep the study folders
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml

from mtsearch.results import report
from mtsearch.results.stats import Interval, summarize, t_quantile

ROOT = Path(__file__).resolve().parent.parent
POPULATION = 4

# spaces/pbt_weights.yaml, less its search and scheduler sections
BASE: dict[str, Any] = {"model.preset": "tiny", "optim.lr": 1.0e-3, "optim.epochs": 8, "eval.every": 2}
SPACE: dict[str, Any] = {
    "loss.w_track": {"loguniform": [0.05, 50]},
    "loss.w_dir": {"loguniform": [0.5, 20]},
    "optim.lr": {"loguniform": [3.0e-4, 3.0e-3]},
}
RESOURCES: dict[str, Any] = {"cpus_per_trial": 0.5, "gpus_per_trial": "auto"}
PBT_SCHEDULER: dict[str, Any] = {"type": "pbt", "population": POPULATION, "perturbation_interval": 2,
                                 "quantile": 0.25, "resample_probability": 0.25,
                                 "perturbation_factors": [1.2, 0.8]}


def space_file(method: str, seed: int, epochs: int, asha: tuple[int, int, int]) -> dict[str, Any]:
    """The space file of one study: the shared base and space, the method's search and scheduler."""
    common = {"name": f"{method}_s{seed}", "base": {**BASE, "optim.epochs": epochs}, "metric": "val_hit1",
              "mode": "max", "resources": dict(RESOURCES), "failure": {"max_failures": 1}, "space": SPACE}
    if method == "pbt":
        return {**common, "search": {"seed": seed}, "scheduler": dict(PBT_SCHEDULER)}
    samples, grace, rf = asha
    return {**common, "search": {"algorithm": "tpe", "num_samples": samples, "max_concurrent": POPULATION,
                                 "seed": seed},
            "scheduler": {"type": "asha", "grace_period": grace, "reduction_factor": rf}}


# ---- ASHA's expected spend --------------------------------------------------------------------

def rungs(max_t: int, grace: int, rf: int) -> list[int]:
    """Ray's ASHA milestones below max_t: grace, grace*rf, ... (a trial stops at max_t anyway)."""
    out, t = [], grace
    while t < max_t:
        out.append(t)
        t *= rf
    return out


def synchronous_epochs(max_t: int, grace: int, rf: int) -> float:
    """Expected epochs of one trial under synchronous successive halving: 1/rf go on at each rung."""
    marks = [*rungs(max_t, grace, rf), max_t]
    return marks[0] + sum((b - a) * rf ** -(k + 1) for k, (a, b) in enumerate(zip(marks, marks[1:])))


def asynchronous_epochs(max_samples: int, max_t: int, grace: int, rf: int, reps: int = 2000,
                        rho: float = 0.8) -> list[float]:
    """Expected total epochs of the first n trials, n = 1 .. max_samples, under Ray's asynchronous
    rule (`_Bracket.on_result`: a trial at a rung stops below the (1 - 1/rf) percentile of the
    values recorded there so far, so the first to arrive always goes on). Trials arrive at each
    rung in their order; a trial's rung values are its quality plus noise (correlation `rho`)."""
    rng = np.random.default_rng(0)
    marks = rungs(max_t, grace, rf)
    totals = np.zeros(max_samples)
    for _ in range(reps):
        recorded: dict[int, list[float]] = {m: [] for m in marks}
        spent = 0.0
        for i in range(max_samples):
            quality, stop = rng.normal(), max_t
            for m in marks:
                value = rho * quality + math.sqrt(1 - rho * rho) * rng.normal()
                cutoff = np.percentile(recorded[m], (1 - 1 / rf) * 100) if recorded[m] else None
                recorded[m].append(value)
                if cutoff is not None and value < cutoff:
                    stop = m
                    break
            spent += stop
            totals[i] += spent
    return list(totals / reps)


def asha_plan(budget: int, epochs: int, grace: int, rf: int, samples: int | None) -> tuple[int, float, float]:
    """(num_samples, expected epochs asynchronous, expected epochs synchronous) for ASHA."""
    expected = asynchronous_epochs(max(budget // grace + 1, samples or 0), epochs, grace, rf)
    if samples is None:
        samples = 1 + min(range(len(expected)), key=lambda i: (abs(expected[i] - budget), i))
    return samples, expected[samples - 1], samples * synchronous_epochs(epochs, grace, rf)


# ---- running and reading a study ----------------------------------------------------------------

@dataclass
class Result:
    method: str
    seed: int
    wall_s: float
    ok: bool
    note: str = ""
    val: float | None = None  # the winner's final validation Hit@1
    test: float | None = None  # the winner's test Hit@1
    status: str = ""  # the winner's status
    winner_epochs: int | None = None
    completed_val: float | None = None  # the best final val Hit@1 among trials that trained every epoch
    epochs: int = 0  # rows of epochs.parquet
    distinct_epochs: int = 0  # distinct (trial, epoch) pairs in it
    train_clips: float | None = None
    counts: dict[str, int] | None = None
    failures: list[str] | None = None


def run_study(method: str, seed: int, epochs: int, asha: tuple[int, int, int], folder: Path) -> Result:
    data = space_file(method, seed, epochs, asha)
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    trials_dir = folder / "trials"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mtsearch", "run", str(path), "--trials-dir", str(trials_dir),
                           "--quiet"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (folder / f"{data['name']}.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-6:])
        return Result(method, seed, wall, False, f"mtsearch run exited {done.returncode}: {tail[-800:]}")
    return read_study(method, seed, wall, trials_dir / data["name"], epochs)


def read_study(method: str, seed: int, wall: float, study_dir: Path, epochs: int) -> Result:
    study = report.load_study(study_dir)
    board = report.leaderboard(study)
    failures = [f"{u['trial_id']} {u['status']}: {u.get('error')}" for u in board.unranked]
    table = pq.read_table(study_dir / "epochs.parquet", columns=None)
    rows = table.select(["trial_id", "epoch"]).to_pylist()
    clips = None
    if "train_clips" in table.column_names:
        clips = float(sum(v for v in table.column("train_clips").to_pylist() if v is not None))
    result = Result(method, seed, wall, bool(board.rows), epochs=len(rows),
                    distinct_epochs=len({(r["trial_id"], r["epoch"]) for r in rows}), train_clips=clips,
                    counts=dict(board.counts), failures=failures)
    if not board.rows:
        result.note = "no ranked trial"
        return result
    win = board.rows[0]
    result.val, result.test = win[study.metric], win.get("test_hit1")
    result.status, result.winner_epochs = str(win.get("status")), win.get("epochs_done")
    full = [r[study.metric] for r in board.rows if r.get("epochs_done") == epochs]
    result.completed_val = max(full) if full else None
    return result


# ---- statistics ---------------------------------------------------------------------------------

def welch(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """mean(a) - mean(b) with a Welch t interval (unequal variances, Welch-Satterthwaite df)."""
    if len(a) < 2 or len(b) < 2:
        return None
    sa, sb = summarize(a), summarize(b)
    diff = sa.mean - sb.mean
    va, vb = sa.sd ** 2 / sa.n, sb.sd ** 2 / sb.n
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))
    half = t_quantile((1 + level) / 2, df) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def pts(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def interval_text(s: Interval) -> str:
    if s.mean is None:
        return "n/a"
    if s.half_width is None:
        return f"{pts(s.mean)} (n=1)"
    return f"{pts(s.mean)} ± {pts(s.half_width)} [{pts(s.low)}, {pts(s.high)}]"


def mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(vals) / len(vals) if vals else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="search seeds 0 .. N-1 (default 3; --quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="optim.epochs (default 8; --quick 4)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 4 epochs")
    parser.add_argument("--grace-period", type=int, default=2, help="ASHA grace period (default 2)")
    parser.add_argument("--reduction-factor", type=int, default=3, help="ASHA reduction factor (default 3)")
    parser.add_argument("--asha-samples", type=int, default=None,
                        help="ASHA+TPE num_samples (default: the one whose expected spend is nearest PBT's)")
    parser.add_argument("--trials-dir", default=None, help="keep the space files, logs and studies here "
                        "(default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    seeds = list(range(args.seeds if args.seeds is not None else (2 if args.quick else 3)))
    epochs = args.epochs if args.epochs is not None else (4 if args.quick else 8)
    budget = POPULATION * epochs
    samples, expected, nominal = asha_plan(budget, epochs, args.grace_period, args.reduction_factor,
                                           args.asha_samples)
    asha = (samples, args.grace_period, args.reduction_factor)
    marks = ", ".join(str(m) for m in rungs(epochs, args.grace_period, args.reduction_factor)) or "none"
    print(f"pbt vs asha+tpe: search seeds {seeds[0]}..{seeds[-1]}, tiny preset, synthetic data, {epochs} epochs, "
          f"eval every 2, {RESOURCES['cpus_per_trial']} CPU a trial, {POPULATION} trials at a time")
    print(f"budget: pbt {POPULATION} members x {epochs} epochs = {budget}; asha+tpe {samples} samples, grace "
          f"{args.grace_period}, reduction factor {args.reduction_factor} (rungs at {marks}): expected "
          f"{expected:.1f} epochs (Ray's asynchronous rule, simulated; {nominal:.1f} if synchronous)")

    if args.trials_dir:
        folder = Path(args.trials_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="mtsearch-pbt-vs-asha-")
        folder = Path(tmp.name)
    results: list[Result] = []
    started = time.perf_counter()
    try:
        for seed in seeds:
            for method in ("pbt", "asha"):
                r = run_study(method, seed, epochs, asha, folder)
                results.append(r)
                if r.ok:
                    print(f"  seed {seed} {method:<4}  winner val Hit@1 {pts(r.val):>5}  test {pts(r.test):>5}  "
                          f"({r.status}, {r.winner_epochs} epochs)  epochs spent {r.epochs:>3}  "
                          f"trials {r.counts}  {r.wall_s:6.1f} s", flush=True)
                else:
                    print(f"  seed {seed} {method:<4}  FAILED after {r.wall_s:.1f} s: {r.note}", flush=True)
                for line in r.failures or []:
                    print(f"      unranked trial {line}")
                if r.ok and r.distinct_epochs != r.epochs:
                    print(f"      note: {r.epochs} epoch rows but {r.distinct_epochs} distinct (trial, epoch) pairs")
    finally:
        total = time.perf_counter() - started
        if tmp is not None:
            tmp.cleanup()

    by = {m: [r for r in results if r.method == m and r.ok and r.val is not None] for m in ("pbt", "asha")}
    print(f"{'method':<9} {'best final val Hit@1, mean ± 95% CI':<36} {'epochs spent':>12} {'train clips':>12} "
          f"{'winner test Hit@1':>17} {'wall s (mean)':>13} {'seeds ok':>8}")
    for m, label in (("pbt", "PBT"), ("asha", "ASHA+TPE")):
        rs = by[m]
        clips = mean([r.train_clips for r in rs])
        wall = mean([r.wall_s for r in rs])
        print(f"{label:<9} {interval_text(summarize([r.val for r in rs])):<36} "
              f"{(mean([r.epochs for r in rs]) or 0):>12.1f} {(f'{clips:.0f}' if clips else 'n/a'):>12} "
              f"{pts(mean([r.test for r in rs])):>17} {(f'{wall:.1f}' if wall else 'n/a'):>13} "
              f"{len(rs):>5}/{len(seeds)}")
    pruned_wins = [r for r in by["asha"] if r.winner_epochs != epochs]
    if pruned_wins:
        print(f"note: {len(pruned_wins)} asha winner(s) stopped before epoch {epochs} (ranked on an earlier "
              f"rung's Hit@1, no test figure); best among trials that trained all {epochs} epochs: "
              f"{interval_text(summarize([r.completed_val for r in by['asha']]))}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"note: {len(failed)} stud{'y' if len(failed) == 1 else 'ies'} failed: "
              + "; ".join(f"{r.method} seed {r.seed}" for r in failed))
    print(f"total wall time {total:.0f} s")
    a, b = [r.val for r in by["pbt"]], [r.val for r in by["asha"]]
    if not a or not b:
        sys.exit("pbt_vs_asha: no result for " + ("pbt" if not a else "asha"))
    diff = welch(a, b)
    ea, eb = mean([r.epochs for r in by["pbt"]]), mean([r.epochs for r in by["asha"]])
    if diff is None:
        d = sum(a) / len(a) - sum(b) / len(b)
        print(f"pbt_vs_asha: {pts(d, True)} points (95% CI [n/a, n/a]), epochs {ea:.1f} vs {eb:.1f}")
    else:
        print(f"pbt_vs_asha: {pts(diff[0], True)} points (95% CI [{pts(diff[1], True)}, {pts(diff[2], True)}]), "
              f"epochs {ea:.1f} vs {eb:.1f}")


if __name__ == "__main__":
    main()
