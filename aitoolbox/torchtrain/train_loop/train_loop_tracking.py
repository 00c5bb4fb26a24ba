"""TrainLoops with experiment tracking: checkpoints, final model and results, local and on S3.

These classes only build the saving callbacks of :mod:`aitoolbox.torchtrain.callbacks.model_save`
and add them to every ``fit``; the training itself is :class:`TrainLoop`'s. Everything about the
experiment (names, root folder, ``cloud_save_mode``) is checked in the constructor, and the bucket
at the start of ``fit``, before any training.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional, Sequence, Union

from aitoolbox.experiment.checkpoint_registry import (
    fetch_latest_cloud_checkpoint, find_latest_checkpoint, remove_stale_temporaries)
from aitoolbox.experiment.experiment_folder import CHECKPOINT_DIR
from aitoolbox.experiment.experiment_store import ExperimentStore
from aitoolbox.experiment.result_package.abstract_result_packages import AbstractResultPackage
from aitoolbox.torchtrain.callbacks.model_save import (
    ModelCheckpoint, ModelIterationCheckpoint, ModelTrainEndSave, validate_checkpoint_args,
    validate_result_packages, validate_save_frequency)
from aitoolbox.torchtrain.train_loop.components.amp_handler import UseAmp
from aitoolbox.torchtrain.train_loop.components.pred_collate_fns import append_predictions, torch_cat_transf
from aitoolbox.torchtrain.train_loop.train_loop import TrainLoop

PathLike = Union[str, os.PathLike]
logger = logging.getLogger("aitoolbox")


class _TrackingMixin:
    """Adds the tracking callbacks to every ``fit`` of a TrainLoop."""

    experiment_store: ExperimentStore
    tracking_callbacks: List

    def fit(self, num_epochs: int = 0, num_iterations: int = 0, callbacks: Optional[Sequence] = None,
            grad_accumulation: int = 1, **kwargs):
        """Train like :meth:`TrainLoop.fit`, with this loop's saving callbacks added (run last)."""
        self.experiment_store.check_cloud()   # in the launching process, before any work
        callbacks = list(callbacks or []) + self.tracking_callbacks
        return super().fit(num_epochs, num_iterations, callbacks, grad_accumulation, **kwargs)

    def _set_experiment_attributes(self, local_model_result_folder_path: PathLike, cloud_save_mode,
                                   source_dirs: Sequence, **extra) -> None:
        """aitoolbox 1.8's attributes of the experiment (read by callbacks written for it).

        Names, bucket and prefix are the validated values of the store; ``hyperparams`` is the
        store's copy of the user's hyperparameters (the user's dict is never mutated).
        """
        store = self.experiment_store
        self.project_name = store.folder.project_name
        self.experiment_name = store.folder.experiment_name
        self.local_model_result_folder_path = os.path.expanduser(os.fspath(local_model_result_folder_path))
        self.hyperparams = store.hyperparams
        self.cloud_save_mode = cloud_save_mode
        self.bucket_name = store.bucket_name
        self.cloud_dir_prefix = store.cloud_dir_prefix
        self.source_dirs = source_dirs
        for name, value in extra.items():
            setattr(self, name, value)

    def _resume_latest(self) -> Optional[str]:
        """``resume=True``: continue the newest run of this experiment in its own folder.

        The newest existing folder ``<experiment_name>_<timestamp>`` that holds a loadable
        checkpoint becomes this loop's experiment folder, stale temporary files of killed writes
        are removed from it, and its newest exact checkpoint is loaded. Without any, a new run
        starts (in the newest existing folder of the experiment, if there is one). With a cloud
        mirror and no local checkpoint (a new machine), the newest run in the bucket is continued:
        its newest complete checkpoint is downloaded into its local folder and loaded.

        Returns:
            The checkpoint loaded, or None.

        Raises:
            ValueError: the bucket has to be looked at and is missing or unreachable.
        """
        folder = self.experiment_store.folder
        runs = folder.existing_runs()
        for timestamp in runs:
            checkpoint_dir = os.path.join(folder.root, folder.project_name, f"{folder.experiment_name}_{timestamp}",
                                          CHECKPOINT_DIR)
            remove_stale_temporaries(checkpoint_dir)
            checkpoint = find_latest_checkpoint(checkpoint_dir) if os.path.isdir(checkpoint_dir) else None
            if checkpoint is not None:
                folder.reuse(timestamp)
                self.load_checkpoint(checkpoint)
                logger.info("resume=True: continuing %s from %s (epoch %d, %d batches done in it).", folder.path,
                            os.path.basename(checkpoint), self.epoch + 1, self.iteration)
                return checkpoint
        checkpoint = self._resume_from_cloud()
        if checkpoint is not None:
            return checkpoint
        if runs:
            folder.reuse(runs[0])
            logger.info("resume=True: no checkpoint in %s yet; training starts from the beginning in it.", folder.path)
        else:
            logger.info("resume=True: no earlier run of experiment %r in %s; starting a new one.",
                        folder.experiment_name, os.path.join(folder.root, folder.project_name))
        return None

    def _resume_from_cloud(self) -> Optional[str]:
        """No local checkpoint: continue the newest run in the bucket that holds a complete one."""
        store = self.experiment_store
        if not store.uses_cloud:
            return None
        store.check_cloud()
        folder = store.folder
        for timestamp in store.cloud_runs():
            local_dir = os.path.join(folder.root, folder.project_name, f"{folder.experiment_name}_{timestamp}",
                                     CHECKPOINT_DIR)
            checkpoint = fetch_latest_cloud_checkpoint(store.cloud_run_uri(timestamp, CHECKPOINT_DIR), local_dir)
            if checkpoint is not None:
                folder.reuse(timestamp)
                self.load_checkpoint(checkpoint)
                logger.info("resume=True: no local checkpoint; continuing %s from %s, downloaded from %s (epoch %d, "
                            "%d batches done in it).", folder.path, os.path.basename(checkpoint),
                            store.cloud_run_uri(timestamp, CHECKPOINT_DIR), self.epoch + 1, self.iteration)
                return checkpoint
        return None

    @property
    def experiment_timestamp(self) -> str:
        """Timestamp part of the experiment folder's name."""
        return self.experiment_store.folder.timestamp

    @property
    def experiment_dir(self) -> str:
        """Absolute path of the local experiment folder."""
        return self.experiment_store.path


def _check_resume(resume) -> None:
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True (continue the newest run of this experiment) or False, got {resume!r}.")


def _checkpoint_callback(store: ExperimentStore, rm_subopt_local_models, num_best_checkpoints_kept,
                         iteration_save_freq: int) -> ModelCheckpoint:
    keep = dict(rm_subopt_local_models=rm_subopt_local_models, num_best_checkpoints_kept=num_best_checkpoints_kept,
                experiment_store=store)
    if iteration_save_freq:
        return ModelIterationCheckpoint(iteration_save_freq, None, None, None, None, **keep)
    return ModelCheckpoint(None, None, None, None, **keep)


class TrainLoopCheckpoint(_TrackingMixin, TrainLoop):
    """TrainLoop that checkpoints the full training state at every epoch end (and on a crash).

    The experiment folder is ``<local_model_result_folder_path>/<project_name>/<experiment_name>_<timestamp>/``
    (see :mod:`aitoolbox.experiment.experiment_folder`), mirrored to
    ``s3://<bucket_name>/<cloud_dir_prefix>/...`` with ``cloud_save_mode='s3'``.

    Args:
        model, train_loader, validation_loader, test_loader: as in :class:`TrainLoop`.
        optimizer, criterion: as in :class:`TrainLoop`.
        project_name: project folder name (one plain folder name).
        experiment_name: experiment name (one plain folder name).
        local_model_result_folder_path: results root folder.
        hyperparams: dict, or the path of a YAML / JSON file; saved as ``hyperparams.json``;
            never mutated. ``hyperparams['experiment_file_path']`` names the script to copy
            (default: the script that builds the TrainLoop).
        cloud_save_mode: ``'s3'`` / ``'aws_s3'`` (honours ``AWS_ENDPOINT_URL``), or None /
            ``'local'`` for local disk only.
        bucket_name: S3 bucket; it must exist.
        cloud_dir_prefix: key prefix inside the bucket.
        source_dirs: folders zipped into ``source_code.zip``.
        rm_subopt_local_models: False keeps every checkpoint; True keeps the best by ``loss``; a
            metric name ranks by that metric. Local files only; the newest is always kept (a
            dropped checkpoint whose upload still waits is not uploaded, see ``docs/tracking.md``).
        num_best_checkpoints_kept: how many of the best checkpoints to keep.
        iteration_save_freq: also checkpoint every this many training batches (0: never).
        collate_batch_pred_fn, pred_transform_fn, end_auto_eval: as in :class:`TrainLoop`.
        lazy_experiment_save, print_callbacks, gpu_mode, cuda_device_idx: as in :class:`TrainLoop`.
        use_amp, show_progress, torch_compile, quiet: as in :class:`TrainLoop`.
        resume: continue the newest run of this experiment: its folder is reused and its newest
            exact checkpoint loaded (see ``docs/fault_tolerance.md``); with no local checkpoint, the
            newest run in the bucket (its newest complete checkpoint is downloaded); without one,
            training starts from the beginning.

    Attributes:
        experiment_store: the experiment's storage; ``experiment_store.flush_timeout`` (seconds,
            120 by default) bounds the wait for pending uploads at the end of ``fit``, after which
            the files that did not reach the bucket are logged (``missing_files()`` lists them).

    Raises:
        TypeError, ValueError: an invalid argument, an unwritable folder or a missing bucket.
    """

    def __init__(self, model, train_loader, validation_loader, test_loader, optimizer, criterion,
                 project_name: str, experiment_name: str, local_model_result_folder_path: PathLike,
                 hyperparams: Union[dict, PathLike], cloud_save_mode: Optional[str] = "s3",
                 bucket_name: str = "model-result", cloud_dir_prefix: str = "", source_dirs: Sequence = (),
                 rm_subopt_local_models: Union[bool, str] = False, num_best_checkpoints_kept: int = 2,
                 iteration_save_freq: int = 0, collate_batch_pred_fn: Callable = append_predictions,
                 pred_transform_fn: Callable = torch_cat_transf, end_auto_eval: Union[bool, int] = True,
                 lazy_experiment_save: bool = False, print_callbacks: bool = False, gpu_mode: str = "single",
                 cuda_device_idx: Optional[int] = None, use_amp: UseAmp = False,
                 show_progress: bool = True, torch_compile: Union[bool, dict] = False,
                 quiet: bool = False, *, resume: bool = False):
        validate_checkpoint_args(rm_subopt_local_models, num_best_checkpoints_kept)
        _check_resume(resume)
        validate_save_frequency(iteration_save_freq, "iteration_save_freq")
        TrainLoop.__init__(self, model, train_loader, validation_loader, test_loader, optimizer, criterion,
                           collate_batch_pred_fn, pred_transform_fn, end_auto_eval, lazy_experiment_save,
                           print_callbacks, gpu_mode, cuda_device_idx, use_amp, show_progress, torch_compile,
                           quiet)
        self.experiment_store = ExperimentStore(project_name, experiment_name, local_model_result_folder_path,
                                                hyperparams, cloud_save_mode, bucket_name, cloud_dir_prefix,
                                                source_dirs)
        self._set_experiment_attributes(local_model_result_folder_path, cloud_save_mode, source_dirs,
                                        rm_subopt_local_models=rm_subopt_local_models,
                                        num_best_checkpoints_kept=num_best_checkpoints_kept,
                                        iteration_save_freq=iteration_save_freq)
        self.tracking_callbacks = [_checkpoint_callback(self.experiment_store, rm_subopt_local_models,
                                                        num_best_checkpoints_kept, iteration_save_freq)]
        self.resume = resume
        self.resumed_from = self._resume_latest() if resume else None


class TrainLoopEndSave(_TrackingMixin, TrainLoop):
    """TrainLoop that saves the final model, results, history and plots at the end of training.

    Args:
        model, train_loader, validation_loader, test_loader: as in :class:`TrainLoop`.
        optimizer, criterion: as in :class:`TrainLoop`.
        project_name, experiment_name: the experiment, as in :class:`TrainLoopCheckpoint`.
        local_model_result_folder_path, hyperparams: as in :class:`TrainLoopCheckpoint`.
        val_result_package: result package evaluated on the validation predictions at the end.
        test_result_package: result package evaluated on the test predictions at the end.
        cloud_save_mode, bucket_name, cloud_dir_prefix, source_dirs: as in :class:`TrainLoopCheckpoint`.
        collate_batch_pred_fn, pred_transform_fn, end_auto_eval: as in :class:`TrainLoop`.
        lazy_experiment_save, print_callbacks, gpu_mode, cuda_device_idx: as in :class:`TrainLoop`.
        use_amp, show_progress, torch_compile, quiet: as in :class:`TrainLoop`.

    Raises:
        TypeError, ValueError: an invalid argument, a result package without its data loader, an
            unwritable folder or a missing bucket.
    """

    def __init__(self, model, train_loader, validation_loader, test_loader, optimizer, criterion,
                 project_name: str, experiment_name: str, local_model_result_folder_path: PathLike,
                 hyperparams: Union[dict, PathLike], val_result_package: Optional[AbstractResultPackage] = None,
                 test_result_package: Optional[AbstractResultPackage] = None,
                 cloud_save_mode: Optional[str] = "s3", bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "", source_dirs: Sequence = (),
                 collate_batch_pred_fn: Callable = append_predictions,
                 pred_transform_fn: Callable = torch_cat_transf, end_auto_eval: Union[bool, int] = True,
                 lazy_experiment_save: bool = False, print_callbacks: bool = False, gpu_mode: str = "single",
                 cuda_device_idx: Optional[int] = None, use_amp: UseAmp = False,
                 show_progress: bool = True, torch_compile: Union[bool, dict] = False,
                 quiet: bool = False):
        validate_result_packages(val_result_package, test_result_package, validation_loader, test_loader)
        TrainLoop.__init__(self, model, train_loader, validation_loader, test_loader, optimizer, criterion,
                           collate_batch_pred_fn, pred_transform_fn, end_auto_eval, lazy_experiment_save,
                           print_callbacks, gpu_mode, cuda_device_idx, use_amp, show_progress, torch_compile,
                           quiet)
        self.experiment_store = ExperimentStore(project_name, experiment_name, local_model_result_folder_path,
                                                hyperparams, cloud_save_mode, bucket_name, cloud_dir_prefix,
                                                source_dirs)
        self._set_experiment_attributes(local_model_result_folder_path, cloud_save_mode, source_dirs,
                                        val_result_package=val_result_package,
                                        test_result_package=test_result_package)
        self.tracking_callbacks = [ModelTrainEndSave(None, None, None, None, val_result_package,
                                                     test_result_package, experiment_store=self.experiment_store)]


class TrainLoopCheckpointEndSave(_TrackingMixin, TrainLoop):
    """TrainLoop that checkpoints every epoch (and on a crash) and saves model and results at the end.

    Combines :class:`TrainLoopCheckpoint` and :class:`TrainLoopEndSave` in one experiment folder.

    Args:
        model, train_loader, validation_loader, test_loader: as in :class:`TrainLoop`.
        optimizer, criterion: as in :class:`TrainLoop`.
        project_name, experiment_name: the experiment, as in :class:`TrainLoopCheckpoint`.
        local_model_result_folder_path, hyperparams: as in :class:`TrainLoopCheckpoint`.
        val_result_package, test_result_package: as in :class:`TrainLoopEndSave`.
        cloud_save_mode, bucket_name, cloud_dir_prefix, source_dirs: as in :class:`TrainLoopCheckpoint`.
        rm_subopt_local_models, num_best_checkpoints_kept: as in :class:`TrainLoopCheckpoint`.
        iteration_save_freq: as in :class:`TrainLoopCheckpoint`.
        collate_batch_pred_fn, pred_transform_fn, end_auto_eval: as in :class:`TrainLoop`.
        lazy_experiment_save, print_callbacks, gpu_mode, cuda_device_idx: as in :class:`TrainLoop`.
        use_amp, show_progress, torch_compile, quiet: as in :class:`TrainLoop`.
        resume: continue the newest run of this experiment: its folder is reused and its newest
            exact checkpoint loaded (see ``docs/fault_tolerance.md``); without one, training starts
            from the beginning.

    Raises:
        TypeError, ValueError: an invalid argument, an unwritable folder or a missing bucket.
    """

    def __init__(self, model, train_loader, validation_loader, test_loader, optimizer, criterion,
                 project_name: str, experiment_name: str, local_model_result_folder_path: PathLike,
                 hyperparams: Union[dict, PathLike], val_result_package: Optional[AbstractResultPackage] = None,
                 test_result_package: Optional[AbstractResultPackage] = None,
                 cloud_save_mode: Optional[str] = "s3", bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "", source_dirs: Sequence = (),
                 rm_subopt_local_models: Union[bool, str] = False, num_best_checkpoints_kept: int = 2,
                 iteration_save_freq: int = 0, collate_batch_pred_fn: Callable = append_predictions,
                 pred_transform_fn: Callable = torch_cat_transf, end_auto_eval: Union[bool, int] = True,
                 lazy_experiment_save: bool = False, print_callbacks: bool = False, gpu_mode: str = "single",
                 cuda_device_idx: Optional[int] = None, use_amp: UseAmp = False,
                 show_progress: bool = True, torch_compile: Union[bool, dict] = False,
                 quiet: bool = False, *, resume: bool = False):
        validate_checkpoint_args(rm_subopt_local_models, num_best_checkpoints_kept)
        _check_resume(resume)
        validate_save_frequency(iteration_save_freq, "iteration_save_freq")
        validate_result_packages(val_result_package, test_result_package, validation_loader, test_loader)
        TrainLoop.__init__(self, model, train_loader, validation_loader, test_loader, optimizer, criterion,
                           collate_batch_pred_fn, pred_transform_fn, end_auto_eval, lazy_experiment_save,
                           print_callbacks, gpu_mode, cuda_device_idx, use_amp, show_progress, torch_compile,
                           quiet)
        self.experiment_store = ExperimentStore(project_name, experiment_name, local_model_result_folder_path,
                                                hyperparams, cloud_save_mode, bucket_name, cloud_dir_prefix,
                                                source_dirs)
        self._set_experiment_attributes(local_model_result_folder_path, cloud_save_mode, source_dirs,
                                        val_result_package=val_result_package,
                                        test_result_package=test_result_package,
                                        rm_subopt_local_models=rm_subopt_local_models,
                                        num_best_checkpoints_kept=num_best_checkpoints_kept,
                                        iteration_save_freq=iteration_save_freq)
        self.tracking_callbacks = [
            ModelTrainEndSave(None, None, None, None, val_result_package, test_result_package,
                              experiment_store=self.experiment_store),
            _checkpoint_callback(self.experiment_store, rm_subopt_local_models, num_best_checkpoints_kept,
                                 iteration_save_freq),
        ]
        self.resume = resume
        self.resumed_from = self._resume_latest() if resume else None


__all__ = ["TrainLoopCheckpoint", "TrainLoopEndSave", "TrainLoopCheckpointEndSave"]
