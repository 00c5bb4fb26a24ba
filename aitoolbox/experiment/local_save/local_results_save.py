"""aitoolbox 1.8's local results savers, written on our experiment folder and result writers.

Files go into ``<root>/<project>/<experiment>_<timestamp>/results/`` under aitoolbox 1.8's names:

* one file: ``results_hyperParams_hist_<experiment>_<timestamp>.json`` (results, hyperparameters,
  training history, and optionally the true / predicted labels);
* separate files: ``results_...``, ``hyperparams_...``, ``train_history_...`` and
  ``true_pred_labels_...``;
* the training history plots in ``plots/<metric>.png`` (with matplotlib), and the result
  package's additional files.

Results are always JSON, never pickle: ``file_format='pickle'`` (the original's default) is
accepted, written as JSON and said so once in the log.
"""
from __future__ import annotations

import datetime  # noqa: F401  (aitoolbox 1.8's module exposed it to ``import *``)
import logging
import os
import time  # noqa: F401  (as above)
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Tuple, Union

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.experiment_folder import ExperimentFolder
from aitoolbox.experiment.local_save.local_model_save import DEFAULT_RESULTS_ROOT, timestamp_or_now
from aitoolbox.experiment.result_writers import plot_history, write_json

logger = logging.getLogger("aitoolbox")

SUPPORTED_FILE_FORMATS = ("pickle", "json")
PLOTS_FOLDER = "plots"
_warned_pickle = False

#: ``[[name inside the results folder, local path], ...]``, the main results file first
SavedPaths = List[List[str]]


def _warn_pickle_once() -> None:
    global _warned_pickle
    if not _warned_pickle:
        logger.warning("Results are written as JSON (.json), never pickle: file_format='pickle' is "
                       "accepted for compatibility with aitoolbox 1.8 and written as JSON.")
        _warned_pickle = True


def additional_results_dump_paths(result_package) -> List[List[str]]:
    """The ``[name, path]`` pairs of the extra files a result package wrote (may be empty)."""
    paths = result_package.get_additional_results_dump_paths()
    if paths is None and callable(getattr(result_package, "list_additional_results_dump_paths", None)):
        paths = result_package.list_additional_results_dump_paths()
    if paths is None:
        return []
    if not isinstance(paths, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in paths):
        raise ValueError(f"additional results dump paths of {type(result_package).__name__} must be a list of "
                         f"[file_name, local_path] pairs, got {paths!r}.")
    return [list(p) for p in paths]


def plot_training_history(training_history, results_folder: str) -> SavedPaths:
    """Plot every numeric history metric into ``results/plots/``; ``[name, path]`` pairs."""
    folder = os.path.join(results_folder, PLOTS_FOLDER)
    return [[f"{PLOTS_FOLDER}/{os.path.basename(path)}", path]
            for path in plot_history(_history_dict(training_history), folder)]


def _history_dict(training_history) -> Dict[str, list]:
    if hasattr(training_history, "get_train_history"):
        return training_history.get_train_history()
    return dict(training_history)


class AbstractLocalResultsSaver(ABC):
    """Interface of the local results savers."""

    @abstractmethod
    def save_experiment_results(self, result_package, training_history, project_name: str,
                                experiment_name: str, experiment_timestamp: Optional[str] = None,
                                save_true_pred_labels: bool = False,
                                protect_existing_folder: bool = True) -> SavedPaths:
        """Save the results into one file.

        Returns:
            ``[[file name inside results/, local path], ...]``, the main results file first.
        """

    @abstractmethod
    def save_experiment_results_separate_files(self, result_package, training_history, project_name: str,
                                               experiment_name: str, experiment_timestamp: Optional[str],
                                               save_true_pred_labels: bool = False,
                                               protect_existing_folder: bool = True) -> SavedPaths:
        """Save the results, hyperparameters, history (and labels) into separate files.

        Returns:
            ``[[file name inside results/, local path], ...]``, the main results file first.
        """


class BaseLocalResultsSaver:
    """Where the local results savers put their files, and how they write one.

    Args:
        local_model_result_folder_path: results root folder (``~`` is expanded).
        file_format: ``'json'``, or ``'pickle'`` (accepted, written as JSON); anything else is
            reset to ``'pickle'`` with a warning, as in aitoolbox 1.8.
    """

    def __init__(self, local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 file_format: str = "pickle"):
        self.local_model_result_folder_path = os.path.expanduser(os.fspath(local_model_result_folder_path))
        self.file_format = file_format
        if self.file_format not in SUPPORTED_FILE_FORMATS:
            logger.warning("file_format=%r is not supported (use 'json'); using the default.", file_format)
            self.file_format = "pickle"

    def create_experiment_local_folder_structure(self, project_name: str, experiment_name: str,
                                                 experiment_timestamp: str) -> str:
        """Create (or reuse) the experiment's ``results/`` folder; returns its path."""
        return self.create_experiment_local_results_folder(project_name, experiment_name, experiment_timestamp,
                                                           self.local_model_result_folder_path)

    @staticmethod
    def create_experiment_local_results_folder(project_name: str, experiment_name: str,
                                               experiment_timestamp: str,
                                               local_model_result_folder_path: Union[str, os.PathLike]) -> str:
        """Create (or reuse) ``<root>/<project>/<experiment>_<timestamp>/results``; returns its path."""
        ExperimentFolder.create_base_folder(project_name, experiment_name, experiment_timestamp,
                                            local_model_result_folder_path)
        *_, results_path = BaseLocalResultsSaver.get_experiment_local_results_folder_paths(
            project_name, experiment_name, experiment_timestamp, local_model_result_folder_path)
        os.makedirs(results_path, exist_ok=True)
        return results_path

    @staticmethod
    def get_experiment_local_results_folder_paths(project_name: str, experiment_name: str,
                                                  experiment_timestamp: str,
                                                  local_model_result_folder_path: Union[str, os.PathLike]
                                                  ) -> Tuple[str, str, str]:
        """``(project folder, experiment folder, results folder)`` paths, without creating them."""
        project_path, experiment_path = ExperimentFolder.get_base_folder_paths(
            project_name, experiment_name, experiment_timestamp, local_model_result_folder_path)
        return project_path, experiment_path, os.path.join(experiment_path, ef.RESULTS_DIR)

    def save_file(self, result_dict: Dict[str, Any], file_name_w_type: str,
                  file_local_path_w_type: str) -> Tuple[str, str]:
        """Write ``result_dict`` as JSON (atomically) to ``file_local_path_w_type + '.json'``.

        Args:
            result_dict: what to write (tensors and arrays become lists).
            file_name_w_type: the file name without extension.
            file_local_path_w_type: the file path without extension.

        Returns:
            ``(file name, file path)`` with the ``.json`` extension.

        Raises:
            ValueError: ``file_format`` was set to an unsupported value after construction.
        """
        if self.file_format not in SUPPORTED_FILE_FORMATS:
            raise ValueError(f"file_format={self.file_format!r} is not supported: use 'json'.")
        if self.file_format == "pickle":
            _warn_pickle_once()
        path = write_json(result_dict, file_local_path_w_type + ".json")
        return file_name_w_type + ".json", path


class LocalResultsSaver(AbstractLocalResultsSaver, BaseLocalResultsSaver):
    """Save a result package and the training history into the experiment's ``results/`` folder.

    Args:
        local_model_result_folder_path: results root folder (``~`` is expanded).
        file_format: ``'json'`` or ``'pickle'`` (written as JSON as well).
    """

    def __init__(self, local_model_result_folder_path: Union[str, os.PathLike] = DEFAULT_RESULTS_ROOT,
                 file_format: str = "pickle"):
        BaseLocalResultsSaver.__init__(self, local_model_result_folder_path, file_format)

    def save_experiment_results(self, result_package, training_history, project_name: str,
                                experiment_name: str, experiment_timestamp: Optional[str] = None,
                                save_true_pred_labels: bool = False,
                                protect_existing_folder: bool = True) -> SavedPaths:
        """Write ``results_hyperParams_hist_<experiment>_<timestamp>.json`` and the plots.

        The file holds ``experiment_name``, ``experiment_results_local_path``, ``results``,
        ``hyperparameters``, ``training_history`` (and ``y_true`` / ``y_predicted`` with
        ``save_true_pred_labels``).

        Returns:
            ``[[file name inside results/, local path], ...]``: the results file, then the
            package's additional files, then the plots.
        """
        experiment_timestamp = timestamp_or_now(experiment_timestamp)
        folder = self.create_experiment_local_folder_structure(project_name, experiment_name, experiment_timestamp)
        content = {"experiment_name": experiment_name, "experiment_results_local_path": folder,
                   "results": result_package.get_results(),
                   "hyperparameters": result_package.get_hyperparameters(),
                   "training_history": _history_dict(training_history)}
        if save_true_pred_labels:
            content = {"y_true": result_package.y_true, "y_predicted": result_package.y_predicted, **content}
        name = f"results_hyperParams_hist_{experiment_name}_{experiment_timestamp}"
        saved = [list(self.save_file(content, name, os.path.join(folder, name)))]
        return saved + additional_results_dump_paths(result_package) + plot_training_history(training_history,
                                                                                            folder)

    def save_experiment_results_separate_files(self, result_package, training_history, project_name: str,
                                               experiment_name: str, experiment_timestamp: Optional[str] = None,
                                               save_true_pred_labels: bool = False,
                                               protect_existing_folder: bool = True) -> SavedPaths:
        """Write ``results_``, ``hyperparams_``, ``train_history_`` (and ``true_pred_labels_``) files.

        Returns:
            ``[[file name inside results/, local path], ...]``: the results file first, then the
            hyperparameters, history, labels, the package's additional files and the plots.
        """
        experiment_timestamp = timestamp_or_now(experiment_timestamp)
        folder = self.create_experiment_local_folder_structure(project_name, experiment_name, experiment_timestamp)
        header = {"experiment_name": experiment_name, "experiment_results_local_path": folder}
        files = [("results", {**header, "results": result_package.get_results()}),
                 ("hyperparams", {**header, "hyperparameters": result_package.get_hyperparameters()}),
                 ("train_history", {**header, "training_history": _history_dict(training_history)})]
        if save_true_pred_labels:
            files.append(("true_pred_labels", {"y_true": result_package.y_true,
                                               "y_predicted": result_package.y_predicted}))
        saved = []
        for prefix, content in files:
            name = f"{prefix}_{experiment_name}_{experiment_timestamp}"
            saved.append(list(self.save_file(content, name, os.path.join(folder, name))))
        return saved + additional_results_dump_paths(result_package) + plot_training_history(training_history,
                                                                                            folder)
