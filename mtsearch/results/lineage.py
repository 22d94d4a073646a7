"""A population member's history as the weights lived it: which trial trained which epochs.

A copy at epoch e hands a member its donor's weights of epoch e, so the winner's weights before
e are the donor's lineage, followed back through the donor's own copies. Each segment is a run
of epochs one trial trained, with the values in force then (the winner's config holds them as
schedules) and the seed whose data stream they saw: a copy takes its donor's seed, so a whole
lineage trains on its root's stream (`seed`, reseeded each epoch from seed and epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mtsearch.config import TrialConfig
from mtsearch.schedules import SCHEDULABLE, Schedule
from mtsearch.train.in_force import in_force


@dataclass(frozen=True)
class LineageSegment:
    first: int  # epochs first..last, trained by `trained_by`
    last: int
    trained_by: str
    seed: int
    values: dict[str, float]  # the scheduled keys' values in force (constant through the segment)


def lineage_segments(lineage: Sequence[Mapping[str, Any]], trial_id: str, cfg: TrialConfig,
                     epochs: int | None = None) -> list[LineageSegment]:
    """The segments of `trial_id`'s weights up to epoch `epochs` (its config's last by default),
    oldest first; `cfg` is its (lineage) config. One segment for a trial that never copied."""
    last = epochs if epochs is not None else cfg.optim.epochs
    copies: dict[str, list[Mapping[str, Any]]] = {}
    for row in lineage:
        copies.setdefault(str(row["trial_id"]), []).append(row)
    spans: list[tuple[int, int, str]] = []
    trial, upto = trial_id, last
    while True:  # back through each copy: the donor trained the weights up to its epoch
        earlier = [r for r in copies.get(trial, []) if int(r["epoch"]) < upto]
        if not earlier:
            spans.append((1, upto, trial))
            break
        copy = max(earlier, key=lambda r: int(r["epoch"]))
        spans.append((int(copy["epoch"]) + 1, upto, trial))
        trial, upto = str(copy["donor_id"]), int(copy["epoch"])
    keys = scheduled_keys(cfg)
    flat = cfg.to_flat()
    starts = sorted({start for key in keys for start, _ in flat[key].steps})
    segments = []
    for first, end, by in reversed(spans):  # a schedule of the config's own splits a span too
        cuts = [first] + [s for s in starts if first < s <= end] + [end + 1]
        segments += [LineageSegment(a, b - 1, by, cfg.seed, _values(cfg, keys, a))
                     for a, b in zip(cuts, cuts[1:]) if a < b]
    return segments


def scheduled_keys(cfg: TrialConfig) -> list[str]:
    """The keys of `cfg` that hold a schedule."""
    flat = cfg.to_flat()
    return [key for key in SCHEDULABLE if isinstance(flat.get(key), Schedule)]


def _values(cfg: TrialConfig, keys: Sequence[str], epoch: int) -> dict[str, float]:
    flat = in_force(cfg, epoch).to_flat()
    return {key: float(flat[key]) for key in keys}


def segments_comment(segments: Sequence[LineageSegment]) -> str:
    """The export's header lines: one a segment, `epochs 1-6: trained by trial X (seed 3), ...`."""
    lines = [f"# its lineage ({len(segments)} segment{'s' if len(segments) != 1 else ''}; a copy "
             "starts from its donor's weights, trained on the donor's seed and data stream):"]
    for s in segments:
        values = ", ".join(f"{k} {v:.4g}" for k, v in s.values.items())
        lines.append(f"#   epochs {s.first}-{s.last}: trained by trial {s.trained_by} (seed {s.seed})"
                     + (f", {values}" if values else ""))
    return "\n".join(lines) + "\n"
