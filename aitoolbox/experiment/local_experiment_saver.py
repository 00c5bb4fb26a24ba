"""aitoolbox 1.8's full local experiment savers: model file and results into the experiment folder."""
from __future__ import annotations

import datetime  # noqa: F401  (aitoolbox 1.8's module exposed it to ``import *``)
import os
import time  # noqa: F401  (as above)
from typing import List, Optional, Union

from aitoolbox.experiment.experiment_saver import AbstractExperimentSaver
from aitoolbox.experiment.local_save.local_model_save import (
    DEFAULT_RESULTS_ROOT, AbstractLocalModelSaver, PyTorchLocalModelSaver, timestamp_or_now)
from aitoolbox.experiment.local_save.local_results_save import LocalResultsSaver


class BaseFullExperimentLocalSaver(AbstractExperimentSaver):
    """Save the model with ``model_saver`` and the results with a ``LocalResultsSaver``.

    Args:
        model_saver: a local model saver (``AbstractLocalModelSaver``).
        project_name: project folder name.
        experiment_name: experiment name.
        local_model_result_folder_path: results root folder.

    Raises:
        TypeError: ``model_saver`` is not an ``AbstractLocalModelSaver``.
    """

    def __init__(self, model_saver: AbstractLocalModelSaver, project_name: str, experiment_name: str,
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT):
        if not isinstance(model_saver, AbstractLocalModelSaver):
            raise TypeError("model_saver must be an AbstractLocalModelSaver (e.g. PyTorchLocalModelSaver), got "
                            f"{type(model_saver).__name__}.")
        self.project_name = project_name
        self.experiment_name = experiment_name
        self.model_saver = model_saver
        self.results_saver = LocalResultsSaver(local_model_result_folder_path)

    def save_experiment(self, model, result_package, training_history, experiment_timestamp: Optional[str] = None,
                        save_true_pred_labels: bool = False, separate_files: bool = False,
                        protect_existing_folder: bool = True) -> List[str]:
        """Save the model and the results under one timestamp.

        Returns:
            The local paths: the model file, then every results file (main results file first).
        """
        experiment_timestamp = timestamp_or_now(experiment_timestamp)
        _, model_path = self.model_saver.save_model(
            model=model, project_name=self.project_name, experiment_name=self.experiment_name,
            experiment_timestamp=experiment_timestamp, protect_existing_folder=protect_existing_folder)
        save = (self.results_saver.save_experiment_results_separate_files if separate_files
                else self.results_saver.save_experiment_results)
        saved = save(result_package=result_package, training_history=training_history,
                     project_name=self.project_name, experiment_name=self.experiment_name,
                     experiment_timestamp=experiment_timestamp, save_true_pred_labels=save_true_pred_labels,
                     protect_existing_folder=protect_existing_folder)
        return [model_path] + [path for _, path in saved]


class FullPyTorchExperimentLocalSaver(BaseFullExperimentLocalSaver):
    """Save a PyTorch experiment (model dict and results) into the local experiment folder.

    Args:
        project_name: project folder name.
        experiment_name: experiment name.
        local_model_result_folder_path: results root folder.
    """

    def __init__(self, project_name: str, experiment_name: str,
                 local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT):
        BaseFullExperimentLocalSaver.__init__(self, PyTorchLocalModelSaver(local_model_result_folder_path),
                                              project_name, experiment_name,
                                              local_model_result_folder_path=local_model_result_folder_path)
