"""Checks of a study against its dataset, before anything starts.

Some values are valid in a space file yet impossible on the data: a `data.fps` above every
video's frame rate makes every trial with it fail after Ray has started. The driver already
indexes the dataset, so it probes the videos' rates once (headers only, in threads) and refuses
such a value up front, as `train` does (the trainer stops at the first such video). Clip length is not checked
the same way: a video shorter than `data.clip_frames` is loop-padded, never unusable.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mtsearch.errors import InvalidInput, VideoReadError


def fps_values(spec: Any) -> tuple[str, list[Any], bool]:
    """(key as the space file names it, the fps values or bounds it can produce, continuous)."""
    from mtsearch.distributions import factor_keys

    for key, dist in spec.space.items():
        names = factor_keys(key)
        if "data.fps" in names:
            at = names.index("data.fps")
            values = [v[at] if len(names) > 1 else v for v in dist.values]
            continuous = dist.kind in ("uniform", "loguniform")
            return f"{spec.space_section}.{key}", values, continuous
    return "base.data.fps", [spec.base.fps], False


def source_rates(items: list[Any], workers: int = 8) -> list[float]:
    """Frame rates of the readable videos (unreadable ones are the trials' skip warnings)."""
    from mtsearch.data.video import probe

    def rate(item: Any) -> float | None:
        try:
            return probe(item.path).fps
        except VideoReadError:
            return None

    with ThreadPoolExecutor(workers) as pool:
        return [r for r in pool.map(rate, items) if r is not None]


def fps_refusal(fps: float, rates: list[float], root: Any) -> str | None:
    """Why `fps` cannot run on videos of these frame rates, or None. The trainer refuses a rate
    above any video's (skipping those videos would give trials with different fps different test
    sets), so `train`, `run` and `ablate` refuse it up front with this one message."""
    from mtsearch.data.video import RATE_TOLERANCE

    above = [r for r in rates if fps > r * (1 + RATE_TOLERANCE)]
    if not above:
        return None
    if len(above) == len(rates):
        return f"{fps:g} fps is above the frame rate of every video in {root} (the highest is {max(rates):g} fps)"
    return (f"{fps:g} fps is above the frame rate of {len(above)} of {len(rates)} videos in {root} "
            f"(the lowest is {min(rates):g} fps); a trial stops at the first such video")


def check_fps(spec: Any) -> None:
    """Refuse a `data.fps` value, or the top of a searched range, above any video's rate."""
    from mtsearch.data.datasets import index_for_config

    key, values, continuous = fps_values(spec)
    cfg = spec.base.resolved()
    index = index_for_config(cfg)
    rates = source_rates(index.train + index.test)
    if not rates:
        return  # nothing readable: the trials report that themselves
    values = [v for v in values if v is not None and v != "source"]  # a video's own rate always runs
    if not values:
        return
    for fps in ([min(values), max(values)] if continuous else values):
        why = fps_refusal(fps, rates, index.root)
        if why:
            raise InvalidInput(spec.source, key, why, fps)
