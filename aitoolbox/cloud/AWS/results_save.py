"""aitoolbox 1.8's S3 results saver: the local results saver, then (waited-for) uploads to S3.

Keys: ``<cloud_dir_prefix>/<project>/<experiment>_<timestamp>/results/<file name>`` for every
file the local saver wrote (results, plots, the package's additional files).
"""
from __future__ import annotations

import datetime  # noqa: F401  (aitoolbox 1.8's module exposed it to ``import *``)
import os
import time  # noqa: F401  (as above)
from abc import ABC, abstractmethod
from typing import Optional, Tuple, Union

from aitoolbox.cloud.AWS.data_access import BaseDataSaver
from aitoolbox.cloud.AWS.model_save import experiment_cloud_prefix
from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.local_save.local_model_save import DEFAULT_RESULTS_ROOT, timestamp_or_now
from aitoolbox.experiment.local_save.local_results_save import LocalResultsSaver


class AbstractResultsSaver(ABC):
    """Interface of the cloud results savers."""

    @abstractmethod
    def save_experiment_results(self, result_package, training_history, project_name: str,
                                experiment_name: str, experiment_timestamp: Optional[str] = None,
                                save_true_pred_labels: bool = False, separate_files: bool = False,
                                protect_existing_folder: bool = True) -> Tuple[str, str]:
        """Save the results locally and upload them.

        Returns:
            ``(cloud path '<bucket>/<key>' of the main results file, experiment_timestamp)``.
        """


class BaseResultsSaver(BaseDataSaver):
    """Where the S3 results savers put their files.

    Args:
        bucket_name: the S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
    """

    def __init__(self, bucket_name: str = "model-result", cloud_dir_prefix: str = ""):
        BaseDataSaver.__init__(self, bucket_name)
        self.cloud_dir_prefix = cloud_dir_prefix

    def create_experiment_cloud_storage_folder_structure(self, project_name: str, experiment_name: str,
                                                         experiment_timestamp: str) -> str:
        """The key prefix of the experiment's results folder (nothing is created on S3)."""
        return experiment_cloud_prefix(self.cloud_dir_prefix, project_name, experiment_name, experiment_timestamp,
                                       ef.RESULTS_DIR)


class S3ResultsSaver(AbstractResultsSaver, BaseResultsSaver):
    """Save a result package and the training history locally, then upload every file to S3.

    Args:
        bucket_name: the S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        local_model_result_folder_path: results root folder.
    """

    def __init__(self, bucket_name: str = "model-result", cloud_dir_prefix: str = "",
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT):
        BaseResultsSaver.__init__(self, bucket_name, cloud_dir_prefix)
        self.local_results_saver = LocalResultsSaver(local_model_result_folder_path)

    def save_experiment_results(self, result_package, training_history, project_name: str,
                                experiment_name: str, experiment_timestamp: Optional[str] = None,
                                save_true_pred_labels: bool = False, separate_files: bool = False,
                                protect_existing_folder: bool = True) -> Tuple[str, str]:
        """Write the results files locally, upload each one and wait for the uploads.

        Returns:
            ``('<bucket>/<key of the main results file>', experiment_timestamp)``.
        """
        experiment_timestamp = timestamp_or_now(experiment_timestamp)
        save = (self.local_results_saver.save_experiment_results_separate_files if separate_files
                else self.local_results_saver.save_experiment_results)
        saved = save(result_package, training_history, project_name, experiment_name, experiment_timestamp,
                     save_true_pred_labels, protect_existing_folder)
        prefix = self.create_experiment_cloud_storage_folder_structure(project_name, experiment_name,
                                                                       experiment_timestamp)
        for name_in_results, local_path in saved:
            self.save_file(local_file_path=local_path, cloud_file_path=f"{prefix}/{name_in_results}")
        return f"{self.bucket_name}/{prefix}/{saved[0][0]}", experiment_timestamp
