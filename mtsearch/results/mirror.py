"""Live mirrors of a running study in TensorBoard and MLflow (`storage: {mirror: [...]}`).

The driver hands each epoch row to `Mirrors.epoch` as it reaches the Parquet store, and each
trial's end to `Mirrors.trial_end`. The writing happens on a background thread, so a slow or dead
server never slows the search. A mirror that fails (server down, disk full, extra missing) warns
once and is switched off: Parquet stays the record, and `mtsearch export --to ...` can redo the
copy at any time, into the same runs.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mtsearch.metrics import EPOCH_METRICS, counterpart_on_test

DRAIN_S = 30.0  # how long the end of a search waits for the mirrors to catch up


class Mirrors:
    """The study's mirrors, fed from the driver; every call returns at once. `factories` make the
    sinks on the background thread too (connecting to a server that is down must not wait)."""

    def __init__(self, factories: dict[str, Callable[[], Any]], warn: Callable[[str], None]):
        self._factories = factories
        self._sinks: dict[str, Any] = {}
        self._warn = warn
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mtsearch-mirrors", daemon=True)
        self._thread.start()

    def epoch(self, trial_id: str, params: Mapping[str, Any], config: Any, row: Mapping[str, Any]) -> None:
        self._queue.put(("epoch", (trial_id, dict(params), config, dict(row))))

    def trial_end(self, trial_id: str, status: str, error: str | None) -> None:
        self._queue.put(("trial_end", (trial_id, status, error)))

    def close(self) -> None:
        """Let the mirrors catch up (at most DRAIN_S), then stop."""
        self._queue.put(None)
        self._thread.join(DRAIN_S)
        if self._thread.is_alive():
            self._warn(f"the study's mirrors did not catch up within {DRAIN_S:g} s; the Parquet files "
                       "hold everything (mtsearch export --to ... copies it again)")

    def _fail(self, name: str, exc: Exception) -> None:
        self._sinks.pop(name, None)
        first = str(exc).splitlines()[0] if str(exc) else ""
        self._warn(f"warning: the {name} mirror failed and is off for this search ({type(exc).__name__}: "
                   f"{first}); the Parquet files hold everything (mtsearch export --to copies it later)")

    def _run(self) -> None:
        for name, make in self._factories.items():
            try:
                self._sinks[name] = make()
            except Exception as exc:  # noqa: BLE001 - a mirror never stops the search
                self._fail(name, exc)
        while (item := self._queue.get()) is not None:
            event, args = item
            for name, sink in list(self._sinks.items()):
                try:
                    getattr(sink, event)(*args)
                except Exception as exc:  # noqa: BLE001 - a mirror never stops the search
                    self._fail(name, exc)
        for sink in self._sinks.values():
            try:
                sink.close()
            except Exception:  # noqa: BLE001, S110 - closing a mirror that failed quietly
                pass


def build_mirrors(study: str, metric: str, mode: str, storage: Any, hparam_keys: list[str],
                  study_dir: Path, warn: Callable[[str], None]) -> Mirrors | None:
    """The mirrors a space file's `storage.mirror` asks for, or None."""
    factories: dict[str, Callable[[], Any]] = {}
    if "tensorboard" in storage.mirror:
        factories["tensorboard"] = lambda: TensorBoardSink(Path(storage.tensorboard_dir), study, metric,
                                                           hparam_keys)
    if "mlflow" in storage.mirror:
        factories["mlflow"] = lambda: MlflowSink(storage.mlflow_uri, study, metric, mode, study_dir)
    return Mirrors(factories, warn) if factories else None


def _reachable(uri: str, timeout: float = 3.0) -> None:
    """A tracking server that does not answer fails here, at once: MLflow's client would retry for
    minutes on every call."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https") and parsed.hostname:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError as exc:
            raise ConnectionError(f"no tracking server answers at {parsed.hostname}:{port} ({exc})") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardSink:
    """Each trial a run folder `DIR/<study>/<trial_id>`, as `export --to tensorboard` writes it."""

    name = "tensorboard"

    def __init__(self, root: Path, study: str, metric: str, hparam_keys: list[str]):
        from mtsearch.results.tensorboard import experiment_summary, writer

        self.root, self.hparam_keys, self._writers = Path(root) / study, hparam_keys, {}
        with writer(self.root / "_study") as w:
            w.add_summary(experiment_summary(study, metric, "", hparam_keys,
                                             [metric, counterpart_on_test(metric)]))

    def epoch(self, trial_id: str, params: dict[str, Any], config: Any, row: dict[str, Any]) -> None:
        from mtsearch.results.tensorboard import session_start, writer

        if trial_id not in self._writers:
            self._writers[trial_id] = writer(self.root / trial_id)
            self._writers[trial_id].add_summary(session_start(trial_id, {**params, "status": "running"}))
        for metric in EPOCH_METRICS:
            if _finite(row.get(metric)):
                self._writers[trial_id].add_scalar(metric, float(row[metric]), int(row["epoch"]))
        self._writers[trial_id].flush()  # visible in TensorBoard now, not at the trial's end

    def trial_end(self, trial_id: str, status: str, error: str | None) -> None:
        from mtsearch.results.tensorboard import session_end

        w = self._writers.pop(trial_id, None)
        if w is not None:
            w.add_summary(session_end(status))
            w.close()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()


class MlflowSink:
    """The study's parent run and a nested run per trial, as `export --to mlflow` keys them."""

    name = "mlflow"

    def __init__(self, uri: str, study: str, metric: str, mode: str, study_dir: Path):
        from mlflow.tracking import MlflowClient

        from mtsearch.results.mlflow_export import parent_run, study_experiment

        _reachable(uri)
        self.client = MlflowClient(tracking_uri=uri)
        self.study = study
        self.experiment = study_experiment(self.client, study, uri)
        self.parent = parent_run(self.client, self.experiment, study, {
            "metric": metric, "mode": mode, "path": str(Path(study_dir).resolve())}, study_dir / "space.yaml")
        self.runs: dict[str, str] = {}

    def epoch(self, trial_id: str, params: dict[str, Any], config: Any, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        from mtsearch.results.mlflow_export import config_params, trial_run

        if trial_id not in self.runs:
            self.runs[trial_id] = trial_run(self.client, self.experiment, self.parent, self.study, trial_id)
            if config is not None:
                self.client.log_batch(self.runs[trial_id], params=config_params(config))
        metrics = [Metric(k, float(row[k]), 0, int(row["epoch"])) for k in EPOCH_METRICS if _finite(row.get(k))]
        self.client.log_batch(self.runs[trial_id], metrics=metrics)

    def trial_end(self, trial_id: str, status: str, error: str | None) -> None:
        from mtsearch.results.mlflow_export import finish_trial_run

        if trial_id not in self.runs:
            self.runs[trial_id] = self._trial(trial_id)
        finish_trial_run(self.client, self.runs.pop(trial_id), status, error)

    def _trial(self, trial_id: str) -> str:
        from mtsearch.results.mlflow_export import trial_run

        return trial_run(self.client, self.experiment, self.parent, self.study, trial_id)

    def close(self) -> None:
        self.client.set_terminated(self.parent, "FINISHED")
