"""Space and grid files: validation (one `error:` line, exit 2, nothing under trials/), defaults, round trip."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtsearch.errors import InvalidInput
from mtsearch.space import enumerated_points, load_space, space_from_mapping

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "spaces"

GOOD = """\
name: good
base: {model.preset: tiny}
space:
  loss.w_track: {loguniform: [1, 100]}
"""

# (file text, expected piece of the error line): each is refused by `mtsearch run`.
BAD_SPACES = [
    ("space: {loss.w_track: {loguniform: [5, 1]}}",
     "space.loss.w_track: loguniform needs two numbers low < high (got [5, 1])"),
    ("space: {loss.w_trak: {uniform: [1, 2]}}", "space.loss.w_trak: unknown config key; did you mean 'loss.w_track'?"),
    ("space: {loss.w_track: {lognormal: [1, 2]}}", "space.loss.w_track: unknown distribution"),
    ("space: {loss.w_dir: {uniform: [-1, 1]}}", "space.loss.w_dir: must be >= 0 (got -1.0)"),
    ("space: {track.frame_gap: {uniform: [1, 3]}}", "space.track.frame_gap: track.frame_gap takes integers"),
    ("space: {track.frame_gap: {choice: [2, 8]}}", "space.track.frame_gap: track.past_frames: "),
    ("space: {model.branches: {choice: [[track]]}}", "space.model.branches: must include cls"),
    ("space: {model.branches: {choice: [[cls, jump]]}}", "space.model.branches: unknown branch 'jump'"),
    ("space: {data.fps: {choice: []}}", "space.data.fps: choice needs a non-empty list"),
    ("space: {loss.w_dir: {loguniform: [0, 1]}}", "space.loss.w_dir: loguniform needs low > 0"),
    ("space: {optim.lr: {grid: [0.1, 0.2]}}", "space.optim.lr: grid values need search.algorithm: grid"),
    ("space: {}", "space: needs at least one searched key"),
    ("name: ../escape\nspace: {loss.w_dir: {uniform: [0, 1]}}", "name: must be a simple folder name"),
    ("name: /abs\nspace: {loss.w_dir: {uniform: [0, 1]}}", "name: must be a simple folder name"),
    ("metric: val_hit2\nspace: {loss.w_dir: {uniform: [0, 1]}}", "metric: must be an epoch metric"),
    ("mode: maximum\nspace: {loss.w_dir: {uniform: [0, 1]}}",
     "mode: must be min or max; did you mean 'max'? (got 'maximum')"),
    ("mode: maximize\nspace: {loss.w_dir: {uniform: [0, 1]}}",
     "mode: must be min or max; did you mean 'max'? (got 'maximize')"),
    ("serach: {num_samples: 4}\nspace: {loss.w_dir: {uniform: [0, 1]}}", "serach: unknown key; did you mean 'search'?"),
    ("search: {algorithm: bayes}\nspace: {loss.w_dir: {uniform: [0, 1]}}", "search.algorithm: must be one of"),
    ("search: {num_samples: 0}\nspace: {loss.w_dir: {uniform: [0, 1]}}", "search.num_samples: must be >= 1 (got 0)"),
    ("storage: {keep_checkpoints: -1}\nspace: {loss.w_dir: {uniform: [0, 1]}}",
     "storage.keep_checkpoints: must be >= 0 (got -1)"),
    ("scheduler: {type: asha, reduction_factor: 1}\nspace: {loss.w_dir: {uniform: [0, 1]}}",
     "scheduler.reduction_factor: must be > 1"),
    ("base: {optim.epochs: 2}\nscheduler: {grace_period: 5}\nspace: {loss.w_dir: {uniform: [0, 1]}}",
     "scheduler.grace_period: must be <= optim.epochs (2) (got 5)"),
    ("resources: {gpus_per_trial: 1.5}\nspace: {loss.w_dir: {uniform: [0, 1]}}", "resources.gpus_per_trial:"),
    ("base: {device: cuda}\nresources: {gpus_per_trial: 0}\nspace: {loss.w_dir: {uniform: [0, 1]}}",
     "resources.gpus_per_trial: must be > 0 when base.device is cuda"),
    ("base: {device: cuda}\nspace: {loss.w_dir: {uniform: [0, 1]}}",  # auto, on a Ray without GPUs
     "base.device: cuda needs a GPU, and this Ray cluster has none (got 'cuda')"),
    ("resources: {gpus_per_trial: some}\nspace: {loss.w_dir: {uniform: [0, 1]}}",
     "resources.gpus_per_trial: expected a number of GPUs or auto"),
    ("resources: {max_trials_per_gpu: 0}\nspace: {loss.w_dir: {uniform: [0, 1]}}",
     "resources.max_trials_per_gpu: must be >= 1 (got 0)"),
    ("base: {model.preset: huge}\nspace: {loss.w_dir: {uniform: [0, 1]}}", "base.model.preset: must be one of"),
    ("base: {loss.w_trak: 1}\nspace: {loss.w_dir: {uniform: [0, 1]}}", "base.loss.w_trak: unknown config key"),
    ("space: {loss.w_dir: {uniform: [0, 1]}}\nspace: {loss.w_dir: {uniform: [0, 2]}}", "duplicate key 'space'"),
    ("space: !!python/object/apply:os.system ['echo pwned']", "invalid YAML"),
    ("space: {loss.w_dir: {uniform: [0, 1]\n", "invalid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("grid: {model.branches: [[cls]]}", "grid: unknown key; grid files run with `mtsearch ablate`"),
]

BAD_GRIDS = [
    ("grid: {model.branches: []}", "grid.model.branches: an empty factor makes an empty grid"),
    ("grid: {model.branches: [[cls], [cls, dir]]}\nreference: {model.branches: [cls, track]}",
     "reference.model.branches: not one of the grid's values"),
    ("grid: {model.branches: [[cls]]}\nrepeats: 0", "repeats: must be >= 1 (got 0)"),
    ("grid:\n  loss.w_track,loss.w_dir: [[25, 2], [50]]", "grid.loss.w_track,loss.w_dir: each level must list 2 values"),
    ("grid:\n  loss.w_track,loss.w_dir: [[25, 2]]\nreference: {loss.w_track: 25, loss.w_dir: 8}",
     "reference: (loss.w_track, loss.w_dir) is not one of the grid's levels"),
    ("grid: {loss.w_track: [1]}\nreference: {loss.w_dir: 2}", "reference.loss.w_dir: not a grid factor"),
    ("space: {loss.w_track: {uniform: [1, 2]}}", "space: unknown key; space files run with `mtsearch run`"),
    ("grid: {model.branches: [[cls]]}\nsearch: {num_samples: 3}", "search.num_samples: unknown key"),
]


def _cli(tmp_path: Path, command: str, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "mtsearch", command, str(path), "--trials-dir",
                           str(tmp_path / "trials")], capture_output=True, text=True, timeout=60)


def _assert_refused(result: subprocess.CompletedProcess, tmp_path: Path, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'bad.yaml'}: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "trials").exists()


@pytest.mark.parametrize("text,expected", BAD_SPACES)
def test_bad_space_is_one_error_line(tmp_path: Path, text: str, expected: str) -> None:
    _assert_refused(_cli(tmp_path, "run", text), tmp_path, expected)


@pytest.mark.parametrize("text,expected", BAD_GRIDS)
def test_bad_grid_is_one_error_line(tmp_path: Path, text: str, expected: str) -> None:
    _assert_refused(_cli(tmp_path, "ablate", text), tmp_path, expected)


def test_cli_overrides_are_validated(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    for args, expected in [
        (["--num-samples", "0"], "error: --num-samples: must be >= 1 (got 0)"),
        (["--max-concurrent", "0"], "error: --max-concurrent: must be >= 1 (got 0)"),
        (["--name", "a/b"], "error: --name: must be a simple folder name"),
        (["--data", str(tmp_path / "nowhere")], "base.data.root: dataset folder not found"),
    ]:
        result = subprocess.run([sys.executable, "-m", "mtsearch", "run", str(tmp_path / "good.yaml"),
                                 "--trials-dir", str(tmp_path / "trials"), *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert not (tmp_path / "trials").exists()


def test_shipped_spaces_validate() -> None:
    weights = load_space(SPACES / "weights.yaml", "search")
    assert weights.base.model.preset == "tiny" and weights.total_trials >= 12
    assert weights.scheduler.type == "asha"
    # ASHA's first rung falls on an evaluated epoch, so it compares fresh val_hit1 values
    base = weights.base
    assert base.evaluates(weights.scheduler.grace_period) and base.eval.at == (4,)
    assert set(weights.space) == {"loss.w_track", "loss.w_dir"}
    full = load_space(SPACES / "full.yaml", "search")
    assert {"loss.w_track", "loss.w_dir", "track.frame_gap", "data.fps", "model.branches"} <= set(full.space)
    thesis = load_space(SPACES / "thesis-hmdb51.yaml", "search")
    assert thesis.base.data.dataset == "hmdb51" and thesis.base.model.preset == "thesis"
    assert thesis.resources.auto and thesis.resources.max_trials_per_gpu >= 1
    # the thesis space's shapes: one network (loss weights, fps and frame gaps change no tensor)
    from mtsearch.search.packing import shape_label, spec_shapes

    assert [shape_label(cfg) for cfg in spec_shapes(thesis).values()] == ["thesis b4"]
    ablation = load_space(SPACES / "ablation.yaml", "ablation")
    assert ablation.total_trials == 20 and ablation.reference_cell() == "model.branches=cls"
    assert ablation.scheduler.type == "none"
    table = load_space(SPACES / "weights-table.yaml", "ablation")
    cells = {table.cell_of(p) for p in enumerated_points(table)}
    assert cells == {"loss.w_track=25,loss.w_dir=2", "loss.w_track=50,loss.w_dir=8", "loss.w_track=100,loss.w_dir=8"}
    assert table.total_trials == 9 and {p["seed"] for p in enumerated_points(table)} == {0, 1, 2}


def test_defaults_and_as_run_round_trip(tmp_path: Path) -> None:
    spec = space_from_mapping({"space": {"loss": {"w_track": {"loguniform": [1, 100]}},
                                         "model.branches": {"choice": [["cls"], "cls+dir"]}}}, "x.yaml",
                              default_name="x")
    assert spec.name == "x" and spec.metric == "val_hit1" and spec.mode == "max"
    assert spec.search.algorithm == "tpe" and spec.scheduler.type == "asha"
    assert spec.space["model.branches"].values == ("cls", "cls+dir")  # hashable labels for Optuna
    assert spec.trial_config({"model.branches": "cls+dir", "loss.w_track": 3.0}).model.branches == ("cls", "dir")
    path = tmp_path / "space.yaml"
    path.write_text(spec.to_yaml())
    again = load_space(path)
    assert again.identity() == spec.identity()
    loss_spec = space_from_mapping({"metric": "loss", "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}, "y")
    assert loss_spec.mode == "min"


def test_int_bounds_and_grid_cells() -> None:
    spec = space_from_mapping({"space": {"track.frame_gap": {"int": [1, 3]}}}, "x")
    assert spec.space["track.frame_gap"].values == (1, 3) and spec.param_types() == {"track.frame_gap": "int"}
    with pytest.raises(InvalidInput) as err:  # the value in between (2) is checked too: 3*4 >= 13 fails at 4
        space_from_mapping({"space": {"track.frame_gap": {"int": [2, 5]}}}, "x")
    assert err.value.key == "space.track.frame_gap"
    grid = space_from_mapping({"grid": {"model.branches": [["cls"], ["cls", "track"]], "data.fps": [15, 30]},
                               "repeats": 2, "reference": {"model.branches": ["cls"], "data.fps": 30}}, "g")
    points = enumerated_points(grid)
    assert len(points) == grid.total_trials == 8
    assert grid.reference_cell() == "model.branches=cls,data.fps=30"
    assert grid.searched_keys == ["model.branches", "data.fps", "seed"]


def test_grid_file_and_space_file_kinds(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent("""\
        grid: {model.branches: [[cls], [cls, track, dir]]}
        repeats: 3
        reference: {model.branches: cls}
    """))
    spec = load_space(path, "ablation")
    assert spec.kind == "ablation" and spec.is_ablation and spec.is_enumerated and spec.name == "g"
    assert "seed" in spec.param_types()
