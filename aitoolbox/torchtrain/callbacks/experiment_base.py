"""Base of callbacks that write into the experiment folder (checkpoints, results, plots).

Such a callback either gets the experiment from its own ``project_name`` / ``experiment_name`` /
``local_model_result_folder_path`` arguments (checked at construction) or, when they are left
None, uses the experiment of the TrainLoop it is registered with (a tracking TrainLoop, or
another experiment callback registered in the same ``fit``). Callbacks of one TrainLoop that name
the same experiment share one folder and one upload queue.

Only the main process writes (rank 0 under DDP); work that needs every rank, such as predicting,
still runs everywhere.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from aitoolbox.experiment.experiment_store import ExperimentStore
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

#: execution orders: state-changing callbacks first, observers next, savers last
EVALUATION_ORDER = -100
HISTORY_FORMAT_ORDER = -50
REPORT_ORDER = 50
WRITER_ORDER = 900
SAVER_ORDER = 1000


class AbstractExperimentCallback(AbstractCallback):
    """A callback that writes into an experiment folder (local, mirrored to S3 on request).

    Args:
        callback_name: readable name of the callback.
        project_name: project folder name; None: use the TrainLoop's experiment.
        experiment_name: experiment name; None: use the TrainLoop's experiment.
        local_model_result_folder_path: results root folder; None: use the TrainLoop's experiment.
        hyperparams: dict, or the path of a YAML / JSON file (never mutated); None: ``{}``.
        cloud_save_mode: ``'s3'`` / ``'aws_s3'``, or None / ``'local'`` for local disk only.
        bucket_name: S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        source_dirs: folders zipped into the experiment folder.
        experiment_store: an existing experiment (what tracking TrainLoops pass); overrides the
            arguments above.
        execution_order: callback execution order.

    Raises:
        TypeError, ValueError: invalid names, root folder, cloud mode or a missing bucket.
    """

    def __init__(self, callback_name: str, project_name: Optional[str] = None,
                 experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]] = None,
                 hyperparams: Any = None, cloud_save_mode: Optional[str] = None,
                 bucket_name: str = "model-result", cloud_dir_prefix: str = "", source_dirs: Sequence = (),
                 experiment_store: Optional[ExperimentStore] = None, execution_order: int = SAVER_ORDER):
        super().__init__(callback_name, execution_order=execution_order)
        if experiment_store is None:
            experiment_store = _store_from_args(project_name, experiment_name, local_model_result_folder_path,
                                                hyperparams, cloud_save_mode, bucket_name, cloud_dir_prefix,
                                                source_dirs)
        self.experiment_store = experiment_store

    @property
    def store(self) -> ExperimentStore:
        """The experiment this callback writes into.

        Raises:
            ValueError: the callback names no experiment and its TrainLoop has none.
        """
        if self.experiment_store is None:
            self._attach_store()
        if self.experiment_store is None:
            raise ValueError(f"{type(self).__name__} has no experiment folder: pass project_name, "
                             "experiment_name and local_model_result_folder_path, or use it with a "
                             "tracking TrainLoop (TrainLoopCheckpoint / TrainLoopEndSave / "
                             "TrainLoopCheckpointEndSave) or next to a ModelCheckpoint / ModelTrainEndSave.")
        return self.experiment_store

    def _attach_store(self) -> None:
        """Share one experiment per TrainLoop between the callbacks that name the same one."""
        loop = self.train_loop_obj
        loop_store = getattr(loop, "experiment_store", None)
        if self.experiment_store is None:
            self.experiment_store = loop_store
        elif loop_store is None:
            loop.experiment_store = self.experiment_store
        elif loop_store is not self.experiment_store and loop_store.same_experiment(self.experiment_store):
            self.experiment_store = loop_store

    def on_train_loop_registration(self):
        self._attach_store()

    def is_writer(self) -> bool:
        """Whether this process writes files (the main process)."""
        return self.train_loop_obj.is_main_process()

    def start_experiment(self) -> None:
        """At training start: open the run's upload budget and create the folder unless lazy."""
        self.store.start_run()
        if not getattr(self.train_loop_obj, "lazy_experiment_save", False):
            self.store.ensure_created()


def _store_from_args(project_name, experiment_name, root, hyperparams, cloud_save_mode, bucket_name,
                     cloud_dir_prefix, source_dirs) -> Optional[ExperimentStore]:
    given = {"project_name": project_name, "experiment_name": experiment_name,
             "local_model_result_folder_path": root}
    if all(value is None for value in given.values()):
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(f"Missing {', '.join(missing)}: give all of project_name, experiment_name and "
                         "local_model_result_folder_path, or none of them to use the TrainLoop's experiment.")
    return ExperimentStore(project_name, experiment_name, root, {} if hyperparams is None else hyperparams,
                           cloud_save_mode, bucket_name, cloud_dir_prefix, source_dirs)
