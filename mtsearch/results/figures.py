"""What every figure module shares: the canvas, the atomic PNG write, axis names and log scales."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mtsearch.files import write_atomic

if TYPE_CHECKING:
    from mtsearch.results.report import Study

KEY_NAMES = {
    "loss.w_track": "w_track (w1, tracking loss weight)",
    "loss.w_dir": "w_dir (w2, direction loss weight)",
}
DPI = 120


def new_figure(width: float, height: float):  # -> matplotlib.figure.Figure
    """A figure on the Agg canvas (headless, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: Path) -> Path:
    """The figure as a PNG at `path`, written atomically (a plot taken mid-run is never half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    write_atomic(path, buf.getvalue())
    return path


def is_log_key(study: Study, key: str, values: Sequence[float]) -> bool:
    """Log axis for keys searched with a log distribution, or positive ones spanning > 1.5 decades."""
    dist = (study.spec.get("space") or {}).get(key)
    if isinstance(dist, dict) and any(k in dist for k in ("loguniform", "logint")):
        return True
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 30
