"""What `eval.every: rungs` saves the README's main job: the validation split evaluated only at
ASHA's rungs and the last epoch, against every 2 epochs.

Runs `python -m mtsearch run FILE --quiet` twice in the same session, in fresh trial folders:
`spaces/weights.yaml` as it is (`eval.every: rungs`: grace 4, reduction factor 3, 8 epochs, so
epochs 4 and 8) and a copy of it in a temporary folder whose only change is `eval.every: 2`
(epochs 2, 4, 6, 8); same study name, same search seed. The order is stated in the output
(`--first` picks it; the default runs rungs first).

For each study it prints the wall time, and from trials.parquet and epochs.parquet: the validation
clips evaluated per trial (mean over all the study's trials, the ones ASHA stopped included), the
test split's clips (the last epoch row's `eval_clips` holds the validation split and the test
split, once, with the final weights: its test part is that row less the validation split's size;
both sizes are loaded as the trainer loads them and checked against the rows), the total evaluated clips and the share of device seconds
spent evaluating (`eval_s / device_s`, summed over trials). Then the leaderboard winner's final
validation Hit@1 in each, and the check that the two studies differ only where evaluation is
concerned: evaluation changes no training (each epoch reseeds from the seed and the epoch, the
plateau rule steps on the training loss), so every configuration (same loss.w_track and
loss.w_dir) both studies trained must have the same training columns at every epoch both trained,
and the same evaluated columns at every epoch both evaluated (4 and 8). TPE and ASHA see the same
values, but two trials at a time may reach a rung in either order, so the samplers can part ways.

The last line is

    eval_rungs: wall X.XXx, validation clips per trial A vs B (C.Cx fewer), best val Hit@1 P vs Q

(wall: rungs / every 2; A: every 2, B: rungs; P: every 2, Q: rungs). Wall times are noisy on a
shared machine: the load average before and after each run is printed.

    python benchmarks/eval_rungs.py                  # the main job: 12 samples each (~10-15 min on 2 cores)
    python benchmarks/eval_rungs.py --quick          # smoke run: 3 samples each
    python benchmarks/eval_rungs.py --trials-dir /tmp/er   # keep the study folders
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from mtsearch.records import config_from_record
from mtsearch.results import report

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ("loss", "loss_cls", "loss_track", "loss_dir", "train_hit1", "lr", "train_clips",
           "w_track", "w_dir", "weight_decay")
EVALUATED = ("val_hit1", "val_hit5", "val_mean_class_acc", "dir_acc", "track_feat_cos", "track_err_px",
             "track_gain", "cycle_gain", "test_hit1", "test_hit5", "test_mean_class_acc", "eval_clips")


@dataclass
class Study:
    label: str
    wall_s: float
    load: tuple[float, float]  # 1-minute load average before and after
    path: Path
    epochs: int
    trials: list[dict[str, Any]]
    rows: dict[str, list[dict[str, Any]]]  # trial_id -> epoch rows, by epoch


def run(label: str, space: Path, trials_dir: Path, num_samples: int | None, epochs: int) -> Study:
    """One `mtsearch run` of `space` into `trials_dir`."""
    name = yaml.safe_load(space.read_text())["name"]
    cmd = [sys.executable, "-m", "mtsearch", "run", str(space), "--trials-dir", str(trials_dir), "--quiet"]
    if num_samples is not None:
        cmd += ["--num-samples", str(num_samples)]
    before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = os.getloadavg()[0]
    if done.returncode != 0:
        sys.exit(f"{label}: mtsearch run failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    path = trials_dir / name
    trials = pq.read_table(path / "trials.parquet").to_pylist()
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in pq.read_table(path / "epochs.parquet").to_pylist():
        rows.setdefault(str(row["trial_id"]), []).append(row)
    for mine in rows.values():
        mine.sort(key=lambda r: r["epoch"])
    return Study(label, wall, (before, after), path, epochs, trials, rows)


def splits(study: Study) -> dict[str, int]:
    """The validation and test splits' clips and videos, as the trainer loads them for the study's
    first trial (mtsearch.train.fit.load_clips on its recorded config)."""
    from mtsearch.train.fit import load_clips

    cfg = config_from_record(json.loads(study.trials[0]["config"]))
    _, val, test, _ = load_clips(cfg, lambda message: None)
    return {"val_clips": len(val), "val_videos": val.num_videos, "test_clips": len(test),
            "test_videos": test.num_videos}


def clips(study: Study) -> dict[str, Any]:
    """Validation and test clips evaluated, per trial and in all, and the evaluation's share of
    device time. The validation split's size is read off the epoch rows (an evaluated row before
    the last epoch) and checked against the loaded split; the last row's remainder is the test part."""
    sizes = splits(study)
    val_sizes = {int(r["eval_clips"]) for rows in study.rows.values() for r in rows
                 if r["epoch"] < study.epochs and r.get("eval_clips")}
    if val_sizes != {sizes["val_clips"]}:
        print(f"  WARNING {study.label}: evaluated rows before the last epoch count {sorted(val_sizes)} clips, "
              f"the loaded validation split {sizes['val_clips']}")
    val_size = sizes["val_clips"]
    per_trial_val, test_parts, evals, mismatched = [], set(), [], []
    for trial in study.trials:
        mine = study.rows.get(str(trial["trial_id"]), [])
        total = int(sum(r.get("eval_clips") or 0 for r in mine))
        if trial.get("eval_clips") is not None and int(trial["eval_clips"]) != total:
            mismatched.append(f"{trial['trial_id']}: trials.parquet {trial['eval_clips']}, epoch rows {total}")
        val = 0
        for r in mine:
            n = int(r.get("eval_clips") or 0)
            if r["epoch"] == study.epochs:
                test_parts.add(n - val_size)
                n = val_size
            val += n
        per_trial_val.append(val)
        evals.append([r["epoch"] for r in mine if r.get("val_hit1") is not None])
    device = sum(float(t.get("device_s") or 0.0) for t in study.trials)
    eval_s = sum(float(t.get("eval_s") or 0.0) for t in study.trials)
    total = sum(int(t.get("eval_clips") or 0) for t in study.trials)
    statuses: dict[str, int] = {}
    for t in study.trials:
        statuses[str(t["status"])] = statuses.get(str(t["status"]), 0) + 1
    return {"val_size": val_size, "test_parts": sorted(test_parts), "per_trial_val": per_trial_val,
            "mean_val": sum(per_trial_val) / len(per_trial_val), "total": total,
            "total_val": sum(per_trial_val), "total_test": total - sum(per_trial_val),
            "eval_share": eval_s / device if device > 0 else math.nan, "device_s": device, "eval_s": eval_s,
            "train_clips": sum(int(t.get("train_clips") or 0) for t in study.trials),
            "evals": evals, "statuses": statuses, "mismatched": mismatched, **sizes}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def by_configuration(study: Study, keys: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for trial in study.trials:
        key = tuple(round(float(trial[k]), 9) for k in keys)
        if key in out:
            print(f"  note: {study.label} sampled {dict(zip(keys, key))} twice; the later trial is compared")
        out[key] = study.rows.get(str(trial["trial_id"]), [])
    return out


def compare(a: Study, b: Study, keys: list[str]) -> tuple[int, int, int, list[str]]:
    """(configurations both trained, with the same training rows, with the same evaluated rows
    where both evaluated, the differences)."""
    ra, rb = by_configuration(a, keys), by_configuration(b, keys)
    shared = [k for k in ra if k in rb]
    train_same = eval_same = 0
    diffs = []
    for key in shared:
        ea = {r["epoch"]: r for r in ra[key]}
        eb = {r["epoch"]: r for r in rb[key]}
        both = sorted(set(ea) & set(eb))
        t_ok = e_ok = True
        for epoch in both:
            for col in TRAINED:
                if not same(ea[epoch].get(col), eb[epoch].get(col)):
                    t_ok = False
                    diffs.append(f"{dict(zip(keys, key))} epoch {epoch} {col}: "
                                 f"{ea[epoch].get(col)!r} vs {eb[epoch].get(col)!r}")
            if ea[epoch].get("val_hit1") is not None and eb[epoch].get("val_hit1") is not None:
                for col in EVALUATED:
                    if not same(ea[epoch].get(col), eb[epoch].get(col)):
                        e_ok = False
                        diffs.append(f"{dict(zip(keys, key))} epoch {epoch} {col}: "
                                     f"{ea[epoch].get(col)!r} vs {eb[epoch].get(col)!r}")
        train_same += t_ok
        eval_same += e_ok
    return len(shared), train_same, eval_same, diffs


def winner(study: Study, keys: list[str]) -> tuple[float, dict[str, Any]]:
    top = report.leaderboard(report.load_study(study.path)).rows[0]
    trial = next(t for t in study.trials if str(t["trial_id"]) == top["trial_id"])
    return float(top["val_hit1"]), {k: round(float(trial[k]), 4) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="spaces/weights.yaml")
    parser.add_argument("--every", type=int, default=2, help="the baseline's eval.every (default 2)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="trials per search (default: the file's; --quick 3)")
    parser.add_argument("--first", choices=("rungs", "every"), default="rungs", help="which search runs first")
    parser.add_argument("--trials-dir", default=None, help="keep the study folders here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 samples a search")
    args = parser.parse_args()
    num_samples = args.num_samples if args.num_samples is not None else (3 if args.quick else None)
    source = ROOT / args.space
    space = yaml.safe_load(source.read_text())
    if space["base"].get("eval.every") != "rungs":
        sys.exit(f"{args.space}: expected eval.every: rungs, found {space['base'].get('eval.every')!r}")
    keys = sorted(space["space"])
    epochs = int(space["base"]["optim.epochs"])
    with tempfile.TemporaryDirectory(prefix="mtsearch-eval-rungs-") as tmp:
        folder = Path(args.trials_dir) if args.trials_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        every_file = folder / f"every{args.every}.yaml"
        every_file.write_text(yaml.safe_dump({**space, "base": {**space["base"], "eval.every": args.every}},
                                             sort_keys=False))
        plan = {"rungs": ("rungs", source, folder / "rungs"),
                "every": (f"every {args.every}", every_file, folder / f"every{args.every}")}
        order = ["rungs", "every"] if args.first == "rungs" else ["every", "rungs"]
        samples = num_samples if num_samples is not None else space["search"]["num_samples"]
        print(f"{args.space}: {samples} samples each, run in the order {' then '.join(plan[o][0] for o in order)}; "
              f"{os.cpu_count()} CPUs")
        studies = {}
        for which in order:
            label, file, trials_dir = plan[which]
            studies[which] = run(label, file, trials_dir, num_samples, epochs)
            s = studies[which]
            print(f"  {label}: {s.wall_s:.1f} s wall (load average {s.load[0]:.2f} before, {s.load[1]:.2f} after)")
        rungs, every = studies["rungs"], studies["every"]
        c = {"rungs": clips(rungs), "every": clips(every)}
        best = {"rungs": winner(rungs, keys), "every": winner(every, keys)}
        for which in ("every", "rungs"):
            s, k = studies[which], c[which]
            epochs_seen = sorted({e for ev in k["evals"] for e in ev})
            test_ok = "" if k["test_parts"] in ([], [k["test_clips"]]) else f" (WARNING: last rows' test parts {k['test_parts']})"
            print(f"{s.label}: trials {k['statuses']}, validation evaluated at epochs {epochs_seen}; "
                  f"validation split {k['val_clips']} clips of {k['val_videos']} videos, test split "
                  f"{k['test_clips']} clips of {k['test_videos']} videos (once a trial that reached epoch "
                  f"{s.epochs}){test_ok}")
            print(f"  validation clips per trial: mean {k['mean_val']:.1f} (per trial {k['per_trial_val']})")
            print(f"  evaluated clips in all: {k['total']:,} ({k['total_val']:,} validation + {k['total_test']:,} test); "
                  f"{k['train_clips']:,} training clips")
            print(f"  device seconds evaluating: {k['eval_s']:.1f} of {k['device_s']:.1f} ({100 * k['eval_share']:.1f}%)")
            score, cfg = best[which]
            se = math.sqrt(score * (1 - score) / k["val_videos"])  # Hit@1 is video-level
            print(f"  best final val Hit@1 {score:.4f} at {cfg} (binomial s.e. of one evaluation on "
                  f"{k['val_videos']} videos: {se:.4f}, one video {1 / k['val_videos']:.4f})")
            for m in k["mismatched"]:
                print(f"  MISMATCH trials.parquet eval_clips against the epoch rows: {m}")
        shared, train_same, eval_same, diffs = compare(every, rungs, keys)
        print(f"configurations both searches trained: {shared} of {len(every.trials)} and {len(rungs.trials)}; "
              f"same training rows at every epoch both trained: {train_same}; same evaluated rows at every "
              f"epoch both evaluated: {eval_same}")
        for d in diffs[:20]:
            print(f"  DIFFERS {d}")
        if len(diffs) > 20:
            print(f"  ... {len(diffs) - 20} more differences")
        same_winner = best["every"][1] == best["rungs"][1]
        print(f"same winning configuration: {'yes' if same_winner else 'no'}")
        fewer = c["every"]["mean_val"] / c["rungs"]["mean_val"]
        print(f"validation clips per trial, every {args.every} / rungs: {fewer:.2f}x "
              f"({'meets' if fewer >= 4 else 'short of'} the issue's 4x on this job)")
        print(f"eval_rungs: wall {rungs.wall_s / every.wall_s:.2f}x, validation clips per trial "
              f"{c['every']['mean_val']:.0f} vs {c['rungs']['mean_val']:.0f} ({fewer:.1f}x fewer), "
              f"best val Hit@1 {best['every'][0]:.4f} vs {best['rungs'][0]:.4f}")


if __name__ == "__main__":
    main()
