"""Does the tracking branch track (issue 13)? The thesis's formula against mtsearch's defaults.

Trains the `tiny` preset (cls + track) on the built-in set for a few epochs per seed with
  thesis    the tracking branch as the thesis writes it (THESIS_TRACKING, TimeCycle's temperature)
  default   mtsearch's measured defaults (MEASURED_TRACKING; w_track 0.25)
  w2.5      the defaults at w_track 2.5
  w25       the defaults at the thesis's w_track 25
  no-loss   the defaults with w_track = 0: the same tracker, but l_track trains nothing (control:
            how much of the tracking comes from the loss rather than from the trunk's features)
  cls       no tracking branch (classification only)
and reports, averaged over the last 3 evaluations of each run: validation Hit@1, track_gain
(static error / model error against ground truth), track_err_px, cycle_gain and the collapse
diagnostic track_feat_cos. The last line:

    track_gain: thesis <a> -> default <b> (<b/a>x)

    python benchmarks/tracking_gain.py                       # 10 epochs, seeds 0 1, 2 processes
    python benchmarks/tracking_gain.py --seeds 0 1 2 --epochs 8
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from mtsearch.config import TrialConfig
from mtsearch.presets import THESIS_TRACKING, thesis_temperature

BASE: dict[str, Any] = {
    "model.preset": "tiny", "optim.lr": 1e-3, "eval.every": 1, "threads": 1, "device": "cpu",
}
VARIANTS: dict[str, dict[str, Any]] = {
    "thesis": {"model.branches": ["cls", "track"], **THESIS_TRACKING,
               "track.temperature": thesis_temperature(32)},  # tiny's track_dim
    "default": {"model.branches": ["cls", "track"]},
    "w2.5": {"model.branches": ["cls", "track"], "loss.w_track": 2.5},
    "w25": {"model.branches": ["cls", "track"], "loss.w_track": 25.0},
    "no-loss": {"model.branches": ["cls", "track"], "loss.w_track": 0.0},
    "cls": {"model.branches": ["cls"]},
}
COLUMNS = ("val_hit1", "track_gain", "track_err_px", "cycle_gain", "track_feat_cos")


def run(job: tuple[str, int, int]) -> tuple[str, int, dict[str, float | None]]:
    """One training run -> (variant, seed, its last 3 evaluations' means)."""
    from mtsearch.train import fit

    variant, seed, epochs = job
    cfg = TrialConfig.from_mapping({**BASE, **VARIANTS[variant], "seed": seed,
                                    "optim.epochs": epochs})
    history = fit(cfg, None).history
    last = [row for row in history if row.get("val_hit1") is not None][-3:]
    means: dict[str, float | None] = {}
    for column in COLUMNS:
        values = [row[column] for row in last if row.get(column) is not None]
        means[column] = statistics.fmean(values) if values else None
    return variant, seed, means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one CPU thread each)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    jobs = [(v, s, args.epochs) for v in args.variants for s in args.seeds]
    results: dict[str, list[dict[str, float | None]]] = {v: [] for v in args.variants}
    with ProcessPoolExecutor(args.jobs) as pool:
        for variant, seed, means in pool.map(run, jobs):
            results[variant].append(means)
            shown = "  ".join(f"{c} {_fmt(means[c])}" for c in COLUMNS)
            print(f"{variant:8s} seed {seed}: {shown}", flush=True)
    print(f"\nmeans over seeds {args.seeds}, last 3 evaluations of {args.epochs} epochs "
          f"(tiny, built-in set, validation split):")
    print(f"{'variant':8s}  " + "  ".join(f"{c:>14s}" for c in COLUMNS))
    mean_of: dict[str, dict[str, float | None]] = {}
    for variant, runs in results.items():
        mean_of[variant] = {c: _mean([r[c] for r in runs]) for c in COLUMNS}
        print(f"{variant:8s}  " + "  ".join(f"{_fmt(mean_of[variant][c]):>14s}" for c in COLUMNS))
    before = mean_of.get("thesis", {}).get("track_gain")
    after = mean_of.get("default", {}).get("track_gain")
    if before and after:
        print(f"track_gain: thesis {before:.2f} -> default {after:.2f} ({after / before:.2f}x)")


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
