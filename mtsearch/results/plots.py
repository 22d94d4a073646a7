"""PNG figures of a study: learning curves, the weight scatter, parallel coordinates, ablation bars.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas (headless, no pyplot global
state) and written atomically, so a plot taken mid-run never leaves half a PNG behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtsearch.metrics import display_scale, title
from mtsearch.metrics import label as metric_label
from mtsearch.results.ablation import ablation, short_labels
from mtsearch.results.figures import KEY_NAMES, new_figure, save
from mtsearch.results.parallel_plot import parallel_coordinates
from mtsearch.results.report import Study, final_score, leaderboard

# ---- learning curves ---------------------------------------------------------------------------


def learning_curves(study: Study, path: Path) -> Path | None:
    """Metric and training l_cls per epoch, one line per trial; pruned trials faded, failed dotted."""

    trial_ids = [
        str(t.get("trial_id")) for t in study.trials if study.epochs.get(str(t.get("trial_id")))
    ]
    if not trial_ids:
        return None
    status = {str(t.get("trial_id")): str(t.get("status")) for t in study.trials}
    scale, unit = display_scale(study.metric, [v for tid in trial_ids for _, v in study.curve(tid)])
    board = leaderboard(study)
    rank = {row["trial_id"]: row["rank"] for row in board.rows}
    fig = new_figure(12, 4.8)
    ax_metric, ax_loss = fig.subplots(1, 2)

    color_of = _curve_colors(study, trial_ids, rank)

    labelled_cells: set[str] = set()
    for tid in trial_ids:
        st = status.get(tid, "")
        style = {"color": color_of[tid], "linewidth": 1.6, "alpha": 0.9, "linestyle": "-"}
        if st == "pruned":
            style.update(alpha=0.25, linewidth=1.0)
        elif st in ("error", "diverged"):
            style.update(linestyle=":", alpha=0.6)
        label = None
        if study.is_ablation:
            cell = str(next(t.get("cell") for t in study.trials if str(t.get("trial_id")) == tid))
            if cell not in labelled_cells:
                labelled_cells.add(cell)
                label = cell
        elif rank.get(tid, 99) <= 5:
            label = f"#{rank[tid]} {tid}"
        curve = study.curve(tid)
        if curve:
            xs, ys = zip(*curve)
            ax_metric.plot(
                xs, [y * scale for y in ys], marker="o", markersize=3, label=label, **style
            )
        loss = study.curve(tid, "loss_cls")
        if loss:
            xs, ys = zip(*loss)
            ax_loss.plot(xs, ys, **style)

    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric_label(study.metric, unit))
    ax_metric.set_title(f"{title(study.metric)} per evaluated epoch")
    ax_loss.set_xlabel("epoch")
    # l_cls, not the total: totals weigh the (negative) tracking term differently in every trial
    ax_loss.set_ylabel("classification loss l_cls (cross-entropy)")
    ax_loss.set_title("training classification loss per epoch")
    for ax in (ax_metric, ax_loss):
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _curve_legend(ax_metric, study)
    fig.suptitle(f"{study.name}: learning curves of {len(trial_ids)} trials")
    return save(fig, path)


def _curve_colors(study: Study, trial_ids: list[str], rank: dict[str, int]) -> dict[str, Any]:
    """A colour per trial: by cell in a grid, by rank in a search (#1 the darkest, the most visible
    on white; the weakest pale)."""
    import matplotlib as mpl

    if study.is_ablation:
        cells = sorted({str(t.get("cell")) for t in study.trials})
        palette = mpl.colormaps["tab10"]
        cell_of = {str(t.get("trial_id")): str(t.get("cell")) for t in study.trials}
        return {tid: palette(cells.index(cell_of[tid]) % 10) for tid in trial_ids}
    cmap = mpl.colormaps["viridis"]
    n = max(1, len(rank) - 1)
    return {
        tid: (cmap(0.05 + 0.8 * (rank[tid] - 1) / n) if tid in rank else (0.5, 0.5, 0.5, 1.0))
        for tid in trial_ids
    }


def _curve_legend(ax: Any, study: Study) -> None:
    """Cells (a grid) or the top trials in rank order (a search), then the line styles' meaning."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if not study.is_ablation:  # top trials in rank order
        pairs = sorted(zip(handles, labels), key=lambda hl: int(hl[1].split()[0].lstrip("#")))
        handles, labels = [h for h, _ in pairs], [lb for _, lb in pairs]
    handles += [
        Line2D([], [], color="gray", alpha=0.25, linewidth=1.0),
        Line2D([], [], color="gray", linestyle=":", alpha=0.6),
    ]
    labels += ["pruned (faded)", "error / diverged (dotted)"]
    ax.legend(handles, labels, fontsize=8, loc="best",
              title="cell" if study.is_ablation else "top trials (rank, id)", title_fontsize=8)


# ---- search figures ----------------------------------------------------------------------------


def weights_scatter(
    study: Study, path: Path, x_key: str = "loss.w_track", y_key: str = "loss.w_dir"
) -> Path | None:
    """w_track × w_dir on log axes, coloured by each trial's final metric (the score it is ranked
    by); the top trial starred."""
    points, failed = [], []
    for trial in study.trials:
        x, y = trial.get(x_key), trial.get(y_key)
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)) or x <= 0 or y <= 0:
            continue
        score = final_score(study, trial)
        if score is None or trial.get("status") in ("error", "diverged"):
            failed.append((x, y))
        else:
            points.append((x, y, score, trial.get("status") == "pruned"))
    if not points and not failed:
        return None
    scale, unit = display_scale(study.metric, [p[2] for p in points])
    fig = new_figure(7.5, 6)
    ax = fig.subplots()
    if points:
        values = [p[2] * scale for p in points]
        vmin, vmax = min(values), max(values)
        if vmin == vmax:
            vmin, vmax = vmin - 1e-9, vmax + 1e-9
        for pruned in (True, False):
            sel = [(p, v) for p, v in zip(points, values) if p[3] == pruned]
            if not sel:
                continue
            sc = ax.scatter(
                [p[0] for p, _ in sel],
                [p[1] for p, _ in sel],
                c=[v for _, v in sel],
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
                s=70 if not pruned else 45,
                alpha=1.0 if not pruned else 0.45,
                edgecolors="black",
                linewidths=0.6,
                marker="o" if not pruned else "s",
                label="pruned by ASHA (faded squares)" if pruned else "completed / running",
            )
        fig.colorbar(sc, ax=ax, label=f"final {metric_label(study.metric, unit)}")
        best = max(points, key=lambda p: study.direction.key(p[2]))
        ax.scatter(
            [best[0]],
            [best[1]],
            marker="*",
            s=320,
            facecolors="none",
            edgecolors="red",
            linewidths=1.8,
            label=f"best: w_track={best[0]:.3g}, w_dir={best[1]:.3g}",
        )
    if failed:
        ax.scatter(
            [f[0] for f in failed],
            [f[1] for f in failed],
            marker="x",
            color="gray",
            s=50,
            label="error / diverged",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(KEY_NAMES.get(x_key, x_key) + ", log scale")
    ax.set_ylabel(KEY_NAMES.get(y_key, y_key) + ", log scale")
    ax.set_title(f"{study.name}: loss weights searched ({len(points) + len(failed)} trials)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    return save(fig, path)


# ---- ablation bars -----------------------------------------------------------------------------


def ablation_bars(study: Study, path: Path) -> Path | None:
    """Per cell mean final metric (as each run ended) with 95% CI whiskers and the seeds as dots; paired deltas beside."""
    report = ablation(study)
    cells = [c for c in report.cells if c.n > 0]
    if not cells:
        return None
    scale, unit = display_scale(report.metric, [c.final.mean for c in cells])
    _, names = short_labels([c.cell for c in cells], report.factors)
    has_deltas = report.reference is not None and any(
        c.delta_final and c.delta_final.n for c in cells
    )
    fig = new_figure(12 if has_deltas else 7.5, 5.2)
    axes = fig.subplots(1, 2, width_ratios=[3, 2]) if has_deltas else [fig.subplots()]
    ax = axes[0]
    xs = list(range(len(cells)))
    colors = ["#bbbbbb" if c.is_reference else "#4c72b0" for c in cells]
    errs = [(c.final.half_width or 0.0) * scale for c in cells]
    bars = ax.bar(
        xs,
        [c.final.mean * scale for c in cells],
        yerr=errs,
        capsize=6,
        color=colors,
        edgecolor="black",
        linewidth=0.8,
        error_kw={"linewidth": 1.2},
    )
    for bar, cell in zip(bars, cells):
        if cell.is_reference:
            bar.set_hatch("//")
    _seed_dots(ax, study, cells, scale)
    ref = next((c for c in cells if c.is_reference), None)
    if ref is not None:
        ax.axhline(
            ref.final.mean * scale,
            color="gray",
            linestyle="--",
            linewidth=1,
            label=f"reference mean ({names[cells.index(ref)]})",
        )
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(xs)
    ax.set_xticklabels(
        [f"{n}\n(n={c.n}){' ref' if c.is_reference else ''}" for n, c in zip(names, cells)],
        fontsize=9,
    )
    ax.set_ylabel(f"final {metric_label(report.metric, unit)}")
    ax.set_xlabel(", ".join(report.factors) if report.factors else "cell")
    ax.set_title("mean over seeds, whiskers: 95% CI (Student t), dots: seeds", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)

    if has_deltas:
        _delta_panel(axes[1], report, list(zip(names, cells)), scale, unit)
    fig.suptitle(f"{study.name}: ablation of {', '.join(report.factors) or 'cells'}")
    return save(fig, path)


def _seed_dots(ax: Any, study: Study, cells: list[Any], scale: float) -> None:
    """Each completed run's final score as a dot over its cell's bar."""
    cell_trials: dict[str, list[float]] = {}
    for trial in study.trials:
        score = final_score(study, trial)
        if trial.get("status") == "completed" and score is not None:
            cell_trials.setdefault(str(trial.get("cell")), []).append(score)
    for x, cell in enumerate(cells):
        pts = cell_trials.get(cell.cell, [])
        offsets = [(i - (len(pts) - 1) / 2) * 0.08 for i in range(len(pts))]
        ax.scatter([x + o for o in offsets], [p * scale for p in pts], color="black", s=14, zorder=3)


def _delta_panel(ax: Any, report: Any, named: list[tuple[str, Any]], scale: float, unit: str) -> None:
    """Each cell's paired difference from the reference, coloured by its verdict."""
    others = [(n, c) for n, c in named if not c.is_reference and c.delta_final and c.delta_final.n]
    verdict_color = {"helps": "#2a9d4b", "hurts": "#c0392b"}
    for i, (_name, cell) in enumerate(others):
        d = cell.delta_final
        ax.errorbar([d.mean * scale], [i], xerr=[[(d.half_width or 0) * scale]] * 2 if d.half_width else None,
                    fmt="o", capsize=5, color=verdict_color.get(cell.verdict or "", "#555555"))
    ax.axvline(0, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(others)))
    ax.set_yticklabels([f"{n} (pairs={c.delta_final.n})" for n, c in others], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ final {metric_label(report.metric, unit)} vs reference")
    ax.set_title("paired difference vs reference (same seeds), 95% CI;\n"
                 "green: helps, red: hurts, gray: no significant difference", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)


# ---- all of them -------------------------------------------------------------------------------


def make_plots(
    study: Study, out_dir: str | Path, warn: Callable[[str], None] | None = None
) -> list[Path]:
    """Write every figure that applies to this study; returns the paths written."""
    out_dir = Path(out_dir)
    warn = warn or (lambda message: None)
    written: list[Path | None] = [learning_curves(study, out_dir / "learning_curves.png")]
    if written[0] is None:
        warn("no epochs recorded yet: no learning curves")
    if study.is_ablation:
        written.append(ablation_bars(study, out_dir / "ablation_bars.png"))
    else:
        if "loss.w_track" in study.params and "loss.w_dir" in study.params:
            written.append(weights_scatter(study, out_dir / "weights_scatter.png"))
        if study.params:
            written.append(parallel_coordinates(study, out_dir / "parallel_coordinates.png"))
        if study.space.scheduler.population_based:
            from mtsearch.results.schedule_plot import schedule_plot

            written.append(schedule_plot(study, out_dir / "schedule.png"))
    return [p for p in written if p is not None]
