"""aitoolbox 1.8's local model loader: read a saved model dict and put it into model, optimizer,
schedulers and AMP scaler.

Files are read with ``torch.load(weights_only=True)`` (see
:func:`~aitoolbox.torchtrain.train_loop.components.checkpoint_files.safe_torch_load`). Both the
files aitoolbox 1.8 wrote (``model_<experiment>_<timestamp>[_E<epoch>].pth``) and this
aitoolbox's load, found by the same ``load_model`` arguments:

* ``model_save_dir='model'``, ``epoch_num=None``: the final model (this aitoolbox's
  ``model/model.pt`` holds the TrainLoop's state, like a checkpoint);
* ``model_save_dir='checkpoint_model'``, ``epoch_num=n`` (0-based, as aitoolbox 1.8 counted):
  the checkpoint after ``n + 1`` epochs (``model_epoch_<n + 1>.pt`` here), with the optimizer state.

To continue a TrainLoop's run exactly, prefer ``TrainLoop.load_checkpoint(path)`` or
``ModelLoadContinueTraining``.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Union

import torch

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.checkpoint_registry import checkpoint_file_name
from aitoolbox.experiment.experiment_folder import ExperimentFolder
from aitoolbox.experiment.local_save.local_model_save import model_file_name
from aitoolbox.torchtrain.schedulers.basic import AbstractScheduler
from aitoolbox.torchtrain.train_loop.components import checkpointing

#: this aitoolbox's final model file in ``model/`` (``ModelTrainEndSave``)
FINAL_MODEL_FILE = "model.pt"


def model_file_candidates(experiment_name: str, experiment_timestamp: str,
                          epoch_num: Optional[int] = None) -> List[str]:
    """The file names a saved model may have, in order of preference.

    aitoolbox 1.8's ``model_<experiment>_<timestamp>[_E<epoch_num>].pth`` first, then this
    aitoolbox's ``model.pt`` (final model) or ``model_epoch_<epoch_num + 1>.pt`` (checkpoint).
    """
    ours = FINAL_MODEL_FILE if epoch_num is None else checkpoint_file_name("epoch", epoch_num + 1, 0)
    return [model_file_name(experiment_name, experiment_timestamp, epoch_num), ours]


def as_original_representation(state: Any) -> Any:
    """A loaded model file in aitoolbox 1.8's model dict shape, where it is in another shape.

    * a bare model state dict (e.g. a final model written by an earlier version) becomes
      ``{'model_state_dict': state, 'optimizer_state_dict': None, ...}`` (weights only);
    * a checkpoint of this aitoolbox (``format_version``) keeps its keys, with ``epoch`` and
      ``iteration_idx`` counted as aitoolbox 1.8 did: the 0-based index of the last finished
      epoch (of the current one, mid-epoch) and of the last batch done;
    * an aitoolbox 1.8 model dict is returned as it is.
    """
    if not isinstance(state, dict):
        return state
    if "model_state_dict" not in state and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return {"model_state_dict": state, "optimizer_state_dict": None, "schedulers_state_dict": [],
                "epoch": None, "weights_only_file": True}
    if "format_version" in state and "model_state_dict" in state:
        state = dict(state)
        state["epoch"] = state["epoch"] - 1 if state.get("iteration", 0) == 0 else state["epoch"]
        state["iteration_idx"] = state.get("total_iteration_idx", 0) - 1
        state.setdefault("amp", state.get("amp_scaler_state_dict"))
    return state


class AbstractLocalModelLoader(ABC):
    """Interface of the local model loaders."""

    @abstractmethod
    def load_model(self, project_name: str, experiment_name: str, experiment_timestamp: str,
                   model_save_dir: str, epoch_num: Optional[int] = None, **kwargs):
        """Read the saved model of an experiment.

        Args:
            project_name: project folder name.
            experiment_name: experiment name.
            experiment_timestamp: the experiment folder's timestamp.
            model_save_dir: the folder inside the experiment folder (``checkpoint_model``, ``model``).
            epoch_num: the checkpoint's epoch; None for the final model.
            **kwargs: loader-specific arguments.

        Returns:
            The model's representation.
        """


class PyTorchLocalModelLoader(AbstractLocalModelLoader):
    """Load a saved PyTorch model dict and initialise a model, optimizer, schedulers and scaler.

    Args:
        local_model_result_folder_path: results root folder (``~`` is expanded).
    """

    def __init__(self, local_model_result_folder_path: Union[str, os.PathLike]):
        self.local_model_result_folder_path = os.path.expanduser(os.fspath(local_model_result_folder_path))
        self.model_representation: Optional[Dict[str, Any]] = None
        self.model_path_loaded: Optional[str] = None

    def model_path(self, project_name: str, experiment_name: str, experiment_timestamp: str,
                   model_save_dir: str = ef.CHECKPOINT_DIR, epoch_num: Optional[int] = None) -> str:
        """The path of the saved model file: the first of :func:`model_file_candidates` that
        exists, else aitoolbox 1.8's name."""
        _, experiment_path = ExperimentFolder.get_base_folder_paths(
            project_name, experiment_name, experiment_timestamp, self.local_model_result_folder_path)
        paths = [os.path.join(experiment_path, model_save_dir, name)
                 for name in model_file_candidates(experiment_name, experiment_timestamp, epoch_num)]
        return next((path for path in paths if os.path.isfile(path)), paths[0])

    def load_model(self, project_name: str, experiment_name: str, experiment_timestamp: str,
                   model_save_dir: str = "checkpoint_model", epoch_num: Optional[int] = None,
                   map_location=None) -> Dict[str, Any]:
        """Read ``model_<experiment>_<timestamp>[_E<epoch_num>].pth`` of the experiment folder.

        Of this aitoolbox's experiment folders the final model ``model/model.pt`` and the
        checkpoint ``checkpoint_model/model_epoch_<epoch_num + 1>.pt`` are read as well.

        Returns:
            The model dict (``schedulers_state_dict`` is added, empty, when the file lacks it).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a model dict that loads with ``weights_only=True``.
        """
        path = self.model_path(project_name, experiment_name, experiment_timestamp, model_save_dir, epoch_num)
        if not os.path.isfile(path):
            names = " or ".join(model_file_candidates(experiment_name, experiment_timestamp, epoch_num))
            raise FileNotFoundError(f"No saved model {names} in {os.path.dirname(path)!r}: check project_name, "
                                    "experiment_name, experiment_timestamp, model_save_dir and epoch_num.")
        return self.load_model_from_path(path, map_location)

    def load_model_from_path(self, model_path: Union[str, os.PathLike], map_location=None) -> Dict[str, Any]:
        """Read a saved model dict from any path (or ``s3://`` URI).

        Returns:
            The model dict (``schedulers_state_dict`` is added, empty, when the file lacks it).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a model dict that loads with ``weights_only=True``.
        """
        model_path = os.fspath(model_path)
        representation = as_original_representation(
            checkpointing.read_checkpoint(model_path, map_location=map_location))
        if not isinstance(representation, dict) or "model_state_dict" not in representation:
            raise ValueError(checkpointing.unknown_checkpoint_message(representation))
        self.model_path_loaded = model_path
        representation.setdefault("schedulers_state_dict", [])
        self.model_representation = representation
        return representation

    def check_if_model_loaded(self) -> None:
        """Raises ValueError when :meth:`load_model` was not called yet."""
        if self.model_representation is None:
            raise ValueError("No model loaded yet: call load_model() (or load_model_from_path()) first.")

    def init_model(self, model, used_data_parallel: bool = False):
        """Load the saved weights into ``model``.

        Args:
            model: the ``nn.Module`` / ``TTModel`` (not wrapped in DataParallel).
            used_data_parallel: the weights were saved from an ``nn.DataParallel`` (``module.``
                prefixes, which are removed); the prefix is also removed when every key has it.

        Returns:
            ``model``.
        """
        self.check_if_model_loaded()
        state = self.model_representation["model_state_dict"]
        if used_data_parallel:
            state = type(state)((key[len("module."):] if key.startswith("module.") else key, value)
                                for key, value in state.items())
        model.load_state_dict(checkpointing.strip_data_parallel_prefix(state))
        return model

    def init_optimizer(self, optimizer, device: str = "cuda"):
        """Load the saved optimizer state (a list for a ``MultiOptimizer``) into ``optimizer``.

        Args:
            optimizer: a torch optimizer or ``MultiOptimizer``.
            device: accepted for compatibility; the optimizer moves its state to its parameters.

        Returns:
            ``optimizer``.
        """
        self.check_if_model_loaded()
        if self.model_representation.get("weights_only_file"):
            raise ValueError(
                f"{self.model_path_loaded!r} holds the model weights only (this aitoolbox's final model), no "
                "optimizer state. To continue training, load a checkpoint instead: load_model(..., "
                "model_save_dir='checkpoint_model', epoch_num=<0-based epoch>), or TrainLoop.load_checkpoint / "
                "ModelLoadContinueTraining, which also restore the position and the random state.")
        optimizer.load_state_dict(self.model_representation["optimizer_state_dict"])
        return optimizer

    def init_scheduler(self, scheduler_callbacks_list: List[AbstractScheduler], ignore_saved: bool = False,
                       ignore_missing_saved: bool = False) -> List[AbstractScheduler]:
        """Load the saved scheduler states into the scheduler callbacks (in order).

        Args:
            scheduler_callbacks_list: the scheduler callbacks (already registered with a TrainLoop).
            ignore_saved: with saved states but no schedulers, do not raise.
            ignore_missing_saved: with schedulers but no saved states, do not raise.

        Returns:
            ``scheduler_callbacks_list``.

        Raises:
            KeyError, ValueError: the numbers do not match (unless ignored).
            TypeError: an entry is not a scheduler callback.
        """
        self.check_if_model_loaded()
        for scheduler in scheduler_callbacks_list:
            if not isinstance(scheduler, AbstractScheduler):
                raise TypeError(f"{type(scheduler).__name__} is not a scheduler callback (AbstractScheduler).")
        pending = checkpointing.PendingSchedulerStates(list(self.model_representation["schedulers_state_dict"]
                                                            or []), ignore_saved, ignore_missing_saved)
        pending.apply(scheduler_callbacks_list)
        return scheduler_callbacks_list

    def init_amp(self, amp_scaler):
        """Load the saved AMP GradScaler state (``amp``) into ``amp_scaler``; returns it.

        Raises:
            KeyError: the saved model holds no AMP state.
        """
        self.check_if_model_loaded()
        state = self.model_representation.get("amp", self.model_representation.get("amp_scaler_state_dict"))
        if state is None:
            raise KeyError("The loaded model holds no AMP GradScaler state ('amp'); it was trained without AMP.")
        amp_scaler.load_state_dict(state)
        return amp_scaler
