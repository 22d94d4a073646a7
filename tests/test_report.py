"""report.py and cli/render.py: leaderboards, ablations and their text on real Parquet studies.

The study builders below write study folders as `mtsearch run | ablate` does (space.yaml, one
trials.parquet and one epochs.parquet with the SPEC columns, an Optuna SQLite study);
test_plots.py, test_cli_results.py and test_ranking.py import them. Their epochs.parquet lacks the
`data_wait` column, as files from before it was added do.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from mtsearch.cli import render
from mtsearch.errors import InvalidInput
from mtsearch.results import ablation, importance, report
from mtsearch.results.stats import NO_DIFFERENCE
from mtsearch.yamlio import dump_yaml

EPOCH_FIELDS = (
    "loss",
    "loss_cls",
    "loss_track",
    "loss_dir",
    "train_hit1",
    "val_hit1",
    "val_hit5",
    "dir_acc",
    "lr",
    "epoch_s",
    "clips_per_s",
)


def _config_json(overrides: dict[str, Any]) -> str:
    from mtsearch.config import TrialConfig

    cfg = TrialConfig.from_mapping(
        {"model.preset": "tiny", "optim.epochs": 3, **overrides}
    ).resolved()
    return json.dumps(cfg.to_dict())


def _trial_schema(params: dict[str, Any], with_cell: bool):
    import pyarrow as pa

    fields = [("trial_id", pa.string()), ("status", pa.string()), ("error", pa.string())]
    fields += [(k, t) for k, t in params.items()]
    fields += [
        ("seed", pa.int64()),
        ("epochs_done", pa.int64()),
        ("best_epoch", pa.int64()),
        ("best_val_hit1", pa.float64()),
        ("best_val_hit5", pa.float64()),
        ("wall_s", pa.float64()),
        ("config", pa.string()),
    ]
    if with_cell:
        fields.append(("cell", pa.string()))
    return pa.schema(fields)


def _epoch_schema():
    import pyarrow as pa

    return pa.schema(
        [("trial_id", pa.string()), ("epoch", pa.int64())]
        + [(k, pa.float64()) for k in EPOCH_FIELDS]
    )


def _epoch_rows(
    trial_id: str, best: float | None, epochs: int, diverged: bool = False
) -> list[dict]:
    """Val metric best-0.1, best, best-0.02 (final) on epochs 1..3; loss falling."""
    rows = []
    offsets = [-0.1, 0.0, -0.02]
    for e in range(1, epochs + 1):
        val = None if best is None else round(best + offsets[(e - 1) % 3], 6)
        loss = float("nan") if diverged and e == epochs else 3.0 / e
        rows.append(
            {
                "trial_id": trial_id,
                "epoch": e,
                "loss": loss,
                "loss_cls": 2.0 / e,
                "loss_track": 0.05 / e,
                "loss_dir": 0.6 / e,
                "train_hit1": 0.2 * e,
                "val_hit1": val,
                "val_hit5": None if val is None else min(1.0, val + 0.3),
                "dir_acc": 0.5 + 0.05 * e,
                "lr": 2e-4,
                "epoch_s": 1.5,
                "clips_per_s": 40.0,
            }
        )
    return rows


def write_grid_study(
    root: Path,
    cells: dict[str, dict[int, float]],
    name: str = "abl",
    reference: Any = None,
    extra: list[dict] | None = None,
) -> Path:
    """A grid study over model.branches: cells maps a branch label to {seed: best val_hit1}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    study = root / name
    study.mkdir(parents=True)
    labels = list(cells)
    spec = {
        "name": name,
        "metric": "val_hit1",
        "mode": "max",
        "base": {"model.preset": "tiny"},
        "grid": {"model.branches": [label.split("+") for label in labels]},
        "repeats": max(len(v) for v in cells.values()),
        "reference": reference
        if reference is not None
        else {"model.branches": labels[0].split("+")},
    }
    (study / "space.yaml").write_text(dump_yaml(spec))
    rows, epochs, n = [], [], 0
    for label, by_seed in cells.items():
        for seed, best in by_seed.items():
            tid = f"t{n:03d}"
            rows.append(
                {
                    "trial_id": tid,
                    "status": "completed",
                    "error": None,
                    "model.branches": label,
                    "seed": seed,
                    "epochs_done": 3,
                    "best_epoch": 2,
                    "best_val_hit1": best,
                    "best_val_hit5": min(1.0, best + 0.3),
                    "wall_s": 10.0 + n,
                    "config": _config_json({"model.branches": label, "seed": seed}),
                    "cell": f"model.branches={label}",
                }
            )
            epochs += _epoch_rows(tid, best, 3)
            n += 1
    rows += extra or []
    schema = _trial_schema({"model.branches": pa.string()}, with_cell=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), study / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(epochs, schema=_epoch_schema()), study / "epochs.parquet")
    return study


SEARCH_TRIALS = [  # trial_id, status, w_track, w_dir, best val_hit1, epochs_done
    ("a0", "completed", 25.0, 2.0, 0.52, 3),
    ("a1", "completed", 3.0, 0.8, 0.31, 3),
    ("a2", "completed", 60.0, 8.0, 0.61, 3),
    ("a3", "pruned", 1.5, 15.0, 0.20, 1),
    ("a4", "completed", 10.0, 1.0, 0.44, 3),
    ("a5", "error", 90.0, 0.6, None, 0),
    ("a6", "completed", 40.0, 4.0, 0.58, 3),
    ("a7", "completed", 5.0, 12.0, 0.35, 3),
]


def write_search_study(
    root: Path,
    name: str = "weights",
    optuna_db: bool = True,
    trials: list[tuple] | None = None,
    metric: str = "val_hit1",
    mode: str = "max",
) -> Path:
    """A search over loss.w_track × loss.w_dir with a pruned and an error trial, plus optuna.db."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    trials = SEARCH_TRIALS if trials is None else trials
    study = root / name
    study.mkdir(parents=True)
    spec = {
        "name": name,
        "metric": metric,
        "mode": mode,
        "base": {"model.preset": "tiny"},
        "search": {"algorithm": "tpe", "num_samples": len(trials), "max_concurrent": 2, "seed": 0},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        "space": {
            "loss.w_track": {"loguniform": [1, 100]},
            "loss.w_dir": {"loguniform": [0.5, 20]},
        },
    }
    (study / "space.yaml").write_text(dump_yaml(spec))
    rows, epochs = [], []
    for i, (tid, status, wt, wd, best, done) in enumerate(trials):
        rows.append(
            {
                "trial_id": tid,
                "status": status,
                "error": "RuntimeError: CUDA out of memory" if status == "error" else None,
                "loss.w_track": wt,
                "loss.w_dir": wd,
                "seed": 0,
                "epochs_done": done,
                "best_epoch": 2 if best is not None else None,
                "best_val_hit1": best,
                "best_val_hit5": None if best is None else min(1.0, best + 0.3),
                "wall_s": 30.0 + i,
                "config": _config_json({"loss.w_track": wt, "loss.w_dir": wd}),
            }
        )
        epochs += _epoch_rows(tid, best, done)
    schema = _trial_schema(
        {"loss.w_track": pa.float64(), "loss.w_dir": pa.float64()}, with_cell=False
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), study / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(epochs, schema=_epoch_schema()), study / "epochs.parquet")
    if optuna_db:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ostudy = optuna.create_study(
            study_name=name, direction="maximize", storage=f"sqlite:///{study / 'optuna.db'}"
        )
        dists = {
            "loss.w_track": optuna.distributions.FloatDistribution(1, 100, log=True),
            "loss.w_dir": optuna.distributions.FloatDistribution(0.5, 20, log=True),
        }
        for _tid, status, wt, wd, best, _ in trials:
            state = {
                "completed": optuna.trial.TrialState.COMPLETE,
                "pruned": optuna.trial.TrialState.PRUNED,
                "error": optuna.trial.TrialState.FAIL,
            }[status]
            ostudy.add_trial(
                optuna.trial.create_trial(
                    params={"loss.w_track": wt, "loss.w_dir": wd},
                    distributions=dists,
                    state=state,
                    value=best if state == optuna.trial.TrialState.COMPLETE else None,
                )
            )
    return study


TWO_BY_TWO = {"cls": {0: 0.40, 1: 0.50}, "cls+track": {0: 0.55, 1: 0.61}}


# ---- loading -----------------------------------------------------------------------------------


def test_missing_study_folder_and_trials_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such study folder") as err:
        report.load_study(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="trials.parquet"):
        report.load_study(tmp_path / "empty")


def test_bad_metric_in_space_file(tmp_path: Path) -> None:
    study = write_search_study(tmp_path, optuna_db=False)
    (study / "space.yaml").write_text("name: weights\nmetric: accuracy\nmode: max\n")
    with pytest.raises(InvalidInput, match="metric"):
        report.load_study(study)


def test_study_without_space_file(tmp_path: Path) -> None:
    study = write_search_study(tmp_path, optuna_db=False)
    (study / "space.yaml").unlink()
    with pytest.raises(InvalidInput, match="file not found") as err:
        report.load_study(study)
    assert str(study / "space.yaml") in str(err.value)


def test_grid_study_reads_space_and_epochs(tmp_path: Path) -> None:
    loaded = report.load_study(write_grid_study(tmp_path, TWO_BY_TWO))
    assert loaded.name == "abl" and loaded.metric == "val_hit1" and loaded.mode == "max"
    assert loaded.params == ["model.branches"] and loaded.is_ablation
    assert [t["trial_id"] for t in loaded.trials] == ["t000", "t001", "t002", "t003"]
    assert loaded.trials[0]["config"]["model"]["branches"] == ["cls"]  # decoded once, by the store
    assert [e for e, _ in loaded.curve("t000")] == [1, 2, 3]


def test_epochs_without_a_newer_column(tmp_path: Path) -> None:
    """An epochs.parquet from before `data_wait` existed: that curve is empty, the rest reads."""
    study = report.load_study(write_search_study(tmp_path, optuna_db=False))
    assert study.curve("a0", "data_wait") == []
    assert [v for _, v in study.curve("a0")] == pytest.approx([0.42, 0.52, 0.50])
    assert report.leaderboard(study).rows[0]["trial_id"] == "a2"


# ---- leaderboard -------------------------------------------------------------------------------


def test_leaderboard_ranks_scored_trials_and_lists_failures_apart(tmp_path: Path) -> None:
    study = report.load_study(write_search_study(tmp_path))
    board = report.leaderboard(study)
    assert [r["trial_id"] for r in board.rows] == ["a2", "a6", "a0", "a4", "a7", "a1", "a3"]
    assert [r["rank"] for r in board.rows] == list(range(1, 8))
    # ranked by the final score (what Optuna was told); the best epoch is its own column
    assert board.rows[0]["val_hit1"] == pytest.approx(0.59) and board.rows[0]["best_val_hit1"] == 0.61
    assert board.rows[0]["loss.w_track"] == 60.0
    assert board.rows[-1]["status"] == "pruned"
    assert [u["trial_id"] for u in board.unranked] == ["a5"]
    assert "out of memory" in board.unranked[0]["error"]
    assert board.counts == {"completed": 6, "pruned": 1, "error": 1}
    top = report.leaderboard(study, top=3)
    assert len(top.rows) == 3 and top.total_ranked == 7
    with pytest.raises(InvalidInput):
        report.leaderboard(study, top=0)


def test_leaderboard_min_mode_metric_from_epochs(tmp_path: Path) -> None:
    study = report.load_study(
        write_search_study(tmp_path, optuna_db=False, metric="loss", mode="min")
    )
    board = report.leaderboard(study)
    # loss is 3/e: trials with 3 epochs reach 1.0, the pruned one (1 epoch) 3.0
    assert board.rows[0]["loss"] == pytest.approx(1.0)
    assert board.rows[-1]["trial_id"] == "a3" and board.rows[-1]["loss"] == pytest.approx(3.0)


def test_ranked_trial_and_config(tmp_path: Path) -> None:
    study = report.load_study(write_search_study(tmp_path, optuna_db=False))
    trial = report.ranked_trial(study, 2)
    assert trial["trial_id"] == "a6"
    cfg = report.trial_config(study, trial)
    assert cfg.loss.w_track == 40.0 and cfg.model.preset == "tiny"
    with pytest.raises(InvalidInput, match="between 1 and 7"):
        report.ranked_trial(study, 8)


def test_leaderboard_renderings(tmp_path: Path) -> None:
    board = report.leaderboard(
        report.load_study(write_search_study(tmp_path, optuna_db=False)), top=4
    )
    parsed = json.loads(render.leaderboard_json(board))
    assert parsed["rows"][0]["trial_id"] == "a2" and parsed["metric"] == "val_hit1"
    lines = render.leaderboard_csv(board).splitlines()
    assert lines[0].split(",")[:5] == ["rank", "trial_id", "status", "val_hit1", "best_val_hit1"]
    assert "loss.w_track" in lines[0] and len(lines) == 5
    md = render.leaderboard_markdown(board)
    assert (
        "| rank | trial_id |" in md and "| 1 | a2 | completed | 59.0 | 61.0 |" in md
    )  # percent points


# ---- ablation ----------------------------------------------------------------------------------


def test_ablation_two_cells_two_seeds_by_hand(tmp_path: Path) -> None:
    result = ablation.ablation(report.load_study(write_grid_study(tmp_path, TWO_BY_TWO)))
    assert result.reference == "model.branches=cls"
    assert result.factors == ["model.branches"]
    ref, other = result.cells
    assert ref.is_reference and ref.n == 2 and ref.seeds == [0, 1]
    assert ref.best.mean == pytest.approx(0.45)
    assert ref.best.sd == pytest.approx(math.sqrt(0.005))
    assert ref.best.half_width == pytest.approx(12.7062 * math.sqrt(0.005) / math.sqrt(2), abs=1e-4)
    assert ref.final.mean == pytest.approx(0.43)  # last evaluated epoch: best - 0.02
    assert other.best.mean == pytest.approx(0.58)
    # paired deltas: 0.15 and 0.11
    assert other.delta_best.n == 2 and other.delta_best.mean == pytest.approx(0.13)
    assert other.delta_best.sd == pytest.approx(math.sqrt(0.0008))
    assert other.delta_best.half_width == pytest.approx(
        12.7062 * math.sqrt(0.0008) / math.sqrt(2), abs=1e-4
    )
    assert other.verdict == "no significant difference"
    assert "no significant difference" in result.reading and "model.branches=cls+track" in result.reading


def test_ablation_paired_verdicts_and_exclusions(tmp_path: Path) -> None:
    cells = {
        "cls": {0: 0.40, 1: 0.50, 2: 0.45},
        "cls+track+dir": {0: 0.50, 1: 0.61, 2: 0.54},  # +0.10, +0.11, +0.09: consistent gain
        "cls+dir": {0: 0.30, 1: 0.41, 2: 0.36},  # -0.10, -0.09, -0.09
        "cls+track": {0: 0.45, 1: 0.45, 2: 0.47},
    }  # +0.05, -0.05, +0.02
    error_row = {
        "trial_id": "x9",
        "status": "diverged",
        "error": "loss is nan",
        "model.branches": "cls+dir",
        "seed": 3,
        "epochs_done": 1,
        "best_epoch": None,
        "best_val_hit1": None,
        "best_val_hit5": None,
        "wall_s": 2.0,
        "config": _config_json({"model.branches": "cls+dir", "seed": 3}),
        "cell": "model.branches=cls+dir",
    }
    result = ablation.ablation(
        report.load_study(
            write_grid_study(
                tmp_path, cells, reference={"model.branches": ["cls"]}, extra=[error_row]
            )
        )
    )
    order = [c.cell for c in result.cells]
    assert order == [
        "model.branches=cls",
        "model.branches=cls+track+dir",
        "model.branches=cls+track",
        "model.branches=cls+dir",
    ]  # reference first, then by mean
    verdicts = {c.cell: c.verdict for c in result.cells}
    assert verdicts["model.branches=cls+track+dir"] == "helps"
    assert verdicts["model.branches=cls+dir"] == "hurts"
    assert verdicts["model.branches=cls+track"] == "no significant difference"
    bad = next(c for c in result.cells if c.cell == "model.branches=cls+dir")
    assert bad.n == 3 and bad.not_counted == {"diverged": 1}
    assert result.reading.startswith("Against the reference model.branches=cls")
    # Holm over the 3 comparisons: the helping cell's p doubled (second smallest), its CI widened to
    # match (97.5% alone); the plain 95% interval was +7.5 to +12.5
    assert ("helps: model.branches=cls+track+dir (+10.0 points, 95% CI +6.4 to +13.6, p = 0.0033, "
            "Holm p = 0.0066)") in result.reading, result.reading
    assert "Holm over the table's 3 comparisons; CIs adjusted to match" in result.reading


def test_ablation_renderings(tmp_path: Path) -> None:
    result = ablation.ablation(report.load_study(write_grid_study(tmp_path, TWO_BY_TWO)))
    md = render.ablation_markdown(result)
    assert "| model.branches | n |" in md and "| cls (ref) | 2 | 45.0 ± 7.1 |" in md
    assert "Δ best" not in md  # biased toward the noisier cell: only with --optimistic
    assert "| 0.097 / 0.097 | no significant difference |" in md  # p and Holm p (one comparison)
    optimistic = render.ablation_markdown(result, optimistic=True)
    assert "[-12.4, +38.4]" in optimistic  # Δ best 95% CI in points: 13 ± 25.41
    assert "Δ best epoch vs ref (%) (optimistic: biased toward the noisier cell)" in optimistic
    assert md.rstrip().endswith(".")
    rows = render.ablation_csv(result).splitlines()
    assert rows[0].startswith("cell,is_reference,n,seeds,best_mean")
    assert len(rows) == 3
    parsed = json.loads(render.ablation_json(result))
    assert parsed["cells"][1]["delta_best"]["mean"] == pytest.approx(0.13)
    assert parsed["cells"][0]["delta_best"] is None


def test_ablation_shows_the_tracking_gain_of_cells_with_tracking(tmp_path: Path) -> None:
    """issue 13: each run's last evaluated track_gain, summarised per cell; `–` without tracking."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    study_dir = write_grid_study(tmp_path, TWO_BY_TWO)
    table = pq.read_table(study_dir / "epochs.parquet").to_pylist()
    trials = {r["trial_id"]: r["model.branches"] for r in pq.read_table(study_dir / "trials.parquet").to_pylist()}
    gains = iter([1.2, 1.8, 9.0, 9.0])  # per track run: epoch 2 then epoch 3 (the last) counts
    last = {}
    for row in table:
        if "track" in trials[row["trial_id"]] and row["epoch"] >= 2:
            row["track_gain"] = next(gains) if row["epoch"] == 3 else 0.5
            last[row["trial_id"]] = row["track_gain"]
    schema = _epoch_schema().append(pa.field("track_gain", pa.float64()))
    pq.write_table(pa.Table.from_pylist(table, schema=schema), study_dir / "epochs.parquet")
    result = ablation.ablation(report.load_study(study_dir))
    assert result.tracking_gain == "track_gain"
    ref, track = result.cells
    assert ref.tracking.n == 0 and track.tracking.n == 2
    assert track.tracking.mean == pytest.approx(sum(last.values()) / 2)
    header, rows = render.ablation_cells(result)
    assert "track gain mean ± sd" in header
    column = header.index("track gain mean ± sd")
    assert rows[0][column] == "–" and rows[1][column].startswith(f"{track.tracking.mean:.2f} ± ")
    assert "tracking_mean" in render.ablation_csv(result).splitlines()[0]


# ---- showing numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        (None, {}, "–"),
        (3, {}, "3"),  # ints (ranks, seeds, epochs) as they are
        ("cls+track", {}, "cls+track"),
        (float("nan"), {}, "nan"),
        (60.0, {}, "60"),
        (0.00123456, {}, "0.001235"),  # 4 significant digits by default
        (0.61, {"scale": 100.0}, "61.0"),  # percent points: one decimal
        (0.13, {"scale": 100.0, "signed": True}, "+13.0"),
        (1.23456, {"digits": 3}, "1.23"),
        (-0.004, {"digits": 3, "signed": True}, "-0.004"),
        (30.0, {"decimals": 1}, "30.0"),  # seconds
        (0.12345, {"decimals": 3}, "0.123"),
    ],
)
def test_fmt_number(value: Any, kwargs: dict[str, Any], expected: str) -> None:
    assert report.fmt_number(value, **kwargs) == expected


# ---- importances -------------------------------------------------------------------------------


def test_param_importances_from_optuna_db(tmp_path: Path) -> None:
    imps = importance.param_importances(report.load_study(write_search_study(tmp_path)))
    assert imps.reason is None and imps.completed_trials == 6
    assert set(imps.values) == {"loss.w_track", "loss.w_dir"}
    assert sum(imps.values.values()) == pytest.approx(1.0)


def test_param_importances_too_few_or_missing(tmp_path: Path) -> None:
    few = write_search_study(tmp_path, name="few", trials=SEARCH_TRIALS[:3])
    imps = importance.param_importances(report.load_study(few))
    assert imps.values == {} and "at least 4 completed trials (has 3)" in imps.reason
    none = write_search_study(tmp_path, name="nodb", optuna_db=False)
    assert "no Optuna study" in importance.param_importances(report.load_study(none)).reason


def test_the_leaderboard_ranks_by_the_final_score_optuna_was_told(tmp_path: Path) -> None:
    """A trial whose best epoch is higher but whose final epoch is lower ranks below the other:
    the leaderboard, export's rank 1 and Optuna see one score."""
    trials = [("b1", "completed", 10.0, 1.0, 0.70, 3), ("b2", "completed", 20.0, 2.0, 0.65, 3)]
    study = report.load_study(write_search_study(tmp_path, trials=trials, optuna_db=False))
    # epochs: best at epoch 2, and _epoch_rows ends each curve 0.02 below its best; push b1's end down
    study.epochs["b1"][-1]["val_hit1"] = 0.40
    board = report.leaderboard(study)
    assert [r["trial_id"] for r in board.rows] == ["b2", "b1"]
    assert board.rows[1]["best_val_hit1"] == pytest.approx(0.70) and board.rows[1]["val_hit1"] == pytest.approx(0.40)


def test_a_failed_run_never_makes_its_cell_look_better():
    """The same table with and without one failed run of a cell, over many random tables (Hit@1 on
    50 videos): its "helps" p never falls and its "hurts" p never rises, so a failure can only
    turn a verdict against its cell. Leaving failed runs out, as before, judged a cell on its
    survivors."""
    rng = random.Random(3)
    hit = lambda v: min(1.0, max(0.0, round(v * 50) / 50))  # noqa: E731
    order = {"helps": 2, NO_DIFFERENCE: 1, "too few pairs": 1, "hurts": 0}
    changed = 0
    for draw in range(800):
        seeds = rng.choice([3, 4, 5, 6])
        shared = [rng.gauss(0.0, 0.05) for _ in range(seeds)]
        gap = rng.choice([-0.06, -0.02, 0.0, 0.02, 0.06])
        ref = {s: hit(0.5 + shared[s] + rng.gauss(0.0, 0.03)) for s in range(seeds)}
        cell = {s: hit(0.5 + gap + shared[s] + rng.gauss(0.0, 0.03)) for s in range(seeds)}
        other = {s: hit(0.5 + shared[s] + rng.gauss(0.0, 0.03)) for s in range(seeds)}
        lost = rng.randrange(seeds)
        ref_failed = frozenset({rng.randrange(seeds)}) if rng.random() < 0.3 else frozenset()
        reference = ablation.CellScores(ref, ref_failed)
        before = ablation.compare_cells(reference, {"a": ablation.CellScores(cell), "b": ablation.CellScores(other)}, "max")
        after = ablation.compare_cells(
            reference, {"a": ablation.CellScores({**cell, lost: None}, frozenset({lost})),
                        "b": ablation.CellScores(other)}, "max")
        a0, a1 = before["a"], after["a"]
        assert order[a1.verdict] <= order[a0.verdict], (draw, a0, a1)
        if a0.p is not None and a1.p is not None:
            helped_before = a0.mean is not None and a0.mean > 0
            helped_after = a1.mean is not None and a1.mean > 0
            if helped_before and helped_after:
                assert a1.p >= a0.p - 1e-12, (draw, a0, a1)
            changed += a1.verdict != a0.verdict
    assert changed > 10


def test_equal_paired_differences_of_a_stepped_metric_get_no_verdict():
    """Hit@1 on 50 videos: the cell one video ahead on each of 3 seeds. The differences are all
    equal, so their sd is 0 and the old table printed a zero-width CI and "helps"; the spread is
    now never below what rounding to the step gives."""
    reference = ablation.CellScores({0: 0.50, 1: 0.56, 2: 0.44})
    ahead = ablation.CellScores({0: 0.52, 1: 0.58, 2: 0.46})
    (result,) = ablation.compare_cells(reference, {"a": ahead}, "max").values()
    assert result.verdict == NO_DIFFERENCE and result.interval.low < 0 < result.interval.high
    clearly = ablation.CellScores({0: 0.70, 1: 0.74, 2: 0.66})  # +0.20, +0.18, +0.22
    (result,) = ablation.compare_cells(reference, {"a": clearly}, "max").values()
    assert result.verdict == "helps" and result.interval.low > 0


def test_holm_over_a_tables_comparisons():
    """Seven cells: one clearly better, six equal to the reference. Alone, each comparison's p is
    what it is; the verdict reads its Holm-adjusted p, shown beside it."""
    rng = random.Random(11)
    reference = ablation.CellScores({s: 0.5 + 0.01 * s for s in range(5)})
    cells = {f"c{i}": ablation.CellScores({s: 0.5 + 0.01 * s + rng.gauss(0, 0.01) for s in range(5)})
             for i in range(6)}
    cells["better"] = ablation.CellScores({s: 0.6 + 0.01 * s + rng.gauss(0, 0.005) for s in range(5)})
    out = ablation.compare_cells(reference, cells, "max", metric="loss")
    assert out["better"].verdict == "helps"
    ranked = sorted(out.values(), key=lambda c: c.p)
    assert ranked[0].p_holm == pytest.approx(min(1.0, 7 * ranked[0].p))
    assert all(c.p_holm >= c.p for c in out.values())
