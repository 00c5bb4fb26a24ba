"""Continue training from a checkpoint: :class:`ModelLoadContinueTraining`.

The same can be done without a callback::

    loop.load_checkpoint("results/project/exp_2024-05-01_13-45-12/checkpoint_model/model_epoch_2.pt")
    loop.fit(num_epochs=4)      # totals: trains epochs 3 and 4

``num_epochs`` / ``num_iterations`` are totals, so the resumed run ends where the uninterrupted
one would have ended, with bit-identical weights on CPU.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Optional, Union

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.checkpoint_registry import MANIFEST_FILE, find_latest_checkpoint, newest_entry
from aitoolbox.experiment.experiment_store import cloud_backend, validate_cloud_save_mode
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

logger = logging.getLogger("aitoolbox")


class ModelLoadContinueTraining(AbstractCallback):
    """Load a checkpoint into the TrainLoop when registered, so that ``fit`` continues that run.

    Give either ``checkpoint_path`` (a local file or an ``s3://`` / ``gs://`` URI), or the saved
    experiment: ``saved_experiment_timestamp``, ``project_name``, ``experiment_name`` and
    ``local_model_result_folder_path``. Of an experiment the newest checkpoint is loaded (or
    ``checkpoint_file``); with ``cloud_save_mode='s3'`` or ``'gcs'`` it is fetched from the bucket when the
    local folder does not have it. The checkpoint is loaded once, at the first ``fit``.

    Args:
        saved_experiment_timestamp: timestamp part of the experiment folder name.
        saved_model_dir: the checkpoint folder inside the experiment folder.
        project_name: project folder name.
        experiment_name: experiment name.
        local_model_result_folder_path: results root folder.
        used_data_parallel: accepted for compatibility; checkpoints never carry wrapper prefixes.
        cloud_save_mode: ``'s3'`` or ``'gcs'`` (and their aliases) to fall back to the bucket;
            None / ``'local'``: local only.
        bucket_name: the S3 / GCS bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        checkpoint_path: load this checkpoint instead of looking one up in an experiment folder.
        checkpoint_file: file name inside ``saved_model_dir``; None: the newest checkpoint.

    Raises:
        TypeError, ValueError: missing or invalid arguments, before any training.
    """

    def __init__(self, saved_experiment_timestamp: Optional[str] = None,
                 saved_model_dir: str = ef.CHECKPOINT_DIR, project_name: Optional[str] = None,
                 experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]] = None,
                 used_data_parallel: bool = False, cloud_save_mode: Optional[str] = None,
                 bucket_name: str = "model-result", cloud_dir_prefix: str = "", *,
                 checkpoint_path: Optional[str] = None, checkpoint_file: Optional[str] = None):
        super().__init__("Model load continue training", execution_order=-1000)
        self.backend = validate_cloud_save_mode(cloud_save_mode)
        self.bucket_name, self.cloud_dir_prefix = bucket_name, ef.validate_cloud_dir_prefix(cloud_dir_prefix)
        self.checkpoint_path = checkpoint_path
        self.checkpoint_file = None if checkpoint_file is None else ef.validate_name(checkpoint_file,
                                                                                     "checkpoint_file")
        self.loaded_path: Optional[str] = None
        if checkpoint_path is None:
            self._init_experiment(saved_experiment_timestamp, saved_model_dir, project_name, experiment_name,
                                  local_model_result_folder_path)
        elif not isinstance(checkpoint_path, (str, os.PathLike)):
            raise TypeError("checkpoint_path must be a path or an s3:// / gs:// URI, got "
                            f"{type(checkpoint_path).__name__}.")

    def _init_experiment(self, timestamp, saved_model_dir, project_name, experiment_name, root) -> None:
        given = {"saved_experiment_timestamp": timestamp, "project_name": project_name,
                 "experiment_name": experiment_name, "local_model_result_folder_path": root}
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(f"ModelLoadContinueTraining needs checkpoint_path, or all of {list(given)}; "
                             f"missing {missing}.")
        self.project_name = ef.validate_name(project_name, "project_name")
        self.folder_name = f"{ef.validate_name(experiment_name, 'experiment_name')}_" \
                           f"{ef.validate_name(timestamp, 'saved_experiment_timestamp')}"
        self.saved_model_dir = ef.validate_name(saved_model_dir, "saved_model_dir")
        self.local_dir = os.path.join(os.path.abspath(os.fspath(root)), project_name, self.folder_name,
                                      self.saved_model_dir)
        if self.backend is None and not os.path.isdir(self.local_dir):
            raise ValueError(f"No checkpoint folder at {self.local_dir!r}: check project_name, experiment_name, "
                             "saved_experiment_timestamp and local_model_result_folder_path, or set "
                             "cloud_save_mode='s3' or 'gcs' to load from the bucket.")

    def on_train_loop_registration(self):
        if self.loaded_path is not None:
            return
        path = self.resolve_checkpoint()
        self.train_loop_obj.load_checkpoint(path)
        self.loaded_path = path
        logger.info("Continuing training from checkpoint %s (epoch %d, %d batches done).", path,
                    self.train_loop_obj.epoch, self.train_loop_obj.total_iteration_idx)

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
        raise FileNotFoundError(f"No checkpoint in {self.local_dir!r}.")

    def _local_checkpoint(self) -> Optional[str]:
        if self.checkpoint_file is not None:
            path = os.path.join(self.local_dir, self.checkpoint_file)
            return path if os.path.isfile(path) else None
        return find_latest_checkpoint(self.local_dir) if os.path.isdir(self.local_dir) else None

    def _cloud_checkpoint(self) -> str:
        cloud = cloud_backend(self.backend)
        prefix = "/".join(p for p in (self.cloud_dir_prefix, self.project_name, self.folder_name,
                                      self.saved_model_dir) if p)
        file_name = self.checkpoint_file or latest_cloud_checkpoint_file(self.bucket_name, prefix, self.backend)
        if file_name is None:
            raise FileNotFoundError(f"No checkpoint under {cloud.uri(self.bucket_name, prefix)}/.")
        return cloud.uri(self.bucket_name, f"{prefix}/{file_name}")


def latest_cloud_checkpoint_file(bucket: str, prefix: str, backend: str = "s3") -> Optional[str]:
    """File name of the newest checkpoint under ``prefix/`` in an S3 (``backend='s3'``) or GCS
    (``'gcs'``) bucket: the manifest's newest entry, else the most recently modified object."""
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
    return max(checkpoints, key=names.get) if checkpoints else None


def latest_s3_checkpoint_file(bucket: str, prefix: str) -> Optional[str]:
    """File name of the newest checkpoint under ``s3://bucket/prefix/`` (manifest, else newest object)."""
    return latest_cloud_checkpoint_file(bucket, prefix, "s3")


__all__ = ["ModelLoadContinueTraining", "latest_cloud_checkpoint_file", "latest_s3_checkpoint_file"]
