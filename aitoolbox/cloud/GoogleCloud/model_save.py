"""aitoolbox 1.8's Google Cloud Storage model savers: the S3 model savers over the GCS primitives.

The object name mirrors the local layout, as on S3::

    <cloud_dir_prefix>/<project>/<experiment>_<timestamp>/model|checkpoint_model/<model file>
"""
from __future__ import annotations

import os
from typing import Union

from aitoolbox.cloud.AWS.model_save import BaseModelSaver, PyTorchS3ModelSaver
from aitoolbox.cloud.GoogleCloud.data_access import BaseGoogleStorageDataSaver
from aitoolbox.experiment.local_save.local_model_save import DEFAULT_RESULTS_ROOT, PyTorchLocalModelSaver


class BaseModelGoogleStorageSaver(BaseGoogleStorageDataSaver, BaseModelSaver):
    """Where the Google Cloud Storage model savers put their files.

    Args:
        bucket_name: the bucket.
        cloud_dir_prefix: object name prefix inside the bucket.
        checkpoint_model: True: ``checkpoint_model/``; False: ``model/``.
    """

    def __init__(self, bucket_name: str = "model-result", cloud_dir_prefix: str = "",
                 checkpoint_model: bool = False):
        BaseGoogleStorageDataSaver.__init__(self, bucket_name)
        self.cloud_dir_prefix = cloud_dir_prefix
        self.checkpoint_model = checkpoint_model


class PyTorchGoogleStorageModelSaver(BaseModelGoogleStorageSaver, PyTorchS3ModelSaver):
    """Save a PyTorch checkpoint dict locally (aitoolbox 1.8's layout) and upload it to GCS.

    ``save_model`` returns ``('<bucket>/<object name>', experiment_timestamp, model_local_path)``.

    Args:
        bucket_name: the bucket.
        cloud_dir_prefix: object name prefix inside the bucket.
        local_model_result_folder_path: results root folder.
        checkpoint_model: True: ``checkpoint_model/``; False: ``model/``.
    """

    def __init__(self, bucket_name: str = "model-result", cloud_dir_prefix: str = "",
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 checkpoint_model: bool = False):
        BaseModelGoogleStorageSaver.__init__(self, bucket_name, cloud_dir_prefix, checkpoint_model)
        self.pytorch_local_saver = PyTorchLocalModelSaver(local_model_result_folder_path, checkpoint_model)


__all__ = ["BaseModelGoogleStorageSaver", "PyTorchGoogleStorageModelSaver"]
