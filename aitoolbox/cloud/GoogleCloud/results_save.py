"""aitoolbox 1.8's Google Cloud Storage results saver: the S3 results saver over the GCS primitives.

Object names: ``<cloud_dir_prefix>/<project>/<experiment>_<timestamp>/results/<file name>`` for
every file the local results saver wrote.
"""
from __future__ import annotations

import os
from typing import Union

from aitoolbox.cloud.AWS.results_save import BaseResultsSaver, S3ResultsSaver
from aitoolbox.cloud.GoogleCloud.data_access import BaseGoogleStorageDataSaver
from aitoolbox.experiment.local_save.local_model_save import DEFAULT_RESULTS_ROOT
from aitoolbox.experiment.local_save.local_results_save import LocalResultsSaver


class BaseResultsGoogleStorageSaver(BaseGoogleStorageDataSaver, BaseResultsSaver):
    """Where the Google Cloud Storage results savers put their files.

    Args:
        bucket_name: the bucket.
        cloud_dir_prefix: object name prefix inside the bucket.
    """

    def __init__(self, bucket_name: str = "model-result", cloud_dir_prefix: str = ""):
        BaseGoogleStorageDataSaver.__init__(self, bucket_name)
        self.cloud_dir_prefix = cloud_dir_prefix


class GoogleStorageResultsSaver(BaseResultsGoogleStorageSaver, S3ResultsSaver):
    """Save a result package and the training history locally, then upload every file to GCS.

    ``save_experiment_results`` returns ``('<bucket>/<name of the main results file>', experiment_timestamp)``.

    Args:
        bucket_name: the bucket.
        cloud_dir_prefix: object name prefix inside the bucket.
        local_model_result_folder_path: results root folder.
    """

    def __init__(self, bucket_name: str = "model-result", cloud_dir_prefix: str = "",
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT):
        BaseResultsGoogleStorageSaver.__init__(self, bucket_name, cloud_dir_prefix)
        self.local_results_saver = LocalResultsSaver(local_model_result_folder_path)


__all__ = ["BaseResultsGoogleStorageSaver", "GoogleStorageResultsSaver"]
