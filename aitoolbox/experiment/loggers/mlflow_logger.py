"""MLflow tracking: parameters, metrics with their steps, the experiment folder as artifacts.

``mlflow`` is an optional dependency (``pip install "aitoolbox[mlflow]"``), imported at
:meth:`MLflowLogger.setup`. The tracking server is ``tracking_uri`` when given, else whatever
MLflow itself resolves (``MLFLOW_TRACKING_URI``; a local ``mlruns`` folder without it). Metrics
go in ``log_batch`` calls of at most 1,000 values, each with the step and the time it was
measured, so values held back while the server was unreachable arrive later with their original
steps and times.

When the server is down each MLflow request is retried by MLflow itself
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``): lower those to bound how long
a flush may wait for an unreachable server.
"""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Optional, Sequence

from aitoolbox.experiment.loggers.base import ExperimentLogger, flatten_params
from aitoolbox.utils.optional import import_optional

MAX_METRICS_PER_CALL, MAX_PARAMS_PER_CALL, MAX_PARAM_LENGTH = 1000, 100, 6000


class MLflowLogger(ExperimentLogger):
    """Log to an MLflow tracking server (or a local MLflow store).

    Args:
        experiment_name: the MLflow experiment (created when missing); None: the TrainLoop's
            experiment name, else ``'Default'``.
        run_name: name of the run; None: MLflow's.
        tracking_uri: ``http://host:port``, ``sqlite:///path.db``, ``file:///path``; None:
            ``MLFLOW_TRACKING_URI`` / MLflow's default.
        tags: tags of the run.
        run_id: continue this existing run instead of creating one.

    Attributes:
        run_id: the run's id (after :meth:`setup`).
        client: the ``mlflow.tracking.MlflowClient``.
    """

    name = "MLflow"

    def __init__(self, experiment_name: Optional[str] = None, run_name: Optional[str] = None,
                 tracking_uri: Optional[str] = None, tags: Optional[Mapping[str, Any]] = None,
                 run_id: Optional[str] = None):
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tracking_uri = tracking_uri
        self.tags = dict(tags or {})
        self.run_id = run_id
        self.client = None

    def setup(self, experiment_dir: Optional[str]) -> None:
        tracking = import_optional("mlflow.tracking", "mlflow", type(self).__name__)
        self.client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is not None:
            return
        name = self.experiment_name or _experiment_name(experiment_dir) or "Default"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        tags = {str(k): str(v) for k, v in self.tags.items()}
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        entities = import_optional("mlflow.entities", "mlflow", type(self).__name__)
        items = [entities.Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten_params(params).items()]
        for start in range(0, len(items), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[start:start + MAX_PARAMS_PER_CALL])

    def log_steps(self, names: Sequence[str], steps: Sequence[int], wall_times: Sequence[float],
                  rows: Sequence[Sequence[Optional[float]]]) -> None:
        metric = import_optional("mlflow.entities", "mlflow", type(self).__name__).Metric
        keys = [_key(n) for n in names]
        items = [metric(key, float(value), int(wall_time * 1000), int(step))
                 for step, wall_time, row in zip(steps, wall_times, rows)
                 for key, value in zip(keys, row) if value is not None]
        self._send_metrics(items)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time
        self.log_steps(list(metrics), [step], [time.time()], [list(metrics.values())])

    def _send_metrics(self, items: List) -> None:
        for start in range(0, len(items), MAX_METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[start:start + MAX_METRICS_PER_CALL])

    def log_artifact(self, path: str, name: Optional[str] = None) -> None:
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path=name)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path=name)

    def finalize(self, status: str = "success") -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FINISHED" if status == "success" else "FAILED")


def _experiment_name(experiment_dir: Optional[str]) -> Optional[str]:
    """``<project>`` of an experiment folder ``<root>/<project>/<experiment>_<timestamp>``."""
    return None if experiment_dir is None else os.path.basename(os.path.dirname(os.path.abspath(experiment_dir)))


def _key(name: str) -> str:
    """An MLflow metric key: letters, digits and ``_-. /`` only."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in name)


__all__ = ["MLflowLogger"]
