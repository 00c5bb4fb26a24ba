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
        cloud_save_mode: ``'s3'`` / ``'aws_s3'`` / ``'gcs'``, or None / ``'local'`` for local disk only.
        bucket_name: the bucket; None: ``'model-result'``.
        cloud_dir_prefix: key prefix inside the bucket; None: none.
        execution_order: callback execution order.
        device_idx_execution: under DDP, run only on the process of this rank.
        hyperparams: (keyword) dict, or the path of a YAML / JSON file (never mutated); None: ``{}``.
        source_dirs: (keyword) folders zipped into the experiment folder.
        experiment_store: (keyword) an existing experiment (what tracking TrainLoops pass); overrides
            the arguments above.

    The positional order is aitoolbox 1.8's. The attributes ``project_name``, ``experiment_name``,
    ``local_model_result_folder_path``, ``cloud_save_mode``, ``bucket_name`` and ``cloud_dir_prefix``
    hold the details as given; :meth:`try_infer_experiment_details` fills those left None from a
    tracking TrainLoop.

    Raises:
        TypeError, ValueError: invalid names, root folder, cloud mode or a missing bucket.
    """

    def __init__(self, callback_name: str, project_name: Optional[str] = None,
                 experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]] = None,
                 cloud_save_mode: Optional[str] = None, bucket_name: Optional[str] = None,
                 cloud_dir_prefix: Optional[str] = None, execution_order: int = SAVER_ORDER,
                 device_idx_execution: Optional[int] = None, *, hyperparams: Any = None,
                 source_dirs: Sequence = (), experiment_store: Optional[ExperimentStore] = None):
        super().__init__(callback_name, execution_order=execution_order,
                         device_idx_execution=device_idx_execution)
        if experiment_store is None:
            experiment_store = _store_from_args(project_name, experiment_name, local_model_result_folder_path,
                                                hyperparams, cloud_save_mode,
                                                "model-result" if bucket_name is None else bucket_name,
                                                "" if cloud_dir_prefix is None else cloud_dir_prefix, source_dirs)
        self.experiment_store = experiment_store
        # aitoolbox 1.8's attributes: the experiment details as given (None: taken from the TrainLoop
        # by try_infer_experiment_details); informative only, the files go where self.store says.
        self.project_name = project_name
        self.experiment_name = experiment_name
        self.local_model_result_folder_path = (None if local_model_result_folder_path is None else
                                               os.path.expanduser(os.fspath(local_model_result_folder_path)))
        self.cloud_save_mode = cloud_save_mode
        self.bucket_name = bucket_name
        self.cloud_dir_prefix = cloud_dir_prefix

    def try_infer_experiment_details(self, infer_cloud_details: bool) -> None:
        """Fill the experiment details left None from the (tracking) TrainLoop, as aitoolbox 1.8.

        Call it after registration. The cloud details are taken from the TrainLoop only when
        ``infer_cloud_details`` is True and all three (``cloud_save_mode``, ``bucket_name``,
        ``cloud_dir_prefix``) were left None.

        Args:
            infer_cloud_details: also infer the cloud destination.

        Raises:
            AttributeError: the TrainLoop is not a tracking TrainLoop, so it has no experiment details
                to infer: pass them to the callback.
        """
        loop = self.train_loop_obj
        self._infer_from_loop(loop, ("project_name", "experiment_name", "local_model_result_folder_path"),
                              "project folder")
        cloud = ("cloud_save_mode", "bucket_name", "cloud_dir_prefix")
        if infer_cloud_details and all(getattr(self, name) is None for name in cloud):
            self._infer_from_loop(loop, cloud, "cloud storage")

    def _infer_from_loop(self, loop, names: Sequence[str], what: str) -> None:
        missing = [name for name in names if getattr(self, name) is None]
        if any(not hasattr(loop, name) for name in missing):
            raise AttributeError(f"{type(self).__name__}: the TrainLoop ({type(loop).__name__}) has no {what} "
                                 f"details to infer {', '.join(missing)} from. Pass them to the callback, or use "
                                 "a tracking TrainLoop (TrainLoopCheckpoint / TrainLoopEndSave / "
                                 "TrainLoopCheckpointEndSave).")
        for name in missing:
            setattr(self, name, getattr(loop, name))

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
