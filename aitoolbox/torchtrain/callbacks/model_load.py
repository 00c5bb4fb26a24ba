"""Continue training from a checkpoint: :class:`ModelLoadContinueTraining`.

The same can be done without a callback::

    loop.load_checkpoint("results/project/exp_2024-05-01_13-45-12/checkpoint_model/model_epoch_2.pt")
    loop.fit(num_epochs=4)      # totals: trains epochs 3 and 4

``num_epochs`` / ``num_iterations`` are totals, so the resumed run ends where the uninterrupted
one would have ended, with bit-identical weights on CPU.

Checkpoints written by aitoolbox 1.8 (``model_<experiment>_<timestamp>_E<epoch>.pth``) load as
well; training continues after their epoch, not bit-exactly (they hold no RNG state).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Optional, Union

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.checkpoint_registry import (
    MANIFEST_FILE, checkpoint_file_name, find_latest_checkpoint, newest_entry, newest_original_checkpoint_name)
from aitoolbox.experiment.experiment_store import cloud_backend, validate_cloud_save_mode
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

logger = logging.getLogger("aitoolbox")


class ModelLoadContinueTraining(AbstractCallback):
    """Load a checkpoint into the TrainLoop when registered, so that ``fit`` continues that run.

    Give either ``checkpoint_path`` (a local file or an ``s3://`` / ``gs://`` URI), or the saved
    experiment's ``saved_experiment_timestamp`` (with ``project_name``, ``experiment_name`` and
    ``local_model_result_folder_path``; left None they are taken from a tracking TrainLoop). Of
    an experiment the checkpoint of ``epoch_num`` is loaded, else ``checkpoint_file``, else
    aitoolbox 1.8's final model file if there is one, else the newest checkpoint; with
    ``cloud_save_mode='s3'`` or ``'gcs'`` it is fetched from the bucket when the local folder lacks it. The
    checkpoint is loaded once, at the first ``fit``.

    Args:
        saved_experiment_timestamp: timestamp part of the experiment folder name.
        saved_model_dir: the checkpoint folder inside the experiment folder.
        epoch_num: load the checkpoint taken after this epoch, counted from 0 as aitoolbox 1.8
            named its files (``..._E<epoch_num>.pth``; this aitoolbox's ``model_epoch_<epoch_num + 1>.pt``).
        ignore_saved_schedulers: an aitoolbox 1.8 checkpoint with scheduler states but no
            schedulers in ``fit``: True ignores them, False raises.
        ignore_missing_saved_schedulers: schedulers in ``fit`` but none saved in an aitoolbox 1.8
            checkpoint: True starts them afresh, False raises.
        used_data_parallel: accepted for compatibility; a ``module.`` prefix is removed anyway.
        custom_local_loader_class: an ``AbstractLocalModelLoader`` subclass, built with the results
            root folder, that loads the file and initialises model, optimizer, AMP scaler and
            schedulers (aitoolbox 1.8's hook for custom initialisation).
        project_name: project folder name (None: the TrainLoop's).
        experiment_name: experiment name (None: the TrainLoop's).
        local_model_result_folder_path: results root folder (None: the TrainLoop's).
        cloud_save_mode: ``'s3'`` / ``'gcs'`` (or their aliases) to fall back to the bucket;
            None / ``'local'``: local only (None with a tracking TrainLoop: the TrainLoop's mode).
        bucket_name: S3 / GCS bucket (None: the TrainLoop's, else ``'model-result'``).
        cloud_dir_prefix: key prefix inside the bucket (None: the TrainLoop's, else ``''``).
        checkpoint_path: load this checkpoint instead of looking one up in an experiment folder.
        checkpoint_file: file name inside ``saved_model_dir``.
        **kwargs: passed to ``custom_local_loader_class``'s ``load_model``.

    Raises:
        TypeError, ValueError: missing or invalid arguments, before any training.
    """

    def __init__(self, saved_experiment_timestamp: Optional[str] = None,
                 saved_model_dir: str = ef.CHECKPOINT_DIR, epoch_num: Optional[int] = None,
                 ignore_saved_schedulers: bool = False, ignore_missing_saved_schedulers: bool = False,
                 used_data_parallel: bool = False, custom_local_loader_class: Optional[type] = None,
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]] = None,
                 cloud_save_mode: Optional[str] = None, bucket_name: Optional[str] = None,
                 cloud_dir_prefix: Optional[str] = None, *, checkpoint_path: Optional[str] = None,
                 checkpoint_file: Optional[str] = None, **kwargs):
        super().__init__("Model load continue training", execution_order=-1000)
        self.backend = validate_cloud_save_mode(cloud_save_mode)
        self.cloud_save_mode, self.bucket_name = cloud_save_mode, bucket_name
        self.cloud_dir_prefix = None if cloud_dir_prefix is None else ef.validate_cloud_dir_prefix(cloud_dir_prefix)
        if epoch_num is not None and (isinstance(epoch_num, bool) or not isinstance(epoch_num, int) or epoch_num < 0):
            raise ValueError(f"epoch_num must be None or an int >= 0, got {epoch_num!r}.")
        self.epoch_num = epoch_num
        self.ignore_saved_schedulers = ignore_saved_schedulers
        self.ignore_missing_saved_schedulers = ignore_missing_saved_schedulers
        self.used_data_parallel = used_data_parallel
        self.custom_local_loader_class = custom_local_loader_class
        self.local_loader_kwargs = kwargs
        self.checkpoint_path = checkpoint_path
        self.checkpoint_file = None if checkpoint_file is None else ef.validate_name(checkpoint_file,
                                                                                     "checkpoint_file")
        self.saved_experiment_timestamp, self.saved_model_dir = saved_experiment_timestamp, saved_model_dir
        self.project_name, self.experiment_name = project_name, experiment_name
        self.local_model_result_folder_path = local_model_result_folder_path
        self.local_dir: Optional[str] = None
        self.loaded_path: Optional[str] = None
        self.model_loader = None
        if checkpoint_path is not None:
            if not isinstance(checkpoint_path, (str, os.PathLike)):
                raise TypeError("checkpoint_path must be a path or an s3:// / gs:// URI, got "
                                f"{type(checkpoint_path).__name__}.")
        elif saved_experiment_timestamp is None:
            raise ValueError("ModelLoadContinueTraining needs checkpoint_path, or saved_experiment_timestamp (with "
                             "project_name, experiment_name and local_model_result_folder_path, or a tracking "
                             "TrainLoop to take them from).")
        elif None not in (project_name, experiment_name, local_model_result_folder_path):
            self._init_experiment()

    # ------------------------------------------------------------------ the experiment to load from
    def _init_experiment(self) -> None:
        self.project_name = ef.validate_name(self.project_name, "project_name")
        self.experiment_name = ef.validate_name(self.experiment_name, "experiment_name")
        ef.validate_name(self.saved_experiment_timestamp, "saved_experiment_timestamp")
        self.saved_model_dir = ef.validate_name(self.saved_model_dir, "saved_model_dir")
        root = os.path.abspath(os.path.expanduser(os.fspath(self.local_model_result_folder_path)))
        self.local_model_result_folder_path = root
        self.local_dir = os.path.join(root, self.project_name, self.folder_name, self.saved_model_dir)
        if self.backend is None and not os.path.isdir(self.local_dir):
            raise ValueError(f"No checkpoint folder at {self.local_dir!r}: check project_name, experiment_name, "
                             "saved_experiment_timestamp and local_model_result_folder_path, or set "
                             "cloud_save_mode='s3' or 'gcs' to load from the bucket.")

    @property
    def folder_name(self) -> str:
        """The saved experiment's folder name ``<experiment_name>_<saved_experiment_timestamp>``."""
        return f"{self.experiment_name}_{self.saved_experiment_timestamp}"

    def _infer_from_loop(self) -> None:
        """Fill the experiment details left None from the TrainLoop (a tracking TrainLoop's)."""
        loop = self.train_loop_obj
        store = getattr(loop, "experiment_store", None)
        folder = getattr(store, "folder", None)
        inferred = {"project_name": getattr(loop, "project_name", None) or getattr(folder, "project_name", None),
                    "experiment_name": getattr(loop, "experiment_name", None)
                    or getattr(folder, "experiment_name", None),
                    "local_model_result_folder_path": getattr(loop, "local_model_result_folder_path", None)
                    or getattr(folder, "root", None)}
        for name, value in inferred.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        missing = [name for name in inferred if getattr(self, name) is None]
        if missing:
            raise ValueError(f"ModelLoadContinueTraining: {missing} not given and the TrainLoop has none; pass them, "
                             "or use a tracking TrainLoop (TrainLoopCheckpoint, ...).")
        if self.cloud_save_mode is None and store is not None and getattr(store, "backend", None):
            self.backend = store.backend
        self._init_experiment()

    def _cloud_details(self):
        store = getattr(self.train_loop_obj, "experiment_store", None)
        bucket = self.bucket_name or getattr(store, "bucket_name", None) or "model-result"
        prefix = self.cloud_dir_prefix if self.cloud_dir_prefix is not None \
            else getattr(store, "cloud_dir_prefix", "") or ""
        return bucket, prefix

    # ------------------------------------------------------------------ loading
    def on_train_loop_registration(self):
        if self.loaded_path is not None:
            return
        if self.checkpoint_path is None and self.local_dir is None:
            self._infer_from_loop()
        path = self.resolve_checkpoint()
        loop = self.train_loop_obj
        if self.custom_local_loader_class is not None:
            self._load_with_custom_loader(path)
        else:
            loop.load_checkpoint(path)
            pending = getattr(loop, "_pending_scheduler_states", None)
            if pending is not None:
                pending.ignore_saved = self.ignore_saved_schedulers
                pending.ignore_missing_saved = self.ignore_missing_saved_schedulers
        self.loaded_path = path
        logger.info("Continuing training from checkpoint %s (epoch %d, %d batches done).", path,
                    loop.epoch, loop.total_iteration_idx)

    def on_train_begin(self):
        if self.model_loader is not None:  # a custom loader initialises the schedulers itself
            self.model_loader.init_scheduler(self.train_loop_obj.get_schedulers(),
                                             ignore_saved=self.ignore_saved_schedulers,
                                             ignore_missing_saved=self.ignore_missing_saved_schedulers)
            self.model_loader = None

    def _load_with_custom_loader(self, path: str) -> None:
        from aitoolbox.torchtrain.train_loop.components import checkpointing

        if self.local_dir is None:
            raise ValueError("custom_local_loader_class needs the saved experiment (saved_experiment_timestamp, "
                             "project_name, experiment_name, local_model_result_folder_path), not checkpoint_path.")
        from aitoolbox.cloud.backends import backend_for_uri

        cloud = backend_for_uri(path)
        if cloud is not None:
            bucket, key = cloud.parse_uri(path)
            cloud.download_file(bucket, key, os.path.join(self.local_dir, os.path.basename(key)))
        loop = self.train_loop_obj
        loader = self.custom_local_loader_class(self.local_model_result_folder_path)
        representation = loader.load_model(self.project_name, self.experiment_name, self.saved_experiment_timestamp,
                                           self.saved_model_dir, self.epoch_num, **self.local_loader_kwargs)
        loader.init_model(checkpointing.plain_module(loop.module), self.used_data_parallel)
        loader.init_optimizer(loop.optimizer)
        if loop.amp_scaler is not None and representation.get("amp"):
            loader.init_amp(loop.amp_scaler)
        checkpointing.set_original_position(loop, representation)
        checkpointing.reset_run_state(loop)
        self.model_loader = loader

    def resolve_checkpoint(self) -> str:
        """The local path or ``s3://`` / ``gs://`` URI of the checkpoint to load.

        Raises:
            FileNotFoundError: no checkpoint found locally nor (with a cloud mode) in the bucket.
        """
        if self.checkpoint_path is not None:
            return os.fspath(self.checkpoint_path)
        local = self._local_checkpoint()
        if local is not None:
            return local
        if self.backend is not None:
            return self._cloud_checkpoint()
        wanted = self._wanted_files()
        raise FileNotFoundError(f"No checkpoint {' or '.join(wanted) if wanted else ''} in {self.local_dir!r}.")

    def _wanted_files(self) -> Optional[list]:
        """The file names to load, in order of preference; None: the newest checkpoint."""
        if self.checkpoint_file is not None:
            return [self.checkpoint_file]
        if self.epoch_num is not None:
            return [self._original_name(self.epoch_num), checkpoint_file_name("epoch", self.epoch_num + 1, 0)]
        return None

    def _original_name(self, epoch_num: Optional[int]) -> str:
        from aitoolbox.experiment.local_save.local_model_save import model_file_name
        return model_file_name(self.experiment_name, self.saved_experiment_timestamp, epoch_num)

    def _local_checkpoint(self) -> Optional[str]:
        if not os.path.isdir(self.local_dir):
            return None
        wanted = self._wanted_files() or [self._original_name(None)]
        for name in wanted:
            if os.path.exists(os.path.join(self.local_dir, name)):  # a file, or a sharded folder
                return os.path.join(self.local_dir, name)
        return None if self._wanted_files() else find_latest_checkpoint(self.local_dir)

    def _cloud_checkpoint(self) -> str:
        cloud = cloud_backend(self.backend)
        bucket, cloud_prefix = self._cloud_details()
        prefix = "/".join(p for p in (cloud_prefix, self.project_name, self.folder_name, self.saved_model_dir) if p)
        wanted = self._wanted_files()
        names = {key[len(prefix) + 1:] for key in cloud.list_keys(bucket, prefix + "/")}
        if wanted is None:
            final = self._original_name(None)
            file_name = final if final in names else latest_cloud_checkpoint_file(bucket, prefix, self.backend)
        else:
            file_name = next((name for name in wanted if name in names), None)
        if file_name is None:
            raise FileNotFoundError(f"No checkpoint {' or '.join(wanted) if wanted else ''} in {self.local_dir!r} "
                                    f"nor under {cloud.uri(bucket, prefix)}/.")
        return cloud.uri(bucket, f"{prefix}/{file_name}")


def latest_cloud_checkpoint_file(bucket: str, prefix: str, backend: str = "s3") -> Optional[str]:
    """File name of the newest checkpoint under ``prefix/`` in an S3 (``backend='s3'``) or GCS (``'gcs'``)
    bucket (manifest, else newest object, else the newest aitoolbox 1.8 ``*_E<n>.pth`` file)."""
    cloud = cloud_backend(backend)
    names = {key[len(prefix) + 1:]: modified for key, modified in cloud.list_objects(bucket, prefix + "/")}
    if MANIFEST_FILE in names:
        with tempfile.TemporaryDirectory() as tmp_dir:
            local = os.path.join(tmp_dir, MANIFEST_FILE)
            cloud.download_file(bucket, f"{prefix}/{MANIFEST_FILE}", local)
            with open(local, encoding="utf-8") as f:
                entries = json.load(f).get("checkpoints", [])
        newest = newest_entry([e for e in entries if e["file"] in names])
        if newest is not None:
            return newest["file"]
    checkpoints = [name for name in names if name.endswith(".pt") and "/" not in name]
    if checkpoints:
        return max(checkpoints, key=names.get)
    return newest_original_checkpoint_name([name for name in names if "/" not in name])


def latest_s3_checkpoint_file(bucket: str, prefix: str) -> Optional[str]:
    """File name of the newest checkpoint under ``s3://bucket/prefix/`` (see :func:`latest_cloud_checkpoint_file`)."""
    return latest_cloud_checkpoint_file(bucket, prefix, "s3")


__all__ = ["ModelLoadContinueTraining", "latest_cloud_checkpoint_file", "latest_s3_checkpoint_file"]
