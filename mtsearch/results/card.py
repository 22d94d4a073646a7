"""The result card `best.md` that `mtsearch export` writes beside `best.yaml`.

What a researcher pastes into a lab notebook: what the search changed (a diff against the
thesis's defaults), the metric (best and final epoch; over seeds when a race confirmed it), the
learning curve, a schedule's segments, the environment, a fingerprint of the data, and the command that reproduces it.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mtsearch import __version__
from mtsearch.config import TrialConfig
from mtsearch.metrics import counterpart_on_test, display_scale
from mtsearch.results.cost import study_cost
from mtsearch.results.lineage import LineageSegment, lineage_segments, scheduled_keys
from mtsearch.results.report import Study, best_score, final_score, fmt_number
from mtsearch.results.stats import Interval

CURVE_COLUMNS = ("loss", "val_hit1", "val_hit5", "dir_acc")


def config_diff(cfg: TrialConfig) -> list[tuple[str, Any, Any]]:
    """(key, this value, thesis default) for every key the trial sets differently."""
    mine = cfg.resolved().to_flat()
    thesis = TrialConfig().resolved().to_flat()
    return [(k, mine[k], thesis[k]) for k in mine if mine[k] != thesis[k]]


def data_fingerprint(cfg: TrialConfig, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Dataset, root, split, video counts and a hash of the index (paths, sizes, labels): two
    runs with the same hash trained and tested on byte-for-byte the same list of files; and a hash
    of the validation list the run selected on."""
    from mtsearch.data.datasets import index_for_config

    index = index_for_config(cfg, warn=warn)
    digest = hashlib.sha256()
    for part, items in (("train", index.train), ("test", index.test)):
        for item in sorted(items, key=lambda i: i.name):
            size = item.path.stat().st_size if item.path.exists() else -1
            digest.update(f"{part}\t{item.name}\t{size}\t{item.label}\n".encode())
    from mtsearch.data.splits import carve

    val = sorted(item.name for item in carve(index, cfg.val_fraction, cfg.val_carving).val)
    val_digest = hashlib.sha256("".join(f"{name}\n" for name in val).encode()).hexdigest()[:16]
    return {"dataset": index.dataset, "root": str(index.root), "split": index.split,
            "classes": index.num_classes, "train videos": len(index.train),
            "test videos": len(index.test), "index sha256": digest.hexdigest()[:16],
            "validation videos (carved from train)": len(val), "validation list sha256": val_digest}


def environment(device: str | None) -> dict[str, str]:
    import torch

    if torch.cuda.is_available():
        here = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}"
    else:
        here = f"CPU ({platform.machine()}, no CUDA)"
    return {"mtsearch": __version__, "git commit": _git_commit() or "not a git checkout",
            "Python": platform.python_version(), "torch": torch.__version__, "this machine": here,
            "the trial ran on": device or "not recorded"}


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def render_card(
    study: Study, trial: Mapping[str, Any], cfg: TrialConfig, *, yaml_path: Path, selected_by: str,
    confirmed: Interval | None = None, confirm_seeds: list[int] | None = None,
    searched: Interval | None = None, searched_seeds: list[int] | None = None,
    warn: Callable[[str], None] | None = None, schedule_png: Path | None = None,
) -> str:
    """The card as Markdown; `schedule_png`, the plot of a scheduled config, written beside it."""
    metric = study.metric
    curve = study.epochs.get(str(trial.get("trial_id")), [])
    scale, unit = display_scale(metric, [r.get(metric) for r in curve])

    def show(value: Any) -> str:
        return "—" if value is None else f"{value * scale:.1f}{unit}" if unit else fmt_number(value)

    best_row = max((r for r in curve if r.get(metric) is not None),
                   key=lambda r: study.direction.key(r[metric]), default=None)
    split = ("the validation split (carved from training; the test split was evaluated once, at the end)"
             if study.selection == "val" else "the test split (the thesis's protocol: optimistic)")
    lines = [f"# {study.name}: trial {trial.get('trial_id')}", "",
             f"Selected by {selected_by}, on {split}.", "", "## Configuration (what differs from the thesis's defaults)", "",
             "| key | this run | thesis default |", "|---|---|---|"]
    lines += [f"| `{k}` | {_value(v)} | {_value(d)} |" for k, v, d in config_diff(cfg)]
    lines += ["", f"The full config is `{yaml_path.name}` beside this card.", "", f"## {metric} ({study.mode})", ""]
    lines.append(f"- best epoch: {show(best_score(study, trial))}"
                 + (f" at epoch {best_row['epoch']}" if best_row else "")
                 + " (a maximum over epochs of one run: optimistic)")
    lines.append(f"- final epoch: {show(final_score(study, trial))} (epoch {trial.get('epochs_done')})")
    test = trial.get(counterpart_on_test(metric))
    lines.append(f"- test split, final weights: {show(test)}" if test is not None
                 else "- test split: not evaluated (the run did not complete, or predates validation splits)")
    if searched is not None and searched.mean is not None:  # search.seeds_per_trial: its own seeds
        ci = (f" ± {searched.half_width * scale:.1f} (95% CI)" if searched.half_width is not None else "")
        lines.append(f"- over the search's {searched.n} seeds of this configuration (`search.seeds_per_trial`, "
                     f"final epoch, seeds {', '.join(map(str, searched_seeds or []))}): {show(searched.mean)}{ci}; "
                     "what the search ranked by, so optimistic as the best of its configurations")
    if confirmed is not None and confirmed.mean is not None:
        ci = (f" ± {confirmed.half_width * scale:.1f} (95% CI)" if confirmed.half_width is not None else "")
        lines.append(f"- over {confirmed.n} fresh seeds (`mtsearch confirm`, final epoch, seeds "
                     f"{', '.join(map(str, confirm_seeds or []))}): {show(confirmed.mean)}{ci}")
    else:
        lines.append("- not confirmed over seeds: run `mtsearch confirm` for a mean and a confidence interval")
    lines += ["", "## Learning curve", "", "| epoch | " + " | ".join(_curve_header(c) for c in CURVE_COLUMNS) + " |",
              "|---|" + "---|" * len(CURVE_COLUMNS)]
    for row in curve:
        cells = [_curve_cell(c, row.get(c)) for c in CURVE_COLUMNS]
        lines.append(f"| {row['epoch']} | " + " | ".join(cells) + " |")
    lines += _schedule_section(study, trial, cfg, schedule_png)
    spent = study_cost([trial])
    if spent is not None:
        lines += ["", "## Cost", "", f"- this trial: {spent.summary()}"]
        whole = study_cost(study.trials)
        if whole is not None:
            lines.append(f"- the study ({whole.trials} trials): {whole.summary()}")
    lines += ["", "## Environment", "", *[f"- {k}: {v}" for k, v in environment(trial.get("device")).items()]]
    lines += ["", "## Data", ""]
    try:
        lines += [f"- {k}: {v}" for k, v in data_fingerprint(cfg, warn).items()]
    except Exception as exc:  # noqa: BLE001 - the data may live on another machine
        lines.append(f"- not available here: {exc}")
    lines += ["", "## Reproduce", "", "```", f"mtsearch train {yaml_path} --out runs/{study.name}", "```", ""]
    return "\n".join(lines)


def _schedule_section(study: Study, trial: Mapping[str, Any], cfg: TrialConfig,
                      schedule_png: Path | None) -> list[str]:
    """A config with schedules (a population's winner): its segments as a table, and the plot."""
    segments = schedule_segments(study, trial, cfg)
    if not segments:
        return []
    keys = list(segments[0].values)
    lines = ["", "## Schedule", "",
             "The values in force, segment by segment. A copy starts from its donor's weights, which "
             "the donor trained on its own seed and data stream; `mtsearch train` replays them all.", "",
             "| epochs | trained by | seed | " + " | ".join(f"`{k}`" for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    lines += [f"| {s.first}-{s.last} | {s.trained_by} | {s.seed} | "
              + " | ".join(f"{s.values[k]:.4g}" for k in keys) + " |" for s in segments]
    if schedule_png is not None:
        lines += ["", f"![the schedule]({schedule_png.name})"]
    return lines


def schedule_segments(study: Study, trial: Mapping[str, Any], cfg: TrialConfig) -> list[LineageSegment]:
    """The segments of a scheduled config ([] for one of constants)."""
    if not scheduled_keys(cfg):
        return []
    return lineage_segments(study.lineage, str(trial.get("trial_id")), cfg)


def _curve_header(column: str) -> str:
    unit = display_scale(column, [0.5])[1]
    return f"{column} ({unit})" if unit else column


def _curve_cell(column: str, value: Any) -> str:
    """A learning-curve value: hit rates and accuracies in percent with one decimal, as the tables."""
    if value is None:
        return "—"
    scale = display_scale(column, [0.5])[0]  # the unit is the column's, whatever this value is
    return fmt_number(value, scale, decimals=1 if scale == 100.0 else 3)


def _value(value: Any) -> str:
    """A config value as YAML writes it (null, true, [a, b]), floats to 4 significant digits."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return f"`{value}`" if isinstance(value, str) else _plain(value)


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = format(value, ".4g")
        return text + ".0" if text.lstrip("-").isdigit() else text  # YAML's 25.0, not 25
    return str(value)
