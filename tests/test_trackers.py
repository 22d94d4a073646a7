"""A study in the trackers researchers use, read back with their own readers: TensorBoard's
EventAccumulator and MLflow's client on a local sqlite store. Every value is compared with the
Parquet files; exporting twice changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mtsearch.cli import main
from mtsearch.metrics import EPOCH_METRICS
from mtsearch.results.report import load_study, trial_config


def _studies(root: Path) -> list[Path]:
    from test_report import TWO_BY_TWO, write_grid_study, write_search_study

    return [write_search_study(root), write_grid_study(root, TWO_BY_TWO)]


def _expected(study_dir: Path) -> dict[str, dict[str, dict[int, float]]]:
    """trial_id -> metric -> {epoch: value}, from epochs.parquet."""
    study = load_study(study_dir)
    return {str(t["trial_id"]): {m: {int(r["epoch"]): float(r[m]) for r in study.epochs.get(str(t["trial_id"]), [])
                                     if isinstance(r.get(m), (int, float))}
                                 for m in EPOCH_METRICS}
            for t in study.trials}


def test_tensorboard_holds_every_trial_its_scalars_and_hparams(tmp_path: Path, capsys) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    for study_dir in _studies(tmp_path / "trials"):
        study = load_study(study_dir)
        for _ in range(2):  # exporting again rewrites, never duplicates
            assert main(["export", str(study_dir), "--to", "tensorboard", str(tmp_path / "tb")]) == 0
        root = tmp_path / "tb" / study.name
        assert "tensorboard --logdir" in capsys.readouterr().out
        assert sorted(p.name for p in root.iterdir()) == sorted(["_study", *(str(t["trial_id"]) for t in study.trials)])
        for trial_id, metrics in _expected(study_dir).items():
            assert len(list((root / trial_id).glob("events.*"))) == 1
            acc = EventAccumulator(str(root / trial_id))
            acc.Reload()
            for metric, values in metrics.items():
                if values:
                    got = {e.step: e.value for e in acc.Scalars(metric)}
                    assert got == pytest.approx(values), (trial_id, metric)
            content = acc.PluginTagToContent("hparams")
            start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
            trial = next(t for t in study.trials if str(t["trial_id"]) == trial_id)
            hparams = start.session_start_info.hparams
            assert hparams["status"].string_value == trial["status"]
            for key in study.params:
                value = hparams[key]
                if isinstance(trial[key], (int, float)):
                    assert value.number_value == pytest.approx(trial[key])
                else:
                    assert value.string_value == str(trial[key])
            if study.is_ablation:
                assert hparams["cell"].string_value == trial["cell"]
            end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
            want = api_pb2.STATUS_FAILURE if trial["status"] in ("error", "diverged") else api_pb2.STATUS_SUCCESS
            assert end.session_end_info.status == want
        experiment = EventAccumulator(str(root / "_study"))
        experiment.Reload()
        data = plugin_data_pb2.HParamsPluginData.FromString(
            experiment.PluginTagToContent("hparams")["_hparams_/experiment"])
        assert [m.name.tag for m in data.experiment.metric_infos] == [study.metric, "test_hit1"]


def test_mlflow_holds_a_parent_and_one_child_per_trial(tmp_path: Path, capsys) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study_dir = _studies(tmp_path / "trials")[0]
    study = load_study(study_dir)
    for _ in range(2):  # again: the same runs, updated
        assert main(["export", str(study_dir), "--to", "mlflow", uri]) == 0
    assert "mlflow ui --backend-store-uri" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study.name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("mtsearch.kind") == "study"]
    assert len(parents) == 1 and len(runs) == 1 + len(study.trials)
    parent = parents[0]
    assert parent.data.tags["mtsearch.metric"] == "val_hit1" and parent.data.tags["mtsearch.mode"] == "max"
    assert parent.data.tags["mtsearch.selection"] == "val"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["space.yaml"]
    assert (tmp_path / "mlruns").is_dir()  # artifacts beside the sqlite database, not in the cwd
    children = {r.data.tags["mtsearch.trial_id"]: r for r in runs if r is not parent}
    status = {"completed": "FINISHED", "pruned": "KILLED", "error": "FAILED"}
    expected = _expected(study_dir)
    for trial in study.trials:
        run = children[str(trial["trial_id"])]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == status[trial["status"]]
        assert (run.data.tags.get("pruned") == "true") is (trial["status"] == "pruned")
        assert run.data.tags.get("error") == trial["error"]
        config = trial_config(study, trial).to_flat()
        assert run.data.params == {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
                                   for k, v in config.items()}
        for metric, values in expected[str(trial["trial_id"])].items():
            history = client.get_metric_history(run.info.run_id, metric)
            assert {m.step: m.value for m in history} == pytest.approx(values), metric
            assert len(history) == len(values)  # exported twice, logged once


@pytest.mark.parametrize(("tracker", "extra"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_extra_is_one_error_line(tmp_path: Path, tracker: str, extra: str) -> None:
    study_dir = _studies(tmp_path / "trials")[0]
    code = (f"import sys; sys.modules[{extra!r}] = None\n"
            "from mtsearch.cli import main\n"
            f"sys.exit(main(['export', {str(study_dir)!r}, '--to', {tracker!r}, {str(tmp_path / 'out')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"mtsearch[{extra}]" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_search_mirrors_its_rows_live_and_a_dead_server_only_warns(tmp_path: Path, ray_address: str) -> None:
    """`storage.mirror` copies each epoch as it lands; a mirror whose server is down warns once
    and the search finishes with every row in Parquet."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_search import make_fit

    from mtsearch.search.driver import run_search
    from mtsearch.space import space_from_mapping

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = space_from_mapping({
        "name": "live", "base": {"optim.epochs": 3}, "scheduler": {"type": "none"},
        "search": {"algorithm": "random", "num_samples": 2, "max_concurrent": 2, "seed": 0},
        "space": {"loss.w_track": {"uniform": [5, 40]}},
        "storage": {"mirror": ["tensorboard", "mlflow"], "tensorboard_dir": str(tmp_path / "tb"),
                    "mlflow_uri": uri}}, "live.yaml")
    logs = tmp_path / "logs"
    logs.mkdir()
    said: list[str] = []
    outcome = run_search(spec, tmp_path / "trials", address=ray_address, trainer=make_fit(logs),
                         log=said.append)
    assert not outcome.interrupted and not [line for line in said if "mirror" in line], said
    study = load_study(outcome.study_dir)
    expected = _expected(outcome.study_dir)
    for trial in study.trials:
        acc = EventAccumulator(str(tmp_path / "tb" / "live" / str(trial["trial_id"])))
        acc.Reload()
        assert {e.step: e.value for e in acc.Scalars("val_hit1")} == pytest.approx(
            expected[str(trial["trial_id"])]["val_hit1"])
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    children = [r for r in runs if "mtsearch.trial_id" in r.data.tags]
    assert len(runs) == 3 and {r.info.status for r in children} == {"FINISHED"}
    for run in children:
        history = client.get_metric_history(run.info.run_id, "val_hit1")
        assert {m.step: m.value for m in history} == pytest.approx(expected[run.data.tags["mtsearch.trial_id"]]["val_hit1"])

    dead = space_from_mapping({**spec.to_dict(), "name": "dead",
                               "storage": {"mirror": ["mlflow"], "mlflow_uri": "http://127.0.0.1:9"}}, "dead.yaml")
    said.clear()
    outcome = run_search(dead, tmp_path / "trials", address=ray_address, trainer=make_fit(logs),
                         log=said.append)
    warnings = [line for line in said if "mirror" in line]
    assert not outcome.interrupted and len(warnings) == 1 and "mlflow mirror failed" in warnings[0], said
    assert len(load_study(outcome.study_dir).trials) == 2


def test_a_mirror_without_its_extra_is_refused_before_the_search(tmp_path: Path) -> None:
    """`run` refuses a mirror whose extra is missing, before Ray or the study folder; reading a
    study that mirrored (report, on a machine without the extra) still works."""
    space = tmp_path / "m.yaml"
    space.write_text("name: m\nbase: {optim.epochs: 1}\nspace: {loss.w_dir: {uniform: [0, 1]}}\n"
                     "storage: {mirror: [mlflow], mlflow_uri: 'sqlite:///x.db'}\n")
    code = ("import sys; sys.modules['mlflow'] = None\n"
            "from mtsearch.cli import main\n"
            f"sys.exit(main(['run', {str(space)!r}, '--trials-dir', {str(tmp_path / 'trials')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "storage.mirror" in lines[0] and "mtsearch[mlflow]" in lines[0]
    assert not (tmp_path / "trials").exists()
    from mtsearch.space import load_space

    assert load_space(space).storage.mirror == ("mlflow",)
