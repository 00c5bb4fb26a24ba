"""Weights & Biases experiment tracking: ``WandBTracking`` and its ``AlertConfig``.

``wandb`` is an optional dependency (``pip install "aitoolbox[wandb]"``), imported only when the
callback is registered with a TrainLoop (or an alert is sent). Offline use needs no account:
``WANDB_MODE=offline`` (or ``mode='offline'`` passed through to ``wandb.init``).
"""
from __future__ import annotations

import logging
import numbers
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

from aitoolbox.torchtrain.callbacks.experiment_base import AbstractExperimentCallback
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.experiment.loggers.wandb_logger import WandBLogger, import_wandb as _import_wandb

logger = logging.getLogger("aitoolbox")
OBJECTIVES = ("maximize", "minimize")


def import_wandb():
    """The ``wandb`` module, or an ImportError naming ``pip install "aitoolbox[wandb]"``."""
    return _import_wandb("WandBTracking")


@dataclass
class AlertConfig:
    """A W&B alert on a logged metric.

    Attributes:
        metric_name: the key in the epoch-end log, e.g. ``'metrics/val_Accuracy'`` or
            ``'loss_at_epoch_end/val_loss'``.
        threshold_value: the bound.
        objective: ``'maximize'`` (alert when below the bound) or ``'minimize'`` (alert when above).
        wandb_alert_level: a ``wandb.AlertLevel``; None: wandb's default.
    """

    metric_name: str
    threshold_value: float
    objective: str = "maximize"
    wandb_alert_level: "wandb.AlertLevel" = None  # noqa: F821 (wandb is imported lazily)


class WandBTracking(AbstractExperimentCallback):
    """Log the training history (every epoch end) and, optionally, the batch loss to W&B.

    aitoolbox 1.8's W&B callback, under its name and arguments: it logs through a
    :class:`~aitoolbox.experiment.loggers.wandb_logger.WandBLogger` (:attr:`wandb_logger`), the
    W&B backend of ``LoggerCallback``.

    At every epoch end it logs ``{'epoch': epoch, 'loss_at_epoch_end/<name>': ..., 'metrics/<name>': ...}``
    (the latest value of each chosen history metric; ``loss`` in the name selects the first
    prefix) at step = batches trained so far, then sends the configured alerts. Every
    ``batch_log_frequency``-th batch it logs ``train_loss/last_batch_loss`` and
    ``train_loss/accumulated_batch_loss`` (per loss of a ``MultiLoss``: ``..._<name>``) at step
    = batches trained including that one. Runs on the main process only.

    Args:
        metric_names: history metrics to log; None: all of them.
        batch_log_frequency: log the batch loss every this many batches; None: never.
        hyperparams: the run's config; None: the TrainLoop's experiment's hyperparameters.
        tags: tags of the run.
        alerts: list of :class:`AlertConfig`.
        wandb_pre_initialized: the script called ``wandb.init`` itself; the callback only logs.
        source_dirs: folders (or files) whose code is logged with the run; empty: with
            ``is_project``, the experiment's script and source folders.
        log_dir: the folder wandb writes its run directory into (None: wandb's default, or the
            experiment folder with ``is_project``).
        is_project: put wandb's files into the experiment folder (when there is an experiment).
        project_name, experiment_name: W&B project and run name; None: the experiment's.
        local_model_result_folder_path: the results root (with both names: the experiment).
        **kwargs: further arguments of ``wandb.init`` (e.g. ``mode='offline'``, ``entity``).

    Raises:
        TypeError: an alert that is not an ``AlertConfig``.
        ValueError: an alert objective other than ``'maximize'`` / ``'minimize'``, or a bad
            ``batch_log_frequency``.
        ImportError: (at registration) wandb is not installed.
    """

    def __init__(self, metric_names: Optional[Iterable[str]] = None, batch_log_frequency: Optional[int] = None,
                 hyperparams: Optional[Dict[str, Any]] = None, tags: Optional[Sequence[str]] = None,
                 alerts: Optional[List[AlertConfig]] = None, wandb_pre_initialized: bool = False,
                 source_dirs: Sequence[str] = (), log_dir: Optional[str] = None, is_project: bool = True,
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[str] = None, **kwargs):
        names_given = None not in (project_name, experiment_name, local_model_result_folder_path)
        super().__init__("WeightsAndBiases Experiment Tracking",
                         project_name=project_name if names_given else None,
                         experiment_name=experiment_name if names_given else None,
                         local_model_result_folder_path=local_model_result_folder_path if names_given else None,
                         hyperparams=hyperparams if names_given else None, execution_order=97)
        self.device_idx_execution = 0
        if batch_log_frequency is not None and (isinstance(batch_log_frequency, bool)
                                                or not isinstance(batch_log_frequency, int) or batch_log_frequency < 1):
            raise ValueError(f"batch_log_frequency must be an int >= 1 or None, got {batch_log_frequency!r}.")
        self.metric_names = None if metric_names is None else list(metric_names)
        self.batch_log_frequency = batch_log_frequency
        self.hyperparams = hyperparams
        self.tags = tags
        self.alerts = alerts
        self.check_alerts()
        self.wandb_pre_initialized = wandb_pre_initialized
        self.source_dirs = list(source_dirs)
        self.wandb_params_kwargs = kwargs
        self.log_dir = None if log_dir is None else os.path.expanduser(os.fspath(log_dir))
        self.is_project = is_project
        self.project_name, self.experiment_name = project_name, experiment_name
        self.run = None
        self.wandb_logger: Optional[WandBLogger] = None
        self._owns_run = False

    # ------------------------------------------------------------------ checks & setup
    def check_alerts(self) -> None:
        """Validate :attr:`alerts`.

        Raises:
            TypeError: an alert that is not an ``AlertConfig`` (or alerts not a list of them).
            ValueError: an objective other than ``'maximize'`` / ``'minimize'``.
        """
        if self.alerts is None:
            return
        if not isinstance(self.alerts, (list, tuple)):
            raise TypeError(f"alerts must be a list of AlertConfig, got {type(self.alerts).__name__}.")
        for alert in self.alerts:
            if not isinstance(alert, AlertConfig):
                raise TypeError(f"Alerts should be instances of AlertConfig dataclass, got {alert!r}.")
            if alert.objective not in OBJECTIVES:
                raise ValueError(f"Alert objective can only be 'maximize' or 'minimize'; alert {alert} has "
                                 f"objective {alert.objective!r}.")

    def on_train_loop_registration(self):
        wandb = import_wandb()
        super().on_train_loop_registration()
        self.try_infer_additional_logging_details()
        if self.wandb_pre_initialized:
            if wandb.run is None:
                raise ValueError("WandBTracking(wandb_pre_initialized=True) but wandb.init() has not been called; "
                                 "call it before fit, or leave wandb_pre_initialized=False.")
            self.run = wandb.run
        elif self.run is None or _is_finished(self.run):
            if self.is_project and self.experiment_store is not None:
                self.log_dir = self.experiment_store.ensure_created()
            self.wandb_logger = WandBLogger(self.project_name, self.experiment_name, self.log_dir,
                                            config=self.hyperparams, tags=self.tags, save_code=True,
                                            **self.wandb_params_kwargs)
            self.wandb_logger.setup(None)
            self._owns_run = True
            self.run = self.wandb_logger.run
            self._log_source_code()
        if self.wandb_logger is None or self.wandb_logger.run is not self.run:  # a run set by the user
            self.wandb_logger = WandBLogger(run=self.run)

    def try_infer_additional_logging_details(self) -> None:
        """Fill names, hyperparameters and source folders from the TrainLoop's experiment."""
        loop, store = self.train_loop_obj, self.experiment_store
        if self.project_name is None:
            self.project_name = getattr(loop, "project_name", None) or (store.folder.project_name if store else None)
        if self.experiment_name is None:
            self.experiment_name = (getattr(loop, "experiment_name", None)
                                    or (store.folder.experiment_name if store else None))
        if self.hyperparams is None:
            hyperparams = getattr(loop, "hyperparams", None)
            self.hyperparams = dict(hyperparams if hyperparams is not None else (store.hyperparams if store else {}))
        if not self.source_dirs and self.is_project and store is not None:
            self.source_dirs = ([store.experiment_script] if store.experiment_script else []) + list(store.source_dirs)

    def _log_source_code(self) -> None:
        for path in self.source_dirs:
            path = os.path.abspath(os.path.expanduser(path))
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in os.path.basename(path))
            try:
                if os.path.isdir(path):
                    self.run.log_code(path, name=name, include_fn=lambda _: True)
                elif os.path.isfile(path):
                    self.run.log_code(os.path.dirname(path), name=name, include_fn=lambda p, f=path: p == f)
                else:
                    logger.warning("WandBTracking: source path %s does not exist; not logged.", path)
            except Exception as error:  # code logging is a convenience; it must not stop training
                logger.warning("WandBTracking: logging the code of %s failed: %r", path, error)

    # ------------------------------------------------------------------ logging
    def on_batch_end(self):
        batch_idx = self.train_loop_obj.total_iteration_idx  # batches before this one
        if self.batch_log_frequency is not None and batch_idx % self.batch_log_frequency == 0:
            self.log_mid_train_loss(step=batch_idx + 1)

    def log_mid_train_loss(self, step: Optional[int] = None) -> Dict[str, float]:
        """Log the last batch loss and the mean batch loss of the epoch so far; returns what was logged."""
        loop = self.train_loop_obj
        last, mean = loop.parse_loss(loop.loss_batch_accum[-1:]), loop.parse_loss(loop.loss_batch_accum)
        if not isinstance(last, MultiLoss):
            last, mean = {"loss": last}, {"loss": mean}
        logged = {}
        for name in last:
            logged[f"train_loss/last_batch_{name}"] = float(last[name])
            logged[f"train_loss/accumulated_batch_{name}"] = float(mean[name])
        self.wandb_logger.log_metrics(logged, loop.total_iteration_idx + 1 if step is None else step)
        return logged

    def on_epoch_end(self):
        history = self.train_loop_obj.train_history
        metrics_log = self.log_train_history_metrics(list(history.keys()) if self.metric_names is None
                                                     else self.metric_names)
        if self.alerts:
            self.send_configured_alerts(self.alerts, metrics_log)

    def log_train_history_metrics(self, metric_names: Iterable[str]) -> Dict[str, Any]:
        """Log (and return) the epoch and the latest value of each history metric."""
        history = self.train_loop_obj.train_history
        metrics_log: Dict[str, Any] = {"epoch": self.train_loop_obj.epoch}
        for name in metric_names:
            values = history[name] if name in history else []
            if len(values) > 0 and isinstance(values[-1], numbers.Number):
                prefix = "loss_at_epoch_end" if "loss" in name else "metrics"
                metrics_log[f"{prefix}/{name}"] = values[-1]
        self.wandb_logger.log_metrics(metrics_log, self.train_loop_obj.total_iteration_idx)
        return metrics_log

    @staticmethod
    def send_configured_alerts(alerts: Sequence[AlertConfig], metrics_log: Dict[str, Any]) -> List[str]:
        """Send each alert whose metric is on the wrong side of its threshold; returns their titles.

        An alert whose metric is not in ``metrics_log`` is skipped (logged).
        """
        sent = []
        for alert in alerts:
            if alert.metric_name not in metrics_log:
                logger.warning("WandBTracking: alert metric %r not logged this epoch (logged: %s).",
                               alert.metric_name, sorted(metrics_log))
                continue
            value = metrics_log[alert.metric_name]
            if alert.objective == "maximize" and value < alert.threshold_value:
                title, side = f"{alert.metric_name} is too low", "below"
            elif alert.objective == "minimize" and value > alert.threshold_value:
                title, side = f"{alert.metric_name} is too high", "above"
            else:
                continue
            kwargs = {} if alert.wandb_alert_level is None else {"level": alert.wandb_alert_level}
            import_wandb().alert(title=title, text=f"Metric {alert.metric_name} is currently at {value} which is "
                                                   f"{side} the specified threshold of {alert.threshold_value}.",
                                 **kwargs)
            sent.append(title)
        return sent

    def on_train_crash(self, exception: BaseException):
        if not self._owns_run or self.run is None:
            return
        try:
            self.run.finish(exit_code=1)
        except Exception as error:  # must not hide the training error
            logger.warning("WandBTracking: finishing the run after the crash failed: %r", error)


def _is_finished(run) -> bool:
    return bool(getattr(run, "_is_finished", False))


__all__ = ["AlertConfig", "WandBTracking"]
