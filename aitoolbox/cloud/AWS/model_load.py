"""aitoolbox 1.8's S3 model loaders: download the saved model file (unless it is on the local disk
already) into the experiment folder's layout, then load it with the local model loader."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Union

from aitoolbox.cloud.AWS.data_access import BaseDataLoader
from aitoolbox.cloud.AWS.model_save import experiment_cloud_prefix
from aitoolbox.experiment.experiment_folder import ExperimentFolder
from aitoolbox.experiment.local_load.local_model_load import (
    AbstractLocalModelLoader, PyTorchLocalModelLoader, model_file_candidates)
from aitoolbox.experiment.local_save.local_model_save import DEFAULT_RESULTS_ROOT


class BaseModelLoader(BaseDataLoader):
    """Download a saved model from S3 and load it with ``local_model_loader``.

    Args:
        local_model_loader: the framework's local loader (an ``AbstractLocalModelLoader``).
        local_model_result_folder_path: results root folder the file is downloaded into.
        bucket_name: the S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.

    Raises:
        TypeError: ``local_model_loader`` is not an ``AbstractLocalModelLoader``.
    """

    def __init__(self, local_model_loader: AbstractLocalModelLoader,
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 bucket_name: str = "model-result", cloud_dir_prefix: str = ""):
        if not isinstance(local_model_loader, AbstractLocalModelLoader):
            raise TypeError("local_model_loader must be an AbstractLocalModelLoader (e.g. PyTorchLocalModelLoader), "
                            f"got {type(local_model_loader).__name__}.")
        BaseDataLoader.__init__(self, bucket_name, local_model_result_folder_path)
        self.local_model_result_folder_path = self.local_base_data_folder_path
        self.cloud_dir_prefix = cloud_dir_prefix
        self.local_model_loader = local_model_loader

    def load_model(self, project_name: str, experiment_name: str, experiment_timestamp: str,
                   model_save_dir: str = "checkpoint_model", epoch_num: Optional[int] = None,
                   **kwargs) -> Dict[str, Any]:
        """Download ``model_<experiment>_<timestamp>[_E<epoch_num>].pth`` (if not local) and load it.

        This aitoolbox's ``model.pt`` / ``model_epoch_<epoch_num + 1>.pt`` are found as well (see
        :func:`~aitoolbox.experiment.local_load.local_model_load.model_file_candidates`).

        Args:
            project_name: project folder name.
            experiment_name: experiment name.
            experiment_timestamp: the experiment folder's timestamp.
            model_save_dir: folder inside the experiment folder.
            epoch_num: the checkpoint's epoch; None for the final model.
            **kwargs: passed to the local loader's ``load_model`` (e.g. ``map_location``).

        Returns:
            The model dict.

        Raises:
            FileNotFoundError: the file is neither on the local disk nor in the bucket.
        """
        experiment_path = ExperimentFolder.create_base_folder(project_name, experiment_name, experiment_timestamp,
                                                              self.local_model_result_folder_path)
        prefix = experiment_cloud_prefix(self.cloud_dir_prefix, project_name, experiment_name, experiment_timestamp,
                                         model_save_dir)
        names = model_file_candidates(experiment_name, experiment_timestamp, epoch_num)
        local_paths = [os.path.join(experiment_path, model_save_dir, name) for name in names]
        if not any(os.path.isfile(path) for path in local_paths):
            found = any(self.load_file(f"{prefix}/{name}", path, log_missing=False)
                        for name, path in zip(names, local_paths))
            if not found:
                raise FileNotFoundError(f"No saved model {' or '.join(names)} in {os.path.dirname(local_paths[0])!r} "
                                        f"nor at {self.cloud_scheme}{self.bucket_name}/{prefix}/.")
        return self.local_model_loader.load_model(project_name, experiment_name, experiment_timestamp,
                                                  model_save_dir, epoch_num, **kwargs)


class PyTorchS3ModelLoader(BaseModelLoader):
    """Download a saved PyTorch model dict from S3 and initialise model, optimizer, schedulers, scaler.

    Args:
        local_model_result_folder_path: results root folder the file is downloaded into.
        bucket_name: the S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
    """

    def __init__(self, local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 bucket_name: str = "model-result", cloud_dir_prefix: str = ""):
        BaseModelLoader.__init__(self, PyTorchLocalModelLoader(local_model_result_folder_path),
                                 local_model_result_folder_path, bucket_name, cloud_dir_prefix)

    def init_model(self, model, used_data_parallel: bool = False):
        """See :meth:`PyTorchLocalModelLoader.init_model`."""
        return self.local_model_loader.init_model(model, used_data_parallel)

    def init_optimizer(self, optimizer, device: str = "cuda"):
        """See :meth:`PyTorchLocalModelLoader.init_optimizer`."""
        return self.local_model_loader.init_optimizer(optimizer, device)

    def init_scheduler(self, scheduler_callbacks_list: List, ignore_saved: bool = False,
                       ignore_missing_saved: bool = False) -> List:
        """See :meth:`PyTorchLocalModelLoader.init_scheduler`."""
        return self.local_model_loader.init_scheduler(scheduler_callbacks_list, ignore_saved, ignore_missing_saved)

    def init_amp(self, amp_scaler):
        """See :meth:`PyTorchLocalModelLoader.init_amp`."""
        return self.local_model_loader.init_amp(amp_scaler)
