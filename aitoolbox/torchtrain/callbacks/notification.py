"""Notification and log-shipping callbacks: ``EmailNotification`` (AWS SES) and ``LogUpload``.

Both run on the main process only. Neither ever raises into training once it has started: a
failed email or upload is logged and training goes on.
"""
from __future__ import annotations

import html
import logging
import os
import shutil
import traceback
from typing import Any, Dict, List, Optional

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.experiment_base import AbstractExperimentCallback
from aitoolbox.utils.io import atomic_write_path

logger = logging.getLogger("aitoolbox")

#: message keys under which the history plot / file writer callbacks announce their files
ATTACHMENT_MESSAGE_KEYS = ("ModelTrainHistoryPlot_results_file_local_paths",
                           "ModelTrainHistoryFileWriter_results_file_local_paths")


def _read_messages(message_service, key: str) -> Optional[list]:
    reader = getattr(message_service, "read_messages", None) or getattr(message_service, "read")
    return reader(key)


def _flatten_paths(values: Any) -> List[str]:
    if values is None:
        return []
    if isinstance(values, (str, os.PathLike)):
        return [os.fspath(values)]
    return [path for value in values for path in _flatten_paths(value)]


def _html_list(items: Dict[str, Any]) -> str:
    rows = "\n".join(f"<li><p>{html.escape(str(name))}: {html.escape(str(value))}</p></li>"
                     for name, value in items.items())
    return f"<ul>{rows}</ul>"


class EmailNotification(AbstractCallback):
    """Email a training report through AWS SES at every epoch end, at the end of training and
    when training crashes.

    Each email lists the latest value of every training-history metric; the end-of-training
    email also lists the hyperparameters, the crash email the error and its traceback. Files
    announced by the history plot / file writer callbacks (messages
    ``ModelTrainHistoryPlot_results_file_local_paths`` and
    ``ModelTrainHistoryFileWriter_results_file_local_paths``) are attached.

    Args:
        sender_name: display name of the sender.
        sender_email: the sender's address (verified in SES).
        recipient_email: where the reports go.
        project_name: project name for the subject; None: the TrainLoop's experiment's.
        experiment_name: experiment name for the subject; None: the TrainLoop's experiment's.
        aws_region: the SES region. ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_SES``) selects
            another SES-compatible endpoint.

    Raises:
        ValueError: (at registration) no project / experiment name given and the TrainLoop has
            no experiment to take them from.
    """

    def __init__(self, sender_name: str, sender_email: str, recipient_email: str,
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 aws_region: str = "eu-west-1"):
        super().__init__("Send email to notify about the state of training", execution_order=98,
                         device_idx_execution=0)
        self.project_name, self.experiment_name = project_name, experiment_name
        self.sender_name, self.sender_email, self.recipient_email = sender_name, sender_email, recipient_email
        self.aws_region = aws_region
        self.ses_sender = None

    def on_train_loop_registration(self):
        from aitoolbox.cloud.AWS.simple_email_service import SESSender

        loop = self.train_loop_obj
        store = getattr(loop, "experiment_store", None)
        if self.project_name is None:
            self.project_name = getattr(loop, "project_name", None) or (store and store.folder.project_name)
        if self.experiment_name is None:
            self.experiment_name = getattr(loop, "experiment_name", None) or (store and store.folder.experiment_name)
        if self.project_name is None or self.experiment_name is None:
            raise ValueError("EmailNotification: the TrainLoop has no experiment to take the project and "
                             "experiment names from; pass project_name and experiment_name to the callback "
                             "(or use a tracking TrainLoop).")
        if self.ses_sender is None:
            self.ses_sender = SESSender(self.sender_name, self.sender_email, self.recipient_email, self.aws_region)

    def on_epoch_end(self):
        epoch = self.train_loop_obj.epoch
        self.ses_sender.send_email(f"End of epoch {epoch} report: {self.project_name}: {self.experiment_name}",
                                   f"<h2>End of epoch {epoch}</h2>\n{self.get_metric_list_html()}",
                                   self.attachment_paths())

    def on_train_end(self):
        body = (f"<h2>End of training at epoch {self.train_loop_obj.epoch}</h2>\n{self.get_metric_list_html()}\n"
                f"<h3>Used hyper parameters:</h3>\n{self.get_hyperparams_html()}")
        self.ses_sender.send_email(f"End of training: {self.project_name}: {self.experiment_name}", body,
                                   self.attachment_paths())

    def on_train_crash(self, exception: BaseException):
        try:
            trace = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
            body = (f"<h2>Training crashed at epoch {self.train_loop_obj.epoch}</h2>\n"
                    f"<p>{html.escape(type(exception).__name__)}: {html.escape(str(exception))}</p>\n"
                    f"<pre>{html.escape(trace)}</pre>\n{self.get_metric_list_html()}")
            self.ses_sender.send_email(f"Training crashed: {self.project_name}: {self.experiment_name}", body)
        except Exception as error:  # must not hide the training error
            logger.warning("EmailNotification: the crash email could not be sent: %r", error)

    def attachment_paths(self) -> List[str]:
        """Files announced for attachment by other callbacks in this epoch."""
        paths = []
        for key in ATTACHMENT_MESSAGE_KEYS:
            paths += _flatten_paths(_read_messages(self.message_service, key))
        return paths

    def get_metric_list_html(self) -> str:
        """HTML list of the latest value of every training-history metric that has one."""
        history = self.train_loop_obj.train_history
        return _html_list({name: values[-1] for name, values in history.items() if len(values) > 0})

    def get_hyperparams_html(self) -> str:
        """HTML list of the experiment's hyperparameters, or ``'Not given'``."""
        hyperparams = getattr(self.train_loop_obj, "hyperparams", None)
        if hyperparams is None:
            store = getattr(self.train_loop_obj, "experiment_store", None)
            hyperparams = store.hyperparams if store is not None else None
        return _html_list(hyperparams) if isinstance(hyperparams, dict) else "Not given"


class LogUpload(AbstractExperimentCallback):
    """Copy the run's log file into the experiment folder and upload it to the experiment's
    cloud folder, at every epoch end and at the end of training (and on a crash).

    The file lands at ``<experiment folder>/<log file name>`` locally and at the same place in
    the cloud mirror (S3, or any backend of the experiment store).

    Args:
        log_file_path: the log file (``~`` is expanded).
        fail_if_cloud_missing: raise at registration when the experiment is not mirrored to the
            cloud; False: keep only the local copy (and log that).
        project_name, experiment_name, local_model_result_folder_path: the experiment; None (all
            three): the TrainLoop's experiment.
        cloud_save_mode, bucket_name, cloud_dir_prefix: the cloud target, as in ``ModelCheckpoint``.

    Raises:
        ValueError: (at registration) no cloud storage and ``fail_if_cloud_missing``.
    """

    def __init__(self, log_file_path: str = "~/project/training.log", fail_if_cloud_missing: bool = True,
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[str] = None, cloud_save_mode: Optional[str] = None,
                 bucket_name: Optional[str] = None, cloud_dir_prefix: Optional[str] = None):
        super().__init__("Upload logging file to cloud", project_name=project_name,
                         experiment_name=experiment_name,
                         local_model_result_folder_path=local_model_result_folder_path,
                         cloud_save_mode=cloud_save_mode,
                         bucket_name="model-result" if bucket_name is None else bucket_name,
                         cloud_dir_prefix="" if cloud_dir_prefix is None else cloud_dir_prefix,
                         execution_order=1500)
        self.device_idx_execution = 0
        self.log_file_path = os.path.expanduser(os.fspath(log_file_path))
        self.log_filename = os.path.basename(self.log_file_path)
        self.fail_if_cloud_missing = fail_if_cloud_missing

    def on_train_loop_registration(self):
        super().on_train_loop_registration()
        if self.store.backend is None:
            if self.fail_if_cloud_missing:
                raise ValueError("LogUpload: the experiment is not saved to the cloud, so the log file could be "
                                 "lost with the machine. Use cloud_save_mode='s3' (or a tracking TrainLoop with "
                                 "cloud saving), or pass fail_if_cloud_missing=False to keep a local copy only.")
            logger.warning("LogUpload: no cloud storage; the log file is only copied into the local "
                           "experiment folder and can get lost with the machine.")

    def on_train_begin(self):
        self.start_experiment()

    def on_epoch_end(self):
        self.upload_log_file()

    def on_train_end(self):
        self.upload_log_file()
        self.store.finish_run()

    def on_train_crash(self, exception: BaseException):
        try:
            self.upload_log_file()
            self.store.finish_run()
        except Exception as error:  # must not hide the training error
            logger.warning("LogUpload: uploading the log file after the crash failed: %r", error)

    def upload_log_file(self) -> Optional[str]:
        """Copy the log file into the experiment folder (atomically) and queue its upload.

        Returns:
            The local copy's path, or None when the log file does not exist (logged).
        """
        if not os.path.isfile(self.log_file_path):
            logger.warning("LogUpload: log file %s does not exist; nothing uploaded.", self.log_file_path)
            return None
        destination = self.store.local_path(self.log_filename)
        with atomic_write_path(destination) as tmp_path:
            shutil.copyfile(self.log_file_path, tmp_path)
        return self.store.publish(destination)


__all__ = ["EmailNotification", "LogUpload"]
