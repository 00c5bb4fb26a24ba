"""aitoolbox 1.8's local model savers, written on our experiment folder and atomic writers.

A model (the checkpoint dict of a PyTorch training run) is written to::

    <root>/<project>/<experiment>_<timestamp>/model/model_<experiment>_<timestamp>.pth
    <root>/<project>/<experiment>_<timestamp>/checkpoint_model/model_<experiment>_<timestamp>_E<epoch>[_ITER<i>].pth

the file layout aitoolbox 1.8 used, so that its users' scripts and loaders find the files where
they always were. The file is written atomically (temporary file, fsync, rename).
"""
from __future__ import annotations

import datetime  # noqa: F401  (aitoolbox 1.8's module exposed it to ``import *``)
import logging
import os
import time  # noqa: F401  (as above)
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.experiment_folder import ExperimentFolder
from aitoolbox.utils.io import atomic_torch_save

logger = logging.getLogger("aitoolbox")

DEFAULT_RESULTS_ROOT = "~/project/model_result"
#: keys every PyTorch model dict must have (aitoolbox 1.8's checkpoint layout)
REQUIRED_MODEL_KEYS = ("model_state_dict", "optimizer_state_dict", "epoch", "hyperparams")


def timestamp_or_now(experiment_timestamp: Optional[str]) -> str:
    """``experiment_timestamp``, or the current time in the experiment folder format."""
    return ef.new_timestamp() if experiment_timestamp is None else experiment_timestamp


def model_file_name(experiment_name: str, experiment_timestamp: str, epoch: Optional[int] = None,
                    iteration_idx: Optional[int] = None, extension: str = ".pth") -> str:
    """aitoolbox 1.8's model file name.

    ``model_<experiment>_<timestamp>.pth`` for a final model, ``..._E<epoch>.pth`` for a
    checkpoint and ``..._E<epoch>_ITER<iteration_idx>.pth`` for a mid-epoch checkpoint.
    """
    if epoch is None:
        return f"model_{experiment_name}_{experiment_timestamp}{extension}"
    suffix = "" if iteration_idx is None else f"_ITER{iteration_idx}"
    return f"model_{experiment_name}_{experiment_timestamp}_E{epoch}{suffix}{extension}"


class AbstractLocalModelSaver(ABC):
    """Interface of the local model savers."""

    @abstractmethod
    def save_model(self, model, project_name: str, experiment_name: str,
                   experiment_timestamp: Optional[str] = None, epoch: Optional[int] = None,
                   iteration_idx: Optional[int] = None,
                   protect_existing_folder: bool = True) -> Tuple[str, str]:
        """Save ``model`` into the experiment folder.

        Args:
            model: the model's representation (for PyTorch the checkpoint dict).
            project_name: project folder name.
            experiment_name: experiment name.
            experiment_timestamp: the experiment folder's timestamp; None: now.
            epoch: the epoch of a checkpoint; None for the final model.
            iteration_idx: the training iteration of a mid-epoch checkpoint.
            protect_existing_folder: accepted for compatibility; an existing folder is reused.

        Returns:
            ``(model_file_name, model_local_path)``.
        """


class BaseLocalModelSaver:
    """Where the local model savers put their files.

    Args:
        local_model_result_folder_path: results root folder (``~`` is expanded).
        checkpoint_model: True writes into ``checkpoint_model/``, False into ``model/``.
    """

    def __init__(self, local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 checkpoint_model: bool = False):
        self.local_model_result_folder_path = os.path.expanduser(os.fspath(local_model_result_folder_path))
        self.checkpoint_model = checkpoint_model

    @property
    def model_dir_name(self) -> str:
        """``checkpoint_model`` or ``model``."""
        return ef.CHECKPOINT_DIR if self.checkpoint_model else ef.MODEL_DIR

    def create_experiment_local_models_folder(self, project_name: str, experiment_name: str,
                                              experiment_timestamp: str) -> str:
        """Create (or reuse) the experiment folder and its model folder; returns the latter's path."""
        experiment_path = ExperimentFolder.create_base_folder(project_name, experiment_name, experiment_timestamp,
                                                              self.local_model_result_folder_path)
        model_path = os.path.join(experiment_path, self.model_dir_name)
        os.makedirs(model_path, exist_ok=True)
        return model_path


class PyTorchLocalModelSaver(AbstractLocalModelSaver, BaseLocalModelSaver):
    """Save a PyTorch checkpoint dict into the experiment folder (aitoolbox 1.8's layout).

    Args:
        local_model_result_folder_path: results root folder (``~`` is expanded).
        checkpoint_model: True writes into ``checkpoint_model/``, False into ``model/``.
    """

    def __init__(self, local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 checkpoint_model: bool = False):
        BaseLocalModelSaver.__init__(self, local_model_result_folder_path, checkpoint_model)

    def save_model(self, model: Dict[str, Any], project_name: str, experiment_name: str,
                   experiment_timestamp: Optional[str] = None, epoch: Optional[int] = None,
                   iteration_idx: Optional[int] = None,
                   protect_existing_folder: bool = True) -> Tuple[str, str]:
        """Write ``model`` with ``torch.save`` (atomically); see :class:`AbstractLocalModelSaver`.

        Raises:
            ValueError: ``model`` lacks one of :data:`REQUIRED_MODEL_KEYS`.
        """
        self.check_model_dict_contents(model)
        experiment_timestamp = timestamp_or_now(experiment_timestamp)
        folder = self.create_experiment_local_models_folder(project_name, experiment_name, experiment_timestamp)
        name = model_file_name(experiment_name, experiment_timestamp, epoch, iteration_idx)
        path = atomic_torch_save(model, os.path.join(folder, name))
        return name, path

    @staticmethod
    def check_model_dict_contents(model: Any) -> None:
        """Check that ``model`` is a dict with every key of :data:`REQUIRED_MODEL_KEYS`.

        Raises:
            ValueError: a key is missing (or ``model`` is not a dict).
        """
        if not isinstance(model, dict):
            raise ValueError(f"model must be a dict with the keys {list(REQUIRED_MODEL_KEYS)}, got "
                             f"{type(model).__name__}.")
        missing = [key for key in REQUIRED_MODEL_KEYS if key not in model]
        if missing:
            raise ValueError(f"The model dict lacks the required key(s) {missing}; it has {list(model)}. "
                             f"A PyTorch model dict needs {list(REQUIRED_MODEL_KEYS)}.")


class LocalSubOptimalModelRemover:
    """Delete saved models that have fallen out of the ``num_best_kept`` best by a history metric.

    Metrics whose name contains ``loss`` are better when lower, all others when higher. The
    default metrics (``loss``, ``accumulated_loss``, ``val_loss``) are in the history when the
    model is saved; any other metric is computed after the save, so its value is matched with the
    model saved before (one save later).

    Args:
        metric_name: the history metric to rank the saved models by.
        num_best_kept: how many of the best models to keep.
    """

    def __init__(self, metric_name: str, num_best_kept: int = 2):
        self.metric_name = metric_name
        self.decrease_metric = "loss" in metric_name
        self.num_best_kept = num_best_kept
        self.default_metrics_list = ["loss", "accumulated_loss", "val_loss"]
        self.is_default_metric = metric_name in self.default_metrics_list
        self.non_default_metric_buffer: Optional[List[str]] = None
        self.model_save_history: List[Tuple[List[str], Any]] = []

    def decide_if_remove_suboptimal_model(self, history, new_model_dump_paths: Sequence[str]) -> None:
        """Record the newly saved model files and delete those of the model that became the worst.

        Args:
            history: the training history (``TrainingHistory`` or a ``{name: [values]}`` dict).
            new_model_dump_paths: the files of the model just saved.
        """
        if self.is_default_metric:
            self.model_save_history.append((new_model_dump_paths, history[self.metric_name][-1]))
        else:
            if self.non_default_metric_buffer is not None:
                if self.metric_name in history:
                    self.model_save_history.append((self.non_default_metric_buffer,
                                                    history[self.metric_name][-1]))
                else:
                    logger.warning("LocalSubOptimalModelRemover: metric %r is not in the training history "
                                   "(it has %s).", self.metric_name, list(history.keys()))
            self.non_default_metric_buffer = new_model_dump_paths

        if len(self.model_save_history) > self.num_best_kept:
            self.model_save_history = sorted(self.model_save_history, key=lambda entry: entry[1],
                                             reverse=not self.decrease_metric)
            paths_to_remove, _ = self.model_save_history.pop()
            logger.info("Removing suboptimal model files: %s", paths_to_remove)
            self.rm_suboptimal_model(paths_to_remove)

    @staticmethod
    def rm_suboptimal_model(rm_model_paths: Sequence[str]) -> None:
        """Delete the files ``rm_model_paths`` (ones already gone are skipped)."""
        for path in rm_model_paths:
            if os.path.exists(path):
                os.remove(path)
