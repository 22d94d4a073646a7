"""The parallel-coordinates figure of a search: one vertical axis per searched key plus the
metric, one line per scored trial coloured by its final score (#1 the darkest and thickest)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mtsearch.metrics import MAXIMISE, display_scale, title
from mtsearch.metrics import label as metric_label
from mtsearch.results.figures import KEY_NAMES, is_log_key, new_figure, save
from mtsearch.results.report import Study, final_score, param_display_value


def _axis_positions(
    study: Study, key: str, values: list[Any]
) -> tuple[list[float | None], list[tuple[float, str]]]:
    """Values of one key mapped to [0, 1] and the tick (position, label) pairs for that axis: the
    ends and round values between them (decades on a log axis), never a value made up mid-axis."""
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numeric and len(numeric) == len([v for v in values if v is not None]):
        log = is_log_key(study, key, numeric)
        tf = (lambda v: math.log10(v)) if log else (lambda v: float(v))
        lo, hi = min(tf(v) for v in numeric), max(tf(v) for v in numeric)
        span = hi - lo or 1.0
        pos = [None if v is None else (tf(v) - lo) / span for v in values]
        if hi == lo:
            return pos, [(0.0, f"{numeric[0]:.3g}")]
        ticks = [(0.0, f"{min(numeric):.3g}"), (1.0, f"{max(numeric):.3g}")]
        inner = [float(10 ** d) for d in range(math.ceil(lo), math.floor(hi) + 1)] if log else _round_steps(lo, hi)
        for value in inner:
            at = (tf(value) - lo) / span
            if 0.08 < at < 0.92:  # not crowding the ends' labels
                ticks.append((at, f"{value:.3g}"))
        return pos, ticks
    cats = sorted({str(v) for v in values if v is not None})
    step = 1.0 / max(1, len(cats) - 1)
    where = {c: i * step for i, c in enumerate(cats)}
    return [None if v is None else where[str(v)] for v in values], [(where[c], c) for c in cats]


def _round_steps(lo: float, hi: float) -> list[float]:
    """Round values strictly inside (lo, hi), 1-2-5 spaced, about three of them."""
    raw = (hi - lo) / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step + 1) * step
    return [round(first + i * step, 12) for i in range(10) if first + i * step < hi]


def _axis_label(study: Study, key: str, values: list[Any]) -> str:
    """A searched key's axis label: its short name, and whether the axis is logarithmic."""
    numeric = [v for v in values if isinstance(v, (int, float))]
    return KEY_NAMES.get(key, key).split(" (")[0] + ("\n(log scale)" if is_log_key(study, key, numeric) else "")


def _draw_axes(ax: Any, ticks: list[list[tuple[float, str]]]) -> None:
    """The vertical axes of a parallel-coordinates plot: a tick mark on the axis at each labelled
    value, the label left of it in grey, so it reads as the axis's scale, not as a trial's value."""
    for j, tk in enumerate(ticks):
        ax.axvline(j, color="black", linewidth=0.8, zorder=3)
        for y, text in tk:
            ax.plot([j - 0.03, j], [y, y], color="black", linewidth=0.8, zorder=3)
            ax.text(j - 0.05, y, text, fontsize=7.5, va="center", ha="right", color="0.3", zorder=4,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})


def parallel_coordinates(study: Study, path: Path) -> Path | None:
    """One vertical axis per searched key plus the metric; each trial a line coloured by its score."""
    import matplotlib as mpl

    rows = []
    for trial in study.trials:
        score = final_score(study, trial)
        if score is None or trial.get("status") in ("error", "diverged"):
            continue
        rows.append((trial, score))
    if not rows or not study.params:
        return None
    scale, unit = display_scale(study.metric, [s for _, s in rows])
    keys = list(study.params)
    columns: list[list[float | None]] = []
    ticks: list[list[tuple[float, str]]] = []
    for key in keys:
        pos, tk = _axis_positions(study, key, [param_display_value(t.get(key)) for t, _ in rows])
        columns.append(pos)
        ticks.append(tk)
    pos, tk = _axis_positions(study, study.metric, [s * scale for _, s in rows])
    columns.append(pos)
    ticks.append(tk)
    labels = [_axis_label(study, k, [t.get(k) for t, _ in rows]) for k in keys]
    labels.append(metric_label(study.metric, unit))

    fig = new_figure(max(7.0, 2.0 * len(labels) + 2), 5.5)
    ax = fig.subplots()
    cmap = mpl.colormaps["viridis_r"]  # the best score darkest: the most visible on white
    scores = [s for _, s in rows]
    lo, hi = min(scores), max(scores)
    order = sorted(range(len(rows)), key=lambda i: study.direction.key(scores[i]))
    for i in order:  # best drawn last, on top
        trial, score = rows[i]
        frac = 0.5 if hi == lo else (score - lo) / (hi - lo)
        frac = frac if study.direction == MAXIMISE else 1 - frac
        ys = [columns[j][i] for j in range(len(labels))]
        xs = [j for j, y in enumerate(ys) if y is not None]
        pruned = trial.get("status") == "pruned"
        first = i == order[-1]
        ax.plot(xs, [ys[j] for j in xs], color=cmap(frac), alpha=0.3 if pruned else 0.9,
                linewidth=3.0 if first else 1.0 if pruned else 1.6, marker="o", markersize=3,
                zorder=2 if first else 1)
        if first:
            ax.annotate("#1", (xs[-1], ys[xs[-1]]), xytext=(6, 0), textcoords="offset points",
                        fontsize=9, fontweight="bold", va="center", color=cmap(frac))
    _draw_axes(ax, ticks)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(labels) - 0.6)
    ax.set_ylim(-0.06, 1.06)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    norm = Normalize(vmin=lo * scale, vmax=hi * scale if hi > lo else lo * scale + 1e-9)
    fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap if study.direction == MAXIMISE else cmap.reversed()),
        ax=ax,
        label=f"final {metric_label(study.metric, unit)}",
    )
    ax.set_title(
        f"{study.name}: searched keys against final {title(study.metric)}\n"
        f"one line per scored trial ({len(rows)})"
        + (", pruned trials faded" if any(t.get("status") == "pruned" for t, _ in rows) else ""),
        fontsize=10,
    )
    return save(fig, path)
