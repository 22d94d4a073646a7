"""A study in TensorBoard: one run folder per trial with every epoch metric as a scalar at
step = epoch, and the HParams plugin's data (the searched keys as hparams, the objective and its
test counterpart as metrics, the trial's status), so `tensorboard --logdir DIR` shows the study in
the HParams table and parallel-coordinates views and in the scalar plots.

Export is idempotent: each run folder is written anew beside the old one and swapped in, so
exporting twice, or after `--resume` extended the study, leaves one folder per trial. Needs the
optional extra `mtsearch[tensorboard]`.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtsearch.errors import InvalidInput
from mtsearch.metrics import EPOCH_METRICS, counterpart_on_test
from mtsearch.results.report import Study, param_display_value

EXPERIMENT_RUN = "_study"  # the run folder that holds the HParams experiment (its columns)
CELL = "cell"  # a grid trial's cell, as an hparam


@dataclass
class TensorBoardExport:
    root: Path  # DIR/<study name>: what `tensorboard --logdir` opens
    runs: int  # trial run folders written


def require_tensorboard() -> None:
    """One `error:` line naming the extra when TensorBoard is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise InvalidInput(None, "--to tensorboard", "needs TensorBoard: pip install 'mtsearch[tensorboard]'") from None


def export_tensorboard(study: Study, out_dir: str | Path) -> TensorBoardExport:
    """Write (or rewrite) `out_dir/<study name>/`: the experiment run and one run per trial."""
    require_tensorboard()
    root = Path(out_dir) / study.name
    root.mkdir(parents=True, exist_ok=True)
    hparam_keys = [*study.params, *([CELL] if study.is_ablation else [])]
    metrics = [study.metric, counterpart_on_test(study.metric)]
    _swap_in(root / EXPERIMENT_RUN, lambda path: _write_experiment(path, study, hparam_keys, metrics))
    written = 0
    for trial in study.trials:
        trial_id = str(trial.get("trial_id"))
        _swap_in(root / trial_id, lambda path, trial=trial: _write_trial(path, study, trial, hparam_keys))
        written += 1
    return TensorBoardExport(root, written)


def _write_experiment(path: Path, study: Study, hparam_keys: list[str], metrics: list[str]) -> None:
    with writer(path) as w:
        w.add_summary(experiment_summary(study.name, study.metric, study.mode, hparam_keys, metrics,
                                         [_hparam_type(study, key) for key in hparam_keys]))


def experiment_summary(name: str, metric: str, mode: str, hparam_keys: list[str], metrics: list[str],
                       types: list[int] | None = None) -> Any:
    """The HParams experiment: its hparam columns (the searched keys, `status`) and metric columns."""
    from tensorboard.plugins.hparams import api_pb2

    types = types or [api_pb2.DATA_TYPE_UNSET] * len(hparam_keys)
    infos = [api_pb2.HParamInfo(name=key, type=kind) for key, kind in zip(hparam_keys, types)]
    infos.append(api_pb2.HParamInfo(name="status", type=api_pb2.DATA_TYPE_STRING))
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics]
    experiment = api_pb2.Experiment(description=f"mtsearch study {name}: {metric} ({mode})",
                                    hparam_infos=infos, metric_infos=metric_infos)
    return _hparams_summary("experiment", experiment=experiment)


def session_start(trial_id: str, values: Mapping[str, Any]) -> Any:
    """A trial's HParams session: its hparam values, grouped by trial id."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(group_name=trial_id)
    for key, raw in values.items():
        value = _hparam_value(raw)
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[key].number_value = float(value)
        elif value is not None:
            start.hparams[key].string_value = str(value)
    return _hparams_summary("session_start_info", session_start_info=start)


def session_end(status: Any) -> Any:
    from tensorboard.plugins.hparams import plugin_data_pb2

    return _hparams_summary("session_end_info", session_end_info=plugin_data_pb2.SessionEndInfo(
        status=_status(status)))


def _hparams_summary(what: str, **data: Any) -> Any:
    """A Summary the HParams plugin reads (tag `_hparams_/<what>`), built from its protos alone
    (TensorBoard's own helpers for these need TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=f"_hparams_/{what}", metadata=SummaryMetadata(plugin_data=plugin))])


def _write_trial(path: Path, study: Study, trial: Mapping[str, Any], hparam_keys: list[str]) -> None:
    trial_id = str(trial.get("trial_id"))
    values = {key: trial.get(key) for key in hparam_keys}
    values["status"] = str(trial.get("status"))
    with writer(path) as w:
        w.add_summary(session_start(trial_id, values))
        for row in study.epochs.get(trial_id, []):
            for metric in EPOCH_METRICS:
                value = row.get(metric)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    w.add_scalar(metric, float(value), int(row["epoch"]))
        w.add_summary(session_end(trial.get("status")))


class writer:  # noqa: N801 - used like a function: `with writer(path) as w`
    """An event file writer for one run folder (torch's, which needs only TensorBoard)."""

    def __init__(self, path: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(path))

    def __enter__(self) -> writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._writer.close()

    def add_summary(self, summary: Any) -> None:
        self._writer._get_file_writer().add_summary(summary)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self._writer.flush()


def _swap_in(path: Path, write: Any) -> None:
    """Write a run folder next to `path`, then replace `path` with it (no half-written run stays)."""
    fresh = path.with_name(f".{path.name}.new")
    stale = path.with_name(f".{path.name}.old")
    for leftover in (fresh, stale):
        shutil.rmtree(leftover, ignore_errors=True)
    write(fresh)
    if path.exists():
        path.rename(stale)
    fresh.rename(path)
    shutil.rmtree(stale, ignore_errors=True)


def _hparam_type(study: Study, key: str) -> int:
    from tensorboard.plugins.hparams import api_pb2

    kinds = {type(_hparam_value(t.get(key))) for t in study.trials if t.get(key) is not None}
    if kinds and kinds <= {float, int}:
        return api_pb2.DATA_TYPE_FLOAT64
    if kinds == {bool}:
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_STRING


def _hparam_value(value: Any) -> Any:
    """An hparam as TensorBoard holds one: a number, a bool or a string (branch masks as labels)."""
    value = param_display_value(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _status(status: Any) -> int:
    from tensorboard.plugins.hparams import api_pb2

    return {"completed": api_pb2.STATUS_SUCCESS, "pruned": api_pb2.STATUS_SUCCESS,
            "error": api_pb2.STATUS_FAILURE, "diverged": api_pb2.STATUS_FAILURE,
            "running": api_pb2.STATUS_RUNNING}.get(str(status), api_pb2.STATUS_UNKNOWN)
