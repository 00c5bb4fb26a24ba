"""aitoolbox 1.8's S3 model savers: the local model saver, then a (waited-for) upload to S3.

The key mirrors the local layout::

    <cloud_dir_prefix>/<project>/<experiment>_<timestamp>/model|checkpoint_model/<model file>
"""
from __future__ import annotations

import datetime  # noqa: F401  (aitoolbox 1.8's module exposed it to ``import *``)
import os
import time  # noqa: F401  (as above)
from abc import ABC, abstractmethod
from typing import Any, Dict, Optional, Tuple, Union

from aitoolbox.cloud.AWS.data_access import BaseDataSaver
from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.local_save.local_model_save import (
    DEFAULT_RESULTS_ROOT, PyTorchLocalModelSaver, timestamp_or_now)


def experiment_cloud_prefix(cloud_dir_prefix: str, project_name: str, experiment_name: str,
                            experiment_timestamp: str, *sub_folders: str) -> str:
    """``<cloud_dir_prefix>/<project>/<experiment>_<timestamp>[/<sub folders>]`` without empty parts."""
    parts = [ef.validate_cloud_dir_prefix(cloud_dir_prefix), project_name,
             f"{experiment_name}_{experiment_timestamp}", *sub_folders]
    return "/".join(part for part in parts if part)


class AbstractModelSaver(ABC):
    """Interface of the cloud model savers."""

    @abstractmethod
    def save_model(self, model, project_name: str, experiment_name: str,
                   experiment_timestamp: Optional[str] = None, epoch: Optional[int] = None,
                   iteration_idx: Optional[int] = None,
                   protect_existing_folder: bool = True) -> Tuple[str, str, str]:
        """Save the model locally and upload it.

        Returns:
            ``(cloud path '<bucket>/<key>', experiment_timestamp, model_local_path)``.
        """


class BaseModelSaver(BaseDataSaver):
    """Where the S3 model savers put their files.

    Args:
        bucket_name: the S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        checkpoint_model: True: ``checkpoint_model/``; False: ``model/``.
    """

    def __init__(self, bucket_name: str = "model-result", cloud_dir_prefix: str = "",
                 checkpoint_model: bool = False):
        BaseDataSaver.__init__(self, bucket_name)
        self.cloud_dir_prefix = cloud_dir_prefix
        self.checkpoint_model = checkpoint_model

    def create_experiment_cloud_storage_folder_structure(self, project_name: str, experiment_name: str,
                                                         experiment_timestamp: str) -> str:
        """The key prefix of the experiment's model folder (nothing is created on S3)."""
        return experiment_cloud_prefix(self.cloud_dir_prefix, project_name, experiment_name, experiment_timestamp,
                                       ef.CHECKPOINT_DIR if self.checkpoint_model else ef.MODEL_DIR)


class PyTorchS3ModelSaver(AbstractModelSaver, BaseModelSaver):
    """Save a PyTorch checkpoint dict locally (aitoolbox 1.8's layout) and upload it to S3.

    Args:
        bucket_name: the S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        local_model_result_folder_path: results root folder.
        checkpoint_model: True: ``checkpoint_model/``; False: ``model/``.
    """

    def __init__(self, bucket_name: str = "model-result", cloud_dir_prefix: str = "",
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 checkpoint_model: bool = False):
        BaseModelSaver.__init__(self, bucket_name, cloud_dir_prefix, checkpoint_model)
        self.pytorch_local_saver = PyTorchLocalModelSaver(local_model_result_folder_path, checkpoint_model)

    def save_model(self, model: Dict[str, Any], project_name: str, experiment_name: str,
                   experiment_timestamp: Optional[str] = None, epoch: Optional[int] = None,
                   iteration_idx: Optional[int] = None,
                   protect_existing_folder: bool = True) -> Tuple[str, str, str]:
        """Write the model file locally, upload it and wait for the upload.

        Returns:
            ``('<bucket>/<key>', experiment_timestamp, model_local_path)``.

        Raises:
            ValueError: ``model`` lacks a required key.
        """
        PyTorchLocalModelSaver.check_model_dict_contents(model)
        experiment_timestamp = timestamp_or_now(experiment_timestamp)
        model_name, local_path = self.pytorch_local_saver.save_model(
            model, project_name, experiment_name, experiment_timestamp, epoch, iteration_idx,
            protect_existing_folder)
        key = "/".join([self.create_experiment_cloud_storage_folder_structure(
            project_name, experiment_name, experiment_timestamp), model_name])
        self.save_file(local_file_path=local_path, cloud_file_path=key)
        return f"{self.bucket_name}/{key}", experiment_timestamp, local_path
