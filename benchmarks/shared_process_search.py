"""What `resources.trials_per_process` buys a whole search: wall time of a space run with K trials
a process against one trial a process.

Runs `mtsearch run SPACE` twice in fresh trial folders, in the same session: once with
`resources.trials_per_process: 1`, once with K, and compares the wall times and the best
objective, and checks that every configuration both runs trained has the same rows as far as
both trained it (ASHA's decisions may differ with the order trials reach a rung). The last line is

    shared_process_search_time: <K a process wall / one a process wall>x

    python benchmarks/shared_process_search.py                        # spaces/weights.yaml, K = 2
    python benchmarks/shared_process_search.py --space spaces/full.yaml --per-process 4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
SAME = ("loss", "loss_cls", "train_hit1", "val_hit1")


def run(space: dict, folder: Path, per_process: int) -> tuple[float, Path]:
    """One `mtsearch run` of `space` with `resources.trials_per_process: K`: (wall seconds, study folder)."""
    data = {**space, "name": f"{space['name']}_k{per_process}",
            "resources": {**space.get("resources", {}), "trials_per_process": per_process}}
    path = folder / f"k{per_process}.yaml"
    path.write_text(yaml.safe_dump(data))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mtsearch", "run", str(path), "--quiet",
                           "--trials-dir", str(folder / "trials")], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"trials_per_process {per_process}: mtsearch run failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return wall, folder / "trials" / data["name"]


def rows_by_configuration(study: Path, keys: list[str]) -> dict[tuple, list[tuple]]:
    trials = pq.read_table(study / "trials.parquet").to_pylist()
    epochs = pq.read_table(study / "epochs.parquet").to_pylist()
    out = {}
    for trial in trials:
        mine = sorted((r for r in epochs if r["trial_id"] == trial["trial_id"]), key=lambda r: r["epoch"])
        out[tuple(round(float(trial[k]), 9) for k in keys)] = [tuple(r[k] for k in SAME) for r in mine]
    return out


def best(study: Path, metric: str, mode: str) -> float:
    values = [t[f"best_{metric}"] for t in pq.read_table(study / "trials.parquet").to_pylist()
              if t.get(f"best_{metric}") is not None]
    return max(values) if mode == "max" else min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="spaces/weights.yaml")
    parser.add_argument("--per-process", type=int, default=2, help="K, trials per process")
    args = parser.parse_args()
    space = yaml.safe_load((ROOT / args.space).read_text())
    keys = sorted(space["space"])
    metric, mode = space.get("metric", "val_hit1"), space.get("mode", "max")
    with tempfile.TemporaryDirectory(prefix="mtsearch-shared-search-") as tmp:
        folder = Path(tmp)
        alone_s, alone = run(space, folder, 1)
        shared_s, shared_study = run(space, folder, args.per_process)
        a, b = rows_by_configuration(alone, keys), rows_by_configuration(shared_study, keys)
        shared = [k for k in a if k in b]
        same = sum(1 for k in shared if a[k][:len(b[k])] == b[k][:len(a[k])])
        print(f"{args.space}: one trial a process {alone_s:.1f} s (best {metric} {best(alone, metric, mode):.4f}), "
              f"{args.per_process} a process: {shared_s:.1f} s (best {best(shared_study, metric, mode):.4f})")
        print(f"configurations both runs trained: {len(shared)}, with the same rows: {same}")
        print(f"shared_process_search_time: {shared_s / alone_s:.2f}x")


if __name__ == "__main__":
    main()
