"""The study's results as Parquet: `trials.parquet` (one row per trial), `epochs.parquet` (per epoch).

Both files are rewritten whole, through a temp file and `os.replace`, every time the driver
learns something, so a reader (`pyarrow.parquet.read_table`, pandas, duckdb) always sees a
complete file, during the run and after a crash. A study's tables are small (hundreds of trials,
thousands of epochs), which makes rewriting cheaper than managing part files. One caveat of
any replace-by-rename: pyarrow's `read_table(path)` notes the file size, then opens the path; a
rename landing in between makes that one read raise OSError (never return a wrong table), and a
retry succeeds. The readers here (`load_trials`, `load_epochs`) retry. On resume the
store loads what is already on disk and only adds or updates rows: rows are never dropped,
except `forget()` for trials that Tune itself never knew (lost before its state was saved).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mtsearch.files import atomic_output
from mtsearch.metrics import EPOCH_METRICS, TEST_METRICS, best_epoch, stored_unit

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
LINEAGE_FILE = "lineage.parquet"  # population-based training: one row per copy (exploit)
# a copy: after `epoch`, trial `trial_id` took trial `donor_id`'s weights of `donor_epoch` and its
# config, with the mutated keys' `old` values (its own) replaced by `new` from epoch + 1 (JSON maps)
LINEAGE_COLUMNS: tuple[str, ...] = ("trial_id", "epoch", "donor_id", "donor_epoch", "reason", "old", "new")
STATUSES: tuple[str, ...] = ("running", "completed", "pruned", "error", "diverged")
# what a trial ran on: the trainer reports peak memory and device, the driver the share
TRIAL_FIGURES: tuple[str, ...] = ("peak_mem_gib", "gpu_share", "device")
# faults of the machine, which are not results: restarts from a checkpoint after a lost worker or
# node, and whether such a fault ended the trial (status error; `--resume` reruns it)
FAULT_COLUMNS: tuple[str, ...] = ("restarts", "machine_fault")
# trials trained together in one process (train/side_by_side.py): the Ray trial that ran them, and how
# many it ran (null and 1 for a trial trained alone). With search.seeds_per_trial the group is one
# sampled configuration, its trials are its seeds, and the group id is the Optuna trial's trial_id
FUSE_COLUMNS: tuple[str, ...] = ("fuse_group", "fuse_k")
# what a trial cost, summed over its epochs' rows: clips trained and evaluated, and the seconds on
# its device (training and evaluation); null for trials recorded before the ledger
LEDGER_COLUMNS: tuple[str, ...] = ("train_clips", "eval_clips", "device_s", "train_s", "eval_s")
# the final weights on the test split, once per trial; the final epoch row holds them too
TEST_COLUMNS: tuple[str, ...] = TEST_METRICS
# the protocol that produced them (eval.views: `clips`, or K temporal clips x N crops as `KxN`)
TEST_VIEWS = "test_views"
def _test_views(config: str | None) -> str | None:
    """The test protocol a trial's recorded config ran (older records: every clip, averaged)."""
    if not config:
        return None
    try:
        recorded = json.loads(config)
    except ValueError:
        return None
    from mtsearch.records import config_from_record

    try:
        return config_from_record(recorded).views
    except Exception:  # noqa: BLE001 - a config this version cannot read still has its figures
        return None


_ARROW_TYPES = {"float": "float64", "int": "int64", "string": "string", "bool": "bool"}


def _ledger(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's LEDGER_COLUMNS from its epoch rows (the epochs that recorded what they cost)."""
    spent = [r for r in rows if r.get("train_s") is not None]
    if not spent:
        return dict.fromkeys(LEDGER_COLUMNS)
    train_s = sum(r["train_s"] for r in spent)
    eval_s = sum(r.get("eval_s") or 0.0 for r in spent)
    return {"train_clips": int(sum(r.get("train_clips") or 0 for r in spent)),
            "eval_clips": int(sum(r.get("eval_clips") or 0 for r in spent)),
            "device_s": train_s + eval_s, "train_s": train_s, "eval_s": eval_s}


class StudyStore:
    """In-memory rows of one study plus their atomic Parquet mirror on disk.

    `param_types` maps each searched dotted key to float/int/string/bool (its column type);
    `with_cell` adds the grid `cell` column.
    """

    def __init__(self, study_dir: str | Path, param_types: Mapping[str, str], with_cell: bool = False,
                 with_lineage: bool = False):
        self.study_dir = Path(study_dir)
        self.param_types = dict(param_types)
        self.with_cell = with_cell
        self.with_lineage = with_lineage  # a population: lineage.parquet is written from the start
        self.trials: dict[str, dict[str, Any]] = {}
        self.epochs: dict[tuple[str, int], dict[str, Any]] = {}
        self.lineage: dict[tuple[str, int], dict[str, Any]] = {}
        self._load_existing()

    # ---- columns ------------------------------------------------------------------------------
    def trial_columns(self) -> list[str]:
        cols = ["trial_id", "status", "error"]
        if self.with_cell:
            cols.append("cell")
        cols += [k for k in self.param_types if k != "seed"]
        cols += ["seed", "epochs_done", "best_epoch", "best_val_hit1", "best_val_hit5", *TEST_COLUMNS, TEST_VIEWS, "wall_s",
                 *TRIAL_FIGURES, *FAULT_COLUMNS, *FUSE_COLUMNS, *LEDGER_COLUMNS, "config"]
        return cols

    def _trial_schema(self) -> Any:
        import pyarrow as pa

        types: dict[str, Any] = {
            "trial_id": pa.string(), "status": pa.string(), "error": pa.string(), "cell": pa.string(),
            "seed": pa.int64(), "epochs_done": pa.int64(), "best_epoch": pa.int64(),
            "best_val_hit1": pa.float64(), "best_val_hit5": pa.float64(), "wall_s": pa.float64(),
            "test_hit1": pa.float64(), "test_hit5": pa.float64(), "test_mean_class_acc": pa.float64(),
            TEST_VIEWS: pa.string(),
            "peak_mem_gib": pa.float64(), "gpu_share": pa.float64(), "device": pa.string(),
            "restarts": pa.int64(), "machine_fault": pa.bool_(),
            "fuse_group": pa.string(), "fuse_k": pa.int64(),
            "train_clips": pa.int64(), "eval_clips": pa.int64(), "device_s": pa.float64(),
            "train_s": pa.float64(), "eval_s": pa.float64(),
            "config": pa.string(),
        }
        for key, kind in self.param_types.items():
            if key != "seed":
                types[key] = pa.type_for_alias(_ARROW_TYPES[kind])
        return pa.schema([_field(c, types[c]) for c in self.trial_columns()])

    @staticmethod
    def _epoch_schema() -> Any:
        import pyarrow as pa

        return pa.schema([("trial_id", pa.string()), ("epoch", pa.int64())]
                         + [_field(c, pa.float64()) for c in EPOCH_METRICS])

    # ---- updates ------------------------------------------------------------------------------
    def upsert_trial(self, trial_id: str, **values: Any) -> dict[str, Any]:
        """Create or update a trial row; unknown keys are ignored, `config` may be a dict."""
        row = self.trials.setdefault(trial_id, {c: None for c in self.trial_columns()})
        row["trial_id"] = trial_id
        if row["fuse_k"] is None:
            row["fuse_k"] = 1
        for key, value in values.items():
            if key == "config" and isinstance(value, Mapping):
                value = json.dumps(value, sort_keys=False)
            if key == "status" and value not in STATUSES:
                raise ValueError(f"unknown status {value!r}")
            if key in row:
                row[key] = _cast(value, self.param_types.get(key))
        return row

    def add_epoch(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        """Record one epoch (a later report of the same epoch, after a resume, replaces it)."""
        epoch = int(metrics["epoch"])
        row = {"trial_id": trial_id, "epoch": epoch}
        for col in EPOCH_METRICS:
            row[col] = _finite(metrics.get(col))
        self.epochs[(trial_id, epoch)] = row
        trial = self.trials.get(trial_id)
        if trial is not None:
            self._refresh_progress(trial_id)

    def add_copy(self, trial_id: str, copy: Mapping[str, Any]) -> None:
        """Record one exploit (LINEAGE_COLUMNS); the same trial and epoch again replaces it."""
        epoch = int(copy["epoch"])
        self.lineage[(trial_id, epoch)] = {
            "trial_id": trial_id, "epoch": epoch, "donor_id": str(copy["donor"]),
            "donor_epoch": int(copy["donor_epoch"]), "reason": copy.get("reason"),
            "old": json.dumps(copy.get("old") or {}, sort_keys=True),
            "new": json.dumps(copy.get("new") or {}, sort_keys=True)}

    def trial_copies(self, trial_id: str) -> list[dict[str, Any]]:
        return sorted((r for (t, _), r in self.lineage.items() if t == trial_id), key=lambda r: r["epoch"])

    def _refresh_progress(self, trial_id: str) -> None:
        rows = self.trial_epochs(trial_id)
        trial = self.trials[trial_id]
        trial["epochs_done"] = max((r["epoch"] for r in rows), default=0)
        best = best_epoch(rows)
        trial["best_epoch"] = best["epoch"] if best else None
        trial["best_val_hit1"] = best["val_hit1"] if best else None
        trial["best_val_hit5"] = best["val_hit5"] if best else None
        tested = [r for r in rows if r.get("test_hit1") is not None]
        for column in TEST_COLUMNS:
            trial[column] = tested[-1][column] if tested else None
        trial[TEST_VIEWS] = _test_views(trial.get("config")) if tested else None
        trial.update(_ledger(rows))

    def trial_epochs(self, trial_id: str) -> list[dict[str, Any]]:
        return sorted((r for (t, _), r in self.epochs.items() if t == trial_id), key=lambda r: r["epoch"])

    def by_ray_trial(self) -> dict[str, list[dict[str, Any]]]:
        """Rows by the Ray trial that ran them (the id Tune and Optuna know): a trial's own row,
        or a seeded configuration's seeds under their `fuse_group`."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for trial_id, row in self.trials.items():
            groups.setdefault(ray_trial_id(row, trial_id), []).append(row)
        return groups

    def forget(self, trial_ids: Iterable[str]) -> None:
        """Drop trials (and their epochs) that the search no longer knows; see the module doc."""
        drop = set(trial_ids)
        for tid in drop:
            self.trials.pop(tid, None)
        self.epochs = {k: v for k, v in self.epochs.items() if k[0] not in drop}

    def counts(self) -> dict[str, int]:
        """Trials by status, a seeded configuration's seeds counted once (they share a status)."""
        counts = {s: 0 for s in STATUSES}
        for rows in self.by_ray_trial().values():
            counts[rows[0]["status"] or "running"] += 1
        return counts

    # ---- disk ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the tables atomically (temp file in the same folder + rename): the lineage first,
        so that a reader who sees a copy's first epoch row also sees the copy."""
        import pyarrow as pa

        if self.with_lineage or self.lineage or (self.study_dir / LINEAGE_FILE).exists():
            copies = sorted(self.lineage.values(), key=lambda r: (r["epoch"], r["trial_id"]))
            _write_table(pa.Table.from_pylist(copies, schema=lineage_schema()), self.study_dir / LINEAGE_FILE)
        trial_rows = sorted(self.trials.values(), key=lambda r: r["trial_id"])
        epoch_rows = sorted(self.epochs.values(), key=lambda r: (r["trial_id"], r["epoch"]))
        _write_table(pa.Table.from_pylist(trial_rows, schema=self._trial_schema()),
                     self.study_dir / TRIALS_FILE)
        _write_table(pa.Table.from_pylist(epoch_rows, schema=self._epoch_schema()),
                     self.study_dir / EPOCHS_FILE)

    def _load_existing(self) -> None:
        trials_path = self.study_dir / TRIALS_FILE
        if trials_path.exists():
            for row in load_trials(self.study_dir).to_pylist():
                full = {c: row.get(c) for c in self.trial_columns()}
                full["fuse_k"] = full["fuse_k"] or 1  # a study from before fusion: every trial alone
                self.trials[row["trial_id"]] = full
        epochs_path = self.study_dir / EPOCHS_FILE
        if epochs_path.exists():
            for row in load_epochs(self.study_dir).to_pylist():
                self.epochs[(row["trial_id"], int(row["epoch"]))] = row
        if (self.study_dir / LINEAGE_FILE).exists():
            for row in _read_table(self.study_dir / LINEAGE_FILE).to_pylist():
                self.lineage[(row["trial_id"], int(row["epoch"]))] = row


def lineage_schema() -> Any:
    import pyarrow as pa

    types = {"epoch": pa.int64(), "donor_epoch": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in LINEAGE_COLUMNS])


def lineage_rows(study_dir: str | Path) -> list[dict[str, Any]]:
    """A population-based study's copies, `old`/`new` decoded ([] for any other study)."""
    path = Path(study_dir) / LINEAGE_FILE
    if not path.exists():
        return []
    rows = _read_table(path).to_pylist()
    for row in rows:
        row["old"], row["new"] = json.loads(row["old"] or "{}"), json.loads(row["new"] or "{}")
    return rows


def ray_trial_id(row: Mapping[str, Any], trial_id: str | None = None) -> str:
    """The Ray trial a row belongs to: its `fuse_group` when a configuration's seeds share one, else itself."""
    return str(row.get("fuse_group") or (trial_id if trial_id is not None else row["trial_id"]))


def is_ranked(status: str | None, score: float | None) -> bool:
    """The one ranking rule (live display, `leaderboard`, `export`): a trial with a score that did
    not fail. Completed, pruned and running trials rank; error and diverged ones never do."""
    return score is not None and status not in ("error", "diverged")


# ---- reading (reports, leaderboards) --------------------------------------------------------------

def load_trials(study_dir: str | Path) -> Any:
    """`trials.parquet` as a pyarrow Table."""
    return _read_table(Path(study_dir) / TRIALS_FILE)


def load_epochs(study_dir: str | Path) -> Any:
    """`epochs.parquet` as a pyarrow Table."""
    return _read_table(Path(study_dir) / EPOCHS_FILE)


def _read_table(path: Path, attempts: int = 5) -> Any:
    """Read while a driver may be replacing the file (see the module doc): retry a failed read."""
    import time

    import pyarrow.parquet as pq

    for attempt in range(attempts):
        try:
            return pq.read_table(path)
        except FileNotFoundError:
            raise
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def trial_rows(study_dir: str | Path) -> list[dict[str, Any]]:
    """Trials as plain dicts with `config` decoded from JSON."""
    rows = load_trials(study_dir).to_pylist()
    for row in rows:
        row["config"] = json.loads(row["config"]) if row.get("config") else None
    return rows


def epoch_rows(study_dir: str | Path) -> list[dict[str, Any]]:
    return load_epochs(study_dir).to_pylist()


# ---- helpers -------------------------------------------------------------------------------------

def _field(name: str, kind: Any) -> Any:
    """A column, with its unit in the field's metadata (`unit: fraction (0..1)` for hit rates)."""
    import pyarrow as pa

    unit = stored_unit(name)
    return pa.field(name, kind, metadata={"unit": unit} if unit else None)


def _write_table(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def write_metrics(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One run's `metrics.parquet` (`mtsearch train`): the epoch columns, written atomically."""
    import pyarrow as pa

    rows = list(rows)
    columns = {"epoch": pa.array([int(r["epoch"]) for r in rows], type=pa.int64())}
    for key in EPOCH_METRICS:
        columns[key] = pa.array([_finite(r.get(key)) for r in rows], type=pa.float64())
    _write_table(pa.table(columns), Path(path))


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _cast(value: Any, kind: str | None) -> Any:
    if value is None or kind is None:
        return value
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)
