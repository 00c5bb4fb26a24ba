"""aitoolbox 1.8's full experiment savers: a model saver and a results saver used together.

``save_experiment`` writes the model and the results of one experiment under one timestamp,
locally in the experiment folder and in the bucket (S3, or Google Cloud Storage through
:mod:`aitoolbox.cloud.GoogleCloud`, imported only when such a saver is built).
"""
from __future__ import annotations

import datetime  # noqa: F401  (aitoolbox 1.8's module exposed it to ``import *``)
import os
import time  # noqa: F401  (as above)
from abc import ABC, abstractmethod
from typing import Any, Optional, Tuple, Union

from aitoolbox.experiment.local_save.local_model_save import DEFAULT_RESULTS_ROOT, timestamp_or_now


class AbstractExperimentSaver(ABC):
    """Interface of the full experiment savers."""

    @abstractmethod
    def save_experiment(self, model, result_package, training_history, experiment_timestamp: Optional[str] = None,
                        save_true_pred_labels: bool = False, separate_files: bool = False,
                        protect_existing_folder: bool = True):
        """Save the model and the results of an experiment.

        Args:
            model: the model's representation (for PyTorch the checkpoint dict).
            result_package: a prepared result package.
            training_history: the ``TrainingHistory``.
            experiment_timestamp: the experiment folder's timestamp; None: now.
            save_true_pred_labels: also save the true and predicted labels.
            separate_files: results, hyperparameters and history in separate files.
            protect_existing_folder: accepted for compatibility; an existing folder is reused.

        Returns:
            Where the files were saved.
        """


class BaseFullExperimentSaver(AbstractExperimentSaver):
    """Save the model with ``model_saver`` and the results with ``results_saver`` (cloud savers).

    Args:
        model_saver: e.g. ``PyTorchS3ModelSaver``.
        results_saver: e.g. ``S3ResultsSaver``.
        project_name: project folder name.
        experiment_name: experiment name.
    """

    def __init__(self, model_saver, results_saver, project_name: str, experiment_name: str):
        self.model_saver = model_saver
        self.results_saver = results_saver
        self.project_name = project_name
        self.experiment_name = experiment_name

    def save_experiment(self, model, result_package, training_history, experiment_timestamp: Optional[str] = None,
                        save_true_pred_labels: bool = False, separate_files: bool = False,
                        protect_existing_folder: bool = True) -> Tuple[str, str]:
        """Save the model and the results under one timestamp.

        Returns:
            ``(cloud path of the model, cloud path of the main results file)``, each ``<bucket>/<key>``.
        """
        experiment_timestamp = timestamp_or_now(experiment_timestamp)
        cloud_model_path, _, _ = self.model_saver.save_model(
            model=model, project_name=self.project_name, experiment_name=self.experiment_name,
            experiment_timestamp=experiment_timestamp, protect_existing_folder=protect_existing_folder)
        cloud_results_path, _ = self.results_saver.save_experiment_results(
            result_package=result_package, training_history=training_history, project_name=self.project_name,
            experiment_name=self.experiment_name, experiment_timestamp=experiment_timestamp,
            save_true_pred_labels=save_true_pred_labels, separate_files=separate_files,
            protect_existing_folder=protect_existing_folder)
        return cloud_model_path, cloud_results_path


class BaseFullExperimentS3Saver(BaseFullExperimentSaver):
    """Full experiment saver to S3 with ``model_saver`` and an ``S3ResultsSaver``.

    Args:
        model_saver: the S3 model saver.
        project_name: project folder name.
        experiment_name: experiment name.
        bucket_name: the S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        local_model_result_folder_path: results root folder.
    """

    def __init__(self, model_saver, project_name: str, experiment_name: str, bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "",
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT):
        from aitoolbox.cloud.AWS.results_save import S3ResultsSaver

        results_saver = S3ResultsSaver(bucket_name=bucket_name, cloud_dir_prefix=cloud_dir_prefix,
                                       local_model_result_folder_path=local_model_result_folder_path)
        BaseFullExperimentSaver.__init__(self, model_saver, results_saver, project_name, experiment_name)


class FullPyTorchExperimentS3Saver(BaseFullExperimentS3Saver):
    """Save a PyTorch experiment (model dict and results) locally and to S3.

    Args:
        project_name: project folder name.
        experiment_name: experiment name.
        bucket_name: the S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        local_model_result_folder_path: results root folder.
    """

    def __init__(self, project_name: str, experiment_name: str, bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "",
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT):
        from aitoolbox.cloud.AWS.model_save import PyTorchS3ModelSaver

        model_saver = PyTorchS3ModelSaver(bucket_name=bucket_name, cloud_dir_prefix=cloud_dir_prefix,
                                          local_model_result_folder_path=local_model_result_folder_path)
        BaseFullExperimentS3Saver.__init__(self, model_saver, project_name, experiment_name, bucket_name=bucket_name,
                                           cloud_dir_prefix=cloud_dir_prefix,
                                           local_model_result_folder_path=local_model_result_folder_path)


class BaseFullExperimentGoogleStorageSaver(BaseFullExperimentSaver):
    """Full experiment saver to Google Cloud Storage with ``model_saver`` and a ``GoogleStorageResultsSaver``.

    Needs ``google-cloud-storage`` (imported when the saver is built).

    Args:
        model_saver: the Google Cloud Storage model saver.
        project_name: project folder name.
        experiment_name: experiment name.
        bucket_name: the bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        local_model_result_folder_path: results root folder.
    """

    def __init__(self, model_saver, project_name: str, experiment_name: str, bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "",
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT):
        from aitoolbox.cloud.GoogleCloud.results_save import GoogleStorageResultsSaver

        results_saver = GoogleStorageResultsSaver(bucket_name=bucket_name, cloud_dir_prefix=cloud_dir_prefix,
                                                  local_model_result_folder_path=local_model_result_folder_path)
        BaseFullExperimentSaver.__init__(self, model_saver, results_saver, project_name, experiment_name)


class FullPyTorchExperimentGoogleStorageSaver(BaseFullExperimentGoogleStorageSaver):
    """Save a PyTorch experiment (model dict and results) locally and to Google Cloud Storage.

    Args:
        project_name: project folder name.
        experiment_name: experiment name.
        bucket_name: the bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        local_model_result_folder_path: results root folder.
    """

    def __init__(self, project_name: str, experiment_name: str, bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "",
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT):
        from aitoolbox.cloud.GoogleCloud.model_save import PyTorchGoogleStorageModelSaver

        model_saver = PyTorchGoogleStorageModelSaver(bucket_name=bucket_name, cloud_dir_prefix=cloud_dir_prefix,
                                                     local_model_result_folder_path=local_model_result_folder_path)
        BaseFullExperimentGoogleStorageSaver.__init__(
            self, model_saver, project_name, experiment_name, bucket_name=bucket_name,
            cloud_dir_prefix=cloud_dir_prefix, local_model_result_folder_path=local_model_result_folder_path)
