"""TensorBoard logging of the training-history metrics and of the training batch loss.

``tensorboard`` is an optional dependency (``pip install "aitoolbox[tensorboard]"``), imported
only when a callback is registered with a TrainLoop.

Where the event files go (``log_dir``, ``is_project``):

- ``is_project=True`` (default) with an experiment (the callback's own ``project_name`` /
  ``experiment_name`` / ``local_model_result_folder_path``, or the TrainLoop's):
  ``<experiment folder>/<log_dir or 'tensorboard'>/<project>_<experiment>/``; the files are mirrored
  to the experiment's cloud folder at every epoch end and at the end of training.
- otherwise: ``log_dir`` as given (default ``'tensorboard'``), plus ``<project>_<experiment>/`` when
  both names are given; nothing is uploaded.

The event files are written by :class:`~aitoolbox.experiment.loggers.tensorboard_logger.TensorBoardLogger`,
the TensorBoard backend of ``LoggerCallback`` (:attr:`TensorboardReporterBaseCB.tb_writer`).

Tags: ``train_loss/last_batch_loss`` and ``train_loss/accumulated_batch_loss`` (per loss of a
``MultiLoss``: ``..._<name>``) with the logged batch count as the step; ``loss/<name>`` for the
history entries with ``loss`` in their name and ``metrics/<name>`` for the others, with the epoch
as the step.
"""
from __future__ import annotations

import logging
import numbers
import os
from typing import Iterable, Optional

from aitoolbox.experiment.loggers.tensorboard_logger import TensorBoardLogger
from aitoolbox.torchtrain.callbacks.experiment_base import AbstractExperimentCallback
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.utils.optional import import_optional

logger = logging.getLogger("aitoolbox")
DEFAULT_LOG_DIR = "tensorboard"


def summary_writer_class(feature: str = "TensorBoard logging"):
    """``torch.utils.tensorboard.SummaryWriter``, or a clear error when tensorboard is missing.

    Raises:
        ImportError: the ``tensorboard`` package is not installed.
    """
    return import_optional("torch.utils.tensorboard", "tensorboard", feature).SummaryWriter


class TensorboardReporterBaseCB(AbstractExperimentCallback):
    """Base of the TensorBoard callbacks: places the event files, owns the ``SummaryWriter``,
    logs the batch loss / history metrics on request and mirrors the files to the cloud.

    Args:
        callback_name: name of the callback.
        log_dir: folder of the event files (see the module docstring); None: ``'tensorboard'``.
        is_project: put ``log_dir`` inside the experiment folder (when there is an experiment).
        project_name, experiment_name, local_model_result_folder_path: the experiment; None (all
            three): the TrainLoop's experiment, if any.
        cloud_save_mode, bucket_name, cloud_dir_prefix: the cloud target, as in ``ModelCheckpoint``.
        execution_order: callback execution order (after the callbacks that fill the history).
        **kwargs: arguments of the ``torch.utils.tensorboard.SummaryWriter`` that
            ``tb_writer.summary_writer`` opens on first use (for histograms, images ...).

    Attributes:
        tb_writer: the ``TensorBoardLogger`` while training runs (None before and after); it has
            ``add_scalar(tag, value, step)``, ``flush()`` and, for everything else, a
            ``summary_writer`` (a ``SummaryWriter`` on the same folder).
        global_step: batches seen by :meth:`log_mid_train_loss`'s callers so far.
    """

    def __init__(self, callback_name: str, log_dir: Optional[str] = None, is_project: bool = True,
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[str] = None, cloud_save_mode: Optional[str] = None,
                 bucket_name: Optional[str] = None, cloud_dir_prefix: Optional[str] = None,
                 execution_order: int = 97, **kwargs):
        names_given = None not in (project_name, experiment_name, local_model_result_folder_path)
        super().__init__(callback_name,
                         project_name=project_name if names_given else None,
                         experiment_name=experiment_name if names_given else None,
                         local_model_result_folder_path=local_model_result_folder_path if names_given else None,
                         cloud_save_mode=cloud_save_mode,
                         bucket_name=bucket_name,
                         cloud_dir_prefix=cloud_dir_prefix,
                         execution_order=execution_order)
        self.device_idx_execution = 0
        self.log_dir = DEFAULT_LOG_DIR if log_dir is None else os.path.expanduser(os.fspath(log_dir))
        self.is_project = is_project
        self.project_name, self.experiment_name = project_name, experiment_name
        self.tb_writer_kwargs = kwargs
        self.tb_writer = None
        self.global_step = 0
        self._resolved_log_dir: Optional[str] = None

    @property
    def writer(self):
        """Same as :attr:`tb_writer`."""
        return self.tb_writer

    # ------------------------------------------------------------------ setup
    def on_train_loop_registration(self):
        summary_writer_class(type(self).__name__)
        super().on_train_loop_registration()
        self._resolved_log_dir = self.create_log_dir()

    def in_project(self) -> bool:
        """Whether the event files go into (and are mirrored with) the experiment folder."""
        return self.is_project and self.experiment_store is not None

    def create_log_dir(self) -> str:
        """The folder of the event files (created), as described in the module docstring."""
        store = self.experiment_store
        if self.is_project and store is None:
            logger.info("%s: no experiment folder to put the TensorBoard files in; writing them to %s",
                        type(self).__name__, os.path.abspath(self.log_dir))
        project, experiment = self.project_name, self.experiment_name
        if self.in_project():
            project, experiment = project or store.folder.project_name, experiment or store.folder.experiment_name
            folder = store.local_path(self.log_dir)
        else:
            folder = self.log_dir
        if project is not None and experiment is not None:
            folder = os.path.join(folder, f"{project}_{experiment}")
        os.makedirs(folder, exist_ok=True)
        return os.path.abspath(folder)

    def on_train_begin(self):
        if self.tb_writer is None:
            if self._resolved_log_dir is None:
                self._resolved_log_dir = self.create_log_dir()
            self.tb_writer = TensorBoardLogger(save_dir=self._resolved_log_dir,
                                               summary_writer_kwargs=self.tb_writer_kwargs)
            self.tb_writer.setup(None)

    @property
    def full_log_dir(self) -> Optional[str]:
        """The folder the event files are written to (known once registered)."""
        return self._resolved_log_dir

    # ------------------------------------------------------------------ logging
    def log_mid_train_loss(self) -> None:
        """Log the last batch loss and the mean batch loss of the epoch so far at ``global_step``."""
        loop = self.train_loop_obj
        last, mean = loop.parse_loss(loop.loss_batch_accum[-1:]), loop.parse_loss(loop.loss_batch_accum)
        if not isinstance(last, MultiLoss):
            last, mean = {"loss": last}, {"loss": mean}
        scalars = {}
        for name in last:
            scalars[f"train_loss/last_batch_{name}"] = float(last[name])
            scalars[f"train_loss/accumulated_batch_{name}"] = float(mean[name])
        self.tb_writer.log_metrics(scalars, self.global_step)

    def log_train_history_metrics(self, metric_names: Iterable[str]) -> None:
        """Log the latest value of each history metric (``loss/<name>`` or ``metrics/<name>``) at the epoch."""
        history = self.train_loop_obj.train_history
        scalars = {}
        for name in metric_names:
            values = history[name] if name in history else []
            if len(values) > 0 and isinstance(values[-1], numbers.Real):
                prefix = "loss" if "loss" in name else "metrics"
                scalars[f"{prefix}/{name}"] = float(values[-1])
        if scalars:
            self.tb_writer.log_metrics(scalars, self.train_loop_obj.epoch)

    def log_epoch_metrics(self, metric_names: Optional[Iterable[str]]) -> None:
        """End of epoch: log the metrics (None: the whole history), flush and mirror the files."""
        history = self.train_loop_obj.train_history
        self.log_train_history_metrics(list(history.keys()) if metric_names is None else metric_names)
        self.tb_writer.flush()
        self.upload_to_cloud()

    def upload_to_cloud(self) -> None:
        """Mirror the event files to the experiment's cloud folder (only inside an experiment)."""
        if not self.in_project() or self.experiment_store.backend is None or self._resolved_log_dir is None:
            return
        for root, _, files in os.walk(self._resolved_log_dir):
            for file_name in files:
                self.experiment_store.publish(os.path.join(root, file_name))

    # ------------------------------------------------------------------ end of training
    def on_train_end(self):
        self.close()
        self.upload_to_cloud()
        if self.in_project():
            self.experiment_store.finish_run()

    def on_train_crash(self, exception: BaseException):
        try:
            self.close()
        except Exception as error:  # must not hide the training error
            logger.warning("%s: closing the writer failed: %r", type(self).__name__, error)

    def close(self) -> None:
        """Flush and close the event file (a later training run opens a new one)."""
        if self.tb_writer is not None:
            self.tb_writer.finalize()
            self.tb_writer = None

    def state_dict(self) -> dict:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state.get("global_step", 0))


class TensorboardTrainBatchLoss(TensorboardReporterBaseCB):
    """Log the training batch loss every ``batch_log_frequency`` batches.

    Args:
        batch_log_frequency: log at every this-many-th batch (the 1st, the (f+1)-th, ...).
            Reading the loss syncs with the device, so only on those batches.
        log_dir: and ``is_project``, ``project_name``, ``experiment_name``,
            ``local_model_result_folder_path``, ``cloud_save_mode``, ``bucket_name``,
            ``cloud_dir_prefix``, ``**kwargs``: as in :class:`TensorboardReporterBaseCB`.
    """

    def __init__(self, batch_log_frequency: int = 1, log_dir: Optional[str] = None, is_project: bool = True,
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[str] = None, cloud_save_mode: Optional[str] = None,
                 bucket_name: Optional[str] = None, cloud_dir_prefix: Optional[str] = None, **kwargs):
        super().__init__("Tensorboard end of batch report of batch loss", log_dir, is_project, project_name,
                         experiment_name, local_model_result_folder_path, cloud_save_mode, bucket_name,
                         cloud_dir_prefix, **kwargs)
        self.batch_log_frequency = _check_frequency(batch_log_frequency)

    def on_batch_end(self):
        if self.batch_log_frequency and self.global_step % self.batch_log_frequency == 0:
            self.log_mid_train_loss()
        self.global_step += 1

    def on_epoch_end(self):
        self.tb_writer.flush()
        self.upload_to_cloud()


class TensorboardTrainHistoryMetric(TensorboardReporterBaseCB):
    """At every epoch end, log the latest value of the training-history metrics.

    Args:
        metric_names: the history metrics to log; None: all of them.
        log_dir: and ``is_project``, ``project_name``, ``experiment_name``,
            ``local_model_result_folder_path``, ``cloud_save_mode``, ``bucket_name``,
            ``cloud_dir_prefix``, ``**kwargs``: as in :class:`TensorboardReporterBaseCB`.
    """

    def __init__(self, metric_names: Optional[Iterable[str]] = None, log_dir: Optional[str] = None,
                 is_project: bool = True, project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[str] = None, cloud_save_mode: Optional[str] = None,
                 bucket_name: Optional[str] = None, cloud_dir_prefix: Optional[str] = None, **kwargs):
        super().__init__("Tensorboard end of epoch report of training history metrics", log_dir, is_project,
                         project_name, experiment_name, local_model_result_folder_path, cloud_save_mode,
                         bucket_name, cloud_dir_prefix, **kwargs)
        self.metric_names = None if metric_names is None else list(metric_names)

    def on_epoch_end(self):
        self.log_epoch_metrics(self.metric_names)


class TensorboardFullTracking(TensorboardReporterBaseCB):
    """Both: the batch loss every ``batch_log_frequency`` batches and the history metrics at
    every epoch end.

    Args:
        metric_names: the history metrics to log; None: all of them.
        batch_log_frequency: log the batch loss at every this-many-th batch (0: never).
        log_dir: and ``is_project``, ``project_name``, ``experiment_name``,
            ``local_model_result_folder_path``, ``cloud_save_mode``, ``bucket_name``,
            ``cloud_dir_prefix``: as in :class:`TensorboardReporterBaseCB`.
        batch_log_every_n_steps: older name of ``batch_log_frequency`` (overrides it when given).
        execution_order: callback execution order.
        **kwargs: arguments of ``SummaryWriter`` (e.g. ``flush_secs``).

    Raises:
        ImportError: tensorboard is not installed (at registration, before training).
    """

    def __init__(self, metric_names: Optional[Iterable[str]] = None, batch_log_frequency: int = 1,
                 log_dir: Optional[str] = None, is_project: bool = True, project_name: Optional[str] = None,
                 experiment_name: Optional[str] = None, local_model_result_folder_path: Optional[str] = None,
                 cloud_save_mode: Optional[str] = None, bucket_name: Optional[str] = None,
                 cloud_dir_prefix: Optional[str] = None, batch_log_every_n_steps: Optional[int] = None,
                 execution_order: int = 97, **kwargs):
        super().__init__("Tensorboard full tracking", log_dir, is_project, project_name, experiment_name,
                         local_model_result_folder_path, cloud_save_mode, bucket_name, cloud_dir_prefix,
                         execution_order=execution_order, **kwargs)
        if batch_log_every_n_steps is not None:
            batch_log_frequency = batch_log_every_n_steps
        self.batch_log_frequency = _check_frequency(batch_log_frequency)
        self.metric_names = None if metric_names is None else list(metric_names)

    def on_batch_end(self):
        if self.batch_log_frequency and self.global_step % self.batch_log_frequency == 0:
            self.log_mid_train_loss()
        self.global_step += 1

    def on_epoch_end(self):
        self.log_epoch_metrics(self.metric_names)


def _check_frequency(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"batch_log_frequency must be an int >= 0 (0: never), got {value!r}.")
    return value


__all__ = ["TensorboardReporterBaseCB", "TensorboardTrainBatchLoss", "TensorboardTrainHistoryMetric",
           "TensorboardFullTracking", "summary_writer_class"]
