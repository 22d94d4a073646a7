"""Text layouts of report data for `mtsearch leaderboard | report`: table cells, markdown, csv, json.

Table cells (terminal and markdown) show metrics scaled for reading (percent points) through the
one formatter `report.fmt_number`; csv and json carry the raw values for spreadsheets and scripts.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from mtsearch.metrics import direction, display_scale, stored_unit
from mtsearch.results.ablation import AblationReport, ablation_scale, level_text, short_labels
from mtsearch.results.importance import Importances
from mtsearch.results.report import METRIC_DIGITS, Leaderboard, fmt_number
from mtsearch.results.stats import Interval

IMPORTANCE_HEADER = ["parameter", "importance"]
IMPORTANCE_RIGHT_ALIGNED: tuple[bool, ...] = (False, True)

# ---- shared --------------------------------------------------------------------------------------


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align_right: Sequence[bool]
) -> str:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|")

    out = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join("---:" if r else ":---" for r in align_right) + "|",
    ]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def numeric_columns(rows: Sequence[Sequence[str]], width: int) -> list[bool]:
    """Per column, whether every cell reads as a number ('–', '45.0 ± 7.1', '[+1, +2]' count), so
    it is right-aligned in both the terminal and the markdown table."""

    def numeric(text: str) -> bool:
        try:
            float(text.replace("±", "").split()[0].strip("[]+%"))
            return True
        except (ValueError, IndexError):
            return text == "–"

    return [bool(rows) and all(numeric(r[i]) for r in rows) for i in range(width)]


def _json_safe(value: Any) -> Any:
    """NaN and inf as null: json.dumps would write them as bare NaN, which strict parsers reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _json_text(data: Any) -> str:
    return json.dumps(_json_safe(data), indent=2) + "\n"


# ---- leaderboard ---------------------------------------------------------------------------------


def leaderboard_columns(board: Leaderboard) -> list[str]:
    cols = ["rank", "trial_id", "status", board.metric]
    if any("ci95" in r for r in board.rows):  # configurations of several seeds: their mean's interval
        cols.append("ci95")
    cols += [f"best_{board.metric}", "test_hit1"]
    if any("cell" in r for r in board.rows):
        cols.append("cell")
    cols += board.params + ["seed", "epochs_done", "best_epoch", "wall_s"]
    return cols + (["exploits"] if any("exploits" in r for r in board.rows) else [])


def leaderboard_cells(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and rows of strings for tables (metric in percent when it is a hit rate); the
    numbers of a searched key's column share one number of decimals."""
    cols = leaderboard_columns(board)
    metric_cols = (board.metric, "ci95", f"best_{board.metric}", "test_hit1")
    scale, unit = display_scale(board.metric, [r.get(board.metric) for r in board.rows])
    header = [f"{c} ({unit})" if unit and c in metric_cols else c for c in cols]
    best = cols.index(f"best_{board.metric}")
    header[best] += " optimistic"  # a maximum over epochs
    decimals = {c: column_decimals([r.get(c) for r in board.rows]) for c in board.params}
    body = []
    for row in board.rows:
        line = []
        for c in cols:
            if c in metric_cols:
                line.append(fmt_number(row.get(c), scale, digits=METRIC_DIGITS))
            elif c == "wall_s":
                line.append(fmt_number(row.get(c), decimals=1))
            else:
                line.append(fmt_number(row.get(c), decimals=decimals.get(c)))
        body.append(line)
    return header, body


def column_decimals(values: Sequence[Any], significant: int = 3, most: int = 3) -> int | None:
    """Decimals that show a float column's smallest value to `significant` digits, so every
    number of the column has the same format; None (significant digits each) for a column of no
    floats, or of values so small that more than `most` decimals would be needed (a learning rate
    of 3e-4 is not `0.000`)."""
    floats = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v)]
    if not floats:
        return None
    smallest = min((v for v in floats if v > 0), default=1.0)
    needed = significant - 1 - math.floor(math.log10(smallest))
    return None if needed > most else max(0, needed)


def drop_constant_columns(header: list[str], body: list[list[str]], keep: int
                          ) -> tuple[list[str], list[list[str]], list[str]]:
    """Columns after the first `keep` whose cells are equal on every row (of two or more) go,
    and come back as `name value` notes to print once under the table."""
    if len(body) < 2:
        return header, body, []
    constant = [i for i in range(keep, len(header)) if len({row[i] for row in body}) == 1]
    notes = [f"{header[i]} {body[0][i]}" if body[0][i] != "–" else f"{header[i]} none" for i in constant]
    kept = [i for i in range(len(header)) if i not in constant]
    return [header[i] for i in kept], [[row[i] for i in kept] for row in body], notes


def leaderboard_footer(board: Leaderboard) -> list[str]:
    """Lines under the table: status counts, trials not ranked and their error lines."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(board.counts.items(), key=lambda kv: -kv[1]))
    order = direction(board.mode).extreme
    total = sum(board.counts.values())
    told = ("a population: searched values are those in force then, exploits how often it copied another"
            if any("exploits" in r for r in board.rows) else "what Optuna was told")
    lines = [
        f"{board.total_ranked} ranked of {total} trials ({counts}); ranked by {order} {board.metric} at "
        f"the last evaluated epoch ({told}); best_{board.metric} is the best epoch, optimistic"
    ]
    if board.selection_note:
        lines.append(board.selection_note)
    if board.cost is not None:
        lines.append(board.cost.line())
    if board.unranked:
        lines.append(f"not ranked (no score or failed): {len(board.unranked)}")
        for row in board.unranked[:10]:
            error = f": {row['error']}" if row.get("error") else ""
            lines.append(f"  {row['trial_id']} {row['status']}{error}")
    return lines


def leaderboard_markdown(board: Leaderboard) -> str:
    header, body, same = drop_constant_columns(*leaderboard_cells(board), keep=LEADING)
    text = f"**{board.study}**: trials ranked by {board.metric} ({board.mode})\n\n"
    text += markdown_table(header, body, numeric_columns(body, len(header)))
    lines = ([same_line(same)] if same else []) + leaderboard_footer(board)
    return text + "\n" + "\n".join(f"{line}  " for line in lines) + "\n"


LEADING = 4  # rank, trial id, status and the metric: always shown


def same_line(notes: Sequence[str]) -> str:
    """The columns a table left out because every row has the same value."""
    return "the same on every row: " + ", ".join(notes)


def leaderboard_csv(board: Leaderboard) -> str:
    """Raw values (no scaling), one line per ranked trial, header first."""
    cols = leaderboard_columns(board)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in board.rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    return buf.getvalue()


def leaderboard_json(board: Leaderboard) -> str:
    """The leaderboard's data, raw values; `units` says what each metric key is in."""
    data = asdict(board)
    data["cost"] = board.cost.to_record() if board.cost is not None else None
    keys = {key for row in board.rows for key in row}
    data["units"] = {key: unit for key in sorted(keys) if (unit := stored_unit(key))}
    return _json_text(data)


# ---- search report: the leaderboard plus importances ---------------------------------------------


def importance_rows(imps: Importances) -> list[list[str]]:
    """One row per searched key, most important first."""
    ranked = sorted(imps.values.items(), key=lambda kv: -kv[1])
    return [[key, fmt_number(value, decimals=3)] for key, value in ranked]


def importance_note(imps: Importances) -> str:
    if imps.values:
        return f"Optuna {imps.evaluator} importances over {imps.completed_trials} completed trials"
    return f"no parameter importances: {imps.reason}"


def importances_csv(imps: Importances) -> str:
    """The report-specific table only; the ranking itself is `leaderboard --format csv`."""
    return "parameter,importance\n" + "".join(f"{k},{v}\n" for k, v in imps.values.items())


def search_report_markdown(board: Leaderboard, imps: Importances) -> str:
    text = leaderboard_markdown(board) + f"\n{importance_note(imps)}\n\n"
    rows = importance_rows(imps)
    if rows:
        text += markdown_table(IMPORTANCE_HEADER, rows, IMPORTANCE_RIGHT_ALIGNED)
    return text


def search_report_json(board: Leaderboard, imps: Importances) -> str:
    return _json_text({"kind": "search", "leaderboard": asdict(board), "importances": asdict(imps)})


# ---- ablation ------------------------------------------------------------------------------------


def interval_text(iv: Interval | None, scale: float, signed: bool = False) -> tuple[str, str]:
    """('mean ± sd', '[low, high]') strings; '–' where undefined."""
    if iv is None or iv.mean is None:
        return "–", "–"

    def text(value: float | None, sign: bool = signed) -> str:
        return fmt_number(value, scale, digits=METRIC_DIGITS, signed=sign)

    mean = text(iv.mean)
    spread = f"{mean} ± {text(iv.sd, False)}" if iv.sd is not None else mean
    ci = f"[{text(iv.low)}, {text(iv.high)}]" if iv.low is not None else "–"
    return spread, ci


def ablation_cells(report: AblationReport, optimistic: bool = False) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows. The best-epoch Δ columns only with `optimistic`: a maximum over
    epochs favours the cell whose evaluations are noisier, so it can show a false "helps"."""
    scale, unit = ablation_scale(report)
    u = f" ({unit})" if unit else ""
    title, names = short_labels([c.cell for c in report.cells], report.factors)
    header = [
        title,
        "n",
        f"best epoch{u} mean ± sd (optimistic)",
        "best epoch 95% CI",
        f"final{u} mean ± sd",
        "final 95% CI",
        *([f"Δ best epoch vs ref{u} (optimistic: biased toward the noisier cell)", "Δ best epoch 95% CI"]
          if optimistic else []),
        f"Δ final vs ref{u}",
        "Δ final 95% CI (Holm-adjusted)",
        "p / Holm p",
        "reading",
    ]
    with_test = any(c.test.n for c in report.cells)  # studies from before validation splits have none
    if with_test:
        header[6:6] = [f"test{u} mean ± sd", "test 95% CI"]
    gain = report.tracking_gain  # does the tracking branch track (> 1)?
    if gain is not None:
        header[-1:-1] = [f"{gain.replace('_', ' ')} mean ± sd"]
    rows = []
    for name, cell in zip(names, report.cells):
        best = interval_text(cell.best, scale)
        final = interval_text(cell.final, scale)
        if cell.is_reference:
            d_best = d_final = ("reference", "–")
        else:
            d_best = interval_text(cell.delta_best, scale, signed=True)
            d_final = interval_text(cell.delta_final, scale, signed=True)
        n = str(cell.n)
        if cell.not_counted:
            n += " (+" + ", ".join(f"{k} {v}" for k, v in sorted(cell.not_counted.items())) + ")"
        c = cell.comparison
        p = "–" if c is None or c.p is None else f"{c.p:.2g} / {c.p_holm:.2g}"
        rows.append(
            [
                name + (" (ref)" if cell.is_reference else ""),
                n,
                *best,
                *final,
                *(interval_text(cell.test, scale) if with_test else ()),
                *(d_best if optimistic else ()),
                *d_final,
                p,
                *([tracking_text(cell.tracking)] if gain is not None else ()),
                "reference" if cell.is_reference else (cell.verdict or "–")
                + (f" ({len(cell.failed)} failed, counted against it)" if cell.failed else ""),
            ]
        )
    return header, rows


def tracking_text(interval: Interval) -> str:
    """A tracking gain over a cell's runs, a ratio: `2.31 ± 0.40`, or `–` (no tracking branch)."""
    if not interval.n or interval.mean is None:
        return "–"
    if interval.sd is None:
        return f"{interval.mean:.2f}"
    return f"{interval.mean:.2f} ± {interval.sd:.2f}"


def ablation_markdown(report: AblationReport, optimistic: bool = False) -> str:
    header, rows = ablation_cells(report, optimistic)
    caption = (
        f"**{report.study}**: {report.metric} ({report.mode}) per cell over seeds, mean ± sd, "
        f"95% Student-t CI; Δ = paired difference against the reference cell on the same seeds, its "
        f"CI adjusted as its verdict (Holm over the table's comparisons).\n\n"
    )
    table = markdown_table(header, rows, (False, False) + (True,) * (len(header) - 3) + (False,))
    return caption + table + "\n" + report.reading + "\n"


def ablation_csv(report: AblationReport) -> str:
    """Raw values, one line per cell, for spreadsheets and scripts."""
    stats_keys = {
        "best": ("mean", "sd", "low", "high"),
        "final": ("mean", "sd", "low", "high"),
        "test": ("n", "mean", "sd", "low", "high"),
        "delta_best": ("n", "mean", "sd", "low", "high"),
        "delta_final": ("n", "mean", "sd", "low", "high"),
        "tracking": ("n", "mean", "sd", "low", "high"),
    }
    cols = ["cell", "is_reference", "n", "seeds"]
    cols += [f"{part}_{k}" for part, keys in stats_keys.items() for k in keys]
    cols += ["verdict", "p", "p_holm", "failed"] + [f"level:{f}" for f in report.factors]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for cell in report.cells:
        line: list[Any] = [cell.cell, cell.is_reference, cell.n, " ".join(map(str, cell.seeds))]
        for part, keys in stats_keys.items():
            iv: Interval | None = getattr(cell, part)
            line += ["" if iv is None or getattr(iv, k) is None else getattr(iv, k) for k in keys]
        c = cell.comparison
        line += [cell.verdict or "", "" if c is None or c.p is None else c.p,
                 "" if c is None or c.p_holm is None else c.p_holm, " ".join(map(str, cell.failed))]
        line += [level_text(cell.levels.get(f)) for f in report.factors]
        writer.writerow(line)
    return buf.getvalue()


def ablation_json(report: AblationReport) -> str:
    return _json_text(asdict(report))
