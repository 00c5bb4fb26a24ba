"""aitoolbox 1.8's Google Cloud Storage model loaders: the S3 model loaders over the GCS primitives.

The saved model file is downloaded (unless it is on the local disk already) into the experiment
folder's layout, then loaded with the local model loader.
"""
from __future__ import annotations

import os
from typing import Union

from aitoolbox.cloud.AWS.model_load import BaseModelLoader, PyTorchS3ModelLoader
from aitoolbox.cloud.GoogleCloud.data_access import BaseGoogleStorageDataLoader
from aitoolbox.experiment.local_load.local_model_load import AbstractLocalModelLoader, PyTorchLocalModelLoader
from aitoolbox.experiment.local_save.local_model_save import DEFAULT_RESULTS_ROOT


class BaseModelGoogleStorageLoader(BaseGoogleStorageDataLoader, BaseModelLoader):
    """Download a saved model from GCS and load it with ``local_model_loader``.

    Args:
        local_model_loader: the framework's local loader (an ``AbstractLocalModelLoader``).
        local_model_result_folder_path: results root folder the file is downloaded into.
        bucket_name: the bucket.
        cloud_dir_prefix: object name prefix inside the bucket.

    Raises:
        TypeError: ``local_model_loader`` is not an ``AbstractLocalModelLoader``.
    """

    def __init__(self, local_model_loader: AbstractLocalModelLoader,
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 bucket_name: str = "model-result", cloud_dir_prefix: str = ""):
        if not isinstance(local_model_loader, AbstractLocalModelLoader):
            raise TypeError("local_model_loader must be an AbstractLocalModelLoader (e.g. PyTorchLocalModelLoader), "
                            f"got {type(local_model_loader).__name__}.")
        BaseGoogleStorageDataLoader.__init__(self, bucket_name, local_model_result_folder_path)
        self.local_model_result_folder_path = self.local_dataset_folder_path
        self.cloud_dir_prefix = cloud_dir_prefix
        self.local_model_loader = local_model_loader


class PyTorchGoogleStorageModelLoader(BaseModelGoogleStorageLoader, PyTorchS3ModelLoader):
    """Download a saved PyTorch model dict from GCS and initialise model, optimizer, schedulers, scaler.

    Args:
        local_model_result_folder_path: results root folder the file is downloaded into.
        bucket_name: the bucket.
        cloud_dir_prefix: object name prefix inside the bucket.
    """

    def __init__(self, local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 bucket_name: str = "model-result", cloud_dir_prefix: str = ""):
        BaseModelGoogleStorageLoader.__init__(self, PyTorchLocalModelLoader(local_model_result_folder_path),
                                              local_model_result_folder_path, bucket_name, cloud_dir_prefix)


__all__ = ["BaseModelGoogleStorageLoader", "PyTorchGoogleStorageModelLoader"]
