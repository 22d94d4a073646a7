"""A study in MLflow: one parent run for the study and one nested child run per trial.

The parent carries the study's name, metric, mode and selection protocol as tags and its
`space.yaml` as an artifact. A child carries the trial's resolved config as dotted params, every
epoch metric at step = epoch, and a status MLflow shows as it should: completed -> FINISHED,
pruned -> KILLED (tagged `pruned`), error or diverged -> FAILED with the error as a tag. The result
card goes on the exported winner's run, and a finished `confirm` race is a child of the parent.

Runs are keyed by tags (`mtsearch.study`, `mtsearch.trial_id`), so exporting twice, or after
`--resume` extended the study, updates the runs it made before: no duplicates, and a metric step
already logged is not logged again. Needs the optional extra `mtsearch[mlflow]`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtsearch.errors import InvalidInput
from mtsearch.metrics import EPOCH_METRICS
from mtsearch.results.report import Study, trial_config

STUDY_TAG, TRIAL_TAG, KIND_TAG = "mtsearch.study", "mtsearch.trial_id", "mtsearch.kind"
PARENT_TAG = "mlflow.parentRunId"
STATUS = {"completed": "FINISHED", "pruned": "KILLED", "error": "FAILED", "diverged": "FAILED",
          "running": "RUNNING"}
BATCH = 900  # metrics per log_batch call (MLflow takes up to 1000)


@dataclass
class MlflowExport:
    experiment_id: str
    parent_run_id: str
    trial_runs: dict[str, str]  # trial_id -> run_id


def require_mlflow() -> None:
    """One `error:` line naming the extra when MLflow is not installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise InvalidInput(None, "--to mlflow", "needs MLflow: pip install 'mtsearch[mlflow]'") from None


def export_mlflow(study: Study, uri: str, race: Mapping[str, Any] | None = None,
                  race_file: Path | None = None) -> MlflowExport:
    """Create or update the study's runs in the tracking store at `uri`; `race` (and the file it
    was read from) is a finished `mtsearch confirm` race of the study."""
    require_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = study_experiment(client, study.name, uri)
    parent = parent_run(client, experiment_id, study.name, {
        "metric": study.metric, "mode": study.mode, "selection": study.selection,
        "study_kind": "ablation" if study.is_ablation else "search", "path": str(study.path.resolve())},
        study.path / "space.yaml")
    runs: dict[str, str] = {}
    for trial in study.trials:
        trial_id = str(trial.get("trial_id"))
        runs[trial_id] = _export_trial(client, experiment_id, parent, study, trial)
    _attach_card(client, study, runs)
    if race is not None:
        _race_run(client, experiment_id, parent, study, race, race_file)
    client.set_terminated(parent, "FINISHED")
    return MlflowExport(experiment_id, parent, runs)


def study_experiment(client: Any, name: str, uri: str) -> str:
    """The MLflow experiment named after the study, made when there is none. With a local sqlite
    store its artifacts go beside the database (`mlruns/` there), not into the current folder."""
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _find(client: Any, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment_id], filter_string=query, max_results=2)
    return found[0].info.run_id if found else None


def _run(client: Any, experiment_id: str, tags: dict[str, str], name: str) -> str:
    """The run with these tags, created when there is none yet."""
    run_id = _find(client, experiment_id, tags)
    if run_id is None:
        run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    return run_id


def parent_run(client: Any, experiment_id: str, study: str, tags: Mapping[str, str], space: Path) -> str:
    """The study's parent run (found by its tags, else made), tagged and holding `space.yaml`."""
    run_id = _run(client, experiment_id, {STUDY_TAG: study, KIND_TAG: "study"}, study)
    for key, value in tags.items():
        client.set_tag(run_id, f"mtsearch.{key}", value)
    if space.exists() and not client.list_artifacts(run_id):
        client.log_artifact(run_id, str(space))
    return run_id


def trial_run(client: Any, experiment_id: str, parent: str, study: str, trial_id: str) -> str:
    """A trial's run, nested under the study's, found by its tags or made."""
    return _run(client, experiment_id, {STUDY_TAG: study, TRIAL_TAG: trial_id, PARENT_TAG: parent}, trial_id)


def config_params(config: Any, skip: Mapping[str, str] | None = None) -> list[Any]:
    """A trial's resolved config as MLflow params (dotted keys; those in `skip` left out)."""
    from mlflow.entities import Param

    return [Param(k, _text(v)) for k, v in config.to_flat().items() if k not in (skip or {})]


def finish_trial_run(client: Any, run_id: str, status: str, error: str | None) -> None:
    """The status MLflow shows: FINISHED, KILLED (tagged pruned) or FAILED (the error as a tag)."""
    if status == "pruned":
        client.set_tag(run_id, "pruned", "true")
    if error:
        client.set_tag(run_id, "error", str(error))
    if status != "running":
        client.set_terminated(run_id, STATUS.get(status, "FAILED"))


def _export_trial(client: Any, experiment_id: str, parent: str, study: Study, trial: Mapping[str, Any]) -> str:
    from mlflow.entities import Metric

    trial_id = str(trial.get("trial_id"))
    run_id = trial_run(client, experiment_id, parent, study.name, trial_id)
    params = config_params(trial_config(study, trial), client.get_run(run_id).data.params) \
        if trial.get("config") else []
    logged = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in EPOCH_METRICS}
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(row[key]), now, int(row["epoch"]))
               for row in study.epochs.get(trial_id, []) for key in EPOCH_METRICS
               if _finite(row.get(key)) and int(row["epoch"]) not in logged[key]]
    for start in range(0, len(params), 100):  # MLflow takes up to 100 params a call
        client.log_batch(run_id, params=params[start:start + 100])
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH])
    if study.is_ablation and trial.get("cell"):
        client.set_tag(run_id, "mtsearch.cell", str(trial["cell"]))
    finish_trial_run(client, run_id, str(trial.get("status")), trial.get("error"))
    return run_id


def _attach_card(client: Any, study: Study, runs: Mapping[str, str]) -> None:
    """The result card (`export` wrote it) on the run of the trial it describes."""
    card = study.path / "best.md"
    if not card.exists():
        return
    first = card.read_text(encoding="utf-8").splitlines()[0] if card.stat().st_size else ""
    trial_id = first.rsplit("trial ", 1)[-1].strip() if "trial " in first else None
    if trial_id in runs:
        client.log_artifact(runs[trial_id], str(card))


def _race_run(client: Any, experiment_id: str, parent: str, study: Study, race: Mapping[str, Any],
              race_file: Path | None) -> None:
    """A finished `mtsearch confirm` race as a child of the study: its verdict and `race.json`."""
    run_id = _run(client, experiment_id, {STUDY_TAG: study.name, KIND_TAG: "confirm",
                                          PARENT_TAG: parent}, f"{study.name} confirm")
    client.set_tag(run_id, "mtsearch.verdict", str(race.get("verdict")))
    client.set_tag(run_id, "mtsearch.leader", f"#{race.get('leader')}")
    if race_file is not None:
        client.log_artifact(run_id, str(race_file))
    client.set_terminated(run_id, "FINISHED")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
