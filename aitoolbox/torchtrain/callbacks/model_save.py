"""Saving callbacks: checkpoints during training and the final model and results at its end.

* :class:`ModelCheckpoint` - a full TrainLoop checkpoint (``TrainLoop.state_dict()``) at the end
  of every epoch, and an emergency checkpoint when training raises (also on KeyboardInterrupt);
  optionally keeps only the best few on local disk.
* :class:`ModelIterationCheckpoint` - the same, plus a checkpoint every ``save_frequency``
  training batches, for bit-exact resume from mid-epoch.
* :class:`ModelTrainEndSave` - at the end of training: the final model, the result packages
  evaluated on the validation / test sets, the training history (JSON, CSV) and its plots.

All of them write into the experiment folder (see :mod:`aitoolbox.experiment.experiment_folder`),
mirror every file to S3 in the background when ``cloud_save_mode='s3'``, run last among the
callbacks (``execution_order`` 1000), and write only in the main process.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Union

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.checkpoint_registry import (
    MANIFEST_FILE, CheckpointRegistry, checkpoint_file_name, remove_stale_temporaries)
from aitoolbox.experiment.result_package.abstract_result_packages import AbstractResultPackage
from aitoolbox.experiment.result_writers import plot_history, write_history_csv
from aitoolbox.torchtrain.callbacks.experiment_base import SAVER_ORDER, AbstractExperimentCallback
from aitoolbox.torchtrain.train_loop.components import checkpointing
from aitoolbox.torchtrain.train_loop.components.preemption import TrainingStopped
from aitoolbox.utils.io import atomic_torch_save, atomic_write_path

logger = logging.getLogger("aitoolbox")

FINAL_MODEL_FILE = "model.pt"
RESULTS_FILE = "results.json"
HISTORY_JSON_FILE = "train_history.json"
HISTORY_CSV_FILE = "train_history.csv"
PLOTS_DIR = "plots"


def _stop_upload_wait(loop, exception: BaseException) -> Optional[float]:
    """How long a crash hook may wait for uploads: a stop signal's bound (0 after a second
    signal, which asks to stop at once), else None (the store's ``flush_timeout``)."""
    if isinstance(exception, TrainingStopped):
        return exception.upload_timeout
    forced = getattr(getattr(loop, "_stop_control", None), "forced", False)
    return 0.0 if isinstance(exception, KeyboardInterrupt) and forced else None


def validate_checkpoint_args(rm_subopt_local_models: Any, num_best_checkpoints_kept: Any) -> Optional[str]:
    """Check the keep-best arguments; returns the ranking metric (None: keep every checkpoint).

    Raises:
        TypeError, ValueError: naming the argument.
    """
    if not isinstance(rm_subopt_local_models, (bool, str)) or rm_subopt_local_models == "":
        raise TypeError("rm_subopt_local_models must be False, True (rank by 'loss') or the name of a "
                        f"history metric to rank by, got {rm_subopt_local_models!r}.")
    if isinstance(num_best_checkpoints_kept, bool) or not isinstance(num_best_checkpoints_kept, int) \
            or num_best_checkpoints_kept < 1:
        raise ValueError(f"num_best_checkpoints_kept must be an int >= 1, got {num_best_checkpoints_kept!r}.")
    if rm_subopt_local_models is False:
        return None
    return "loss" if rm_subopt_local_models is True else rm_subopt_local_models


def validate_save_frequency(save_frequency: Any, arg_name: str = "save_frequency") -> int:
    """Check an iteration save frequency (an int >= 0; 0 disables).

    Raises:
        ValueError: naming the argument.
    """
    if isinstance(save_frequency, bool) or not isinstance(save_frequency, int) or save_frequency < 0:
        raise ValueError(f"{arg_name} must be an int >= 0 (0: no mid-epoch checkpoints), got {save_frequency!r}.")
    return save_frequency


def _check_optimizers_checkpointable(loop) -> None:
    """A checkpoint holds every optimizer's ``state_dict()``: fail at registration, before training."""
    for idx, optimizer in enumerate(getattr(loop, "optimizers", ())):
        if not callable(getattr(optimizer, "state_dict", None)):
            raise AttributeError(f"The optimizer (index {idx}, {type(optimizer).__name__}) has no state_dict() "
                                 "method, so it cannot be checkpointed: use a torch.optim.Optimizer, give it "
                                 "state_dict() / load_state_dict(), or train without checkpointing.")


class ModelCheckpoint(AbstractExperimentCallback):
    """Write a full TrainLoop checkpoint at the end of every epoch, and one when training crashes.

    A checkpoint holds everything to continue the run exactly (see
    :meth:`~aitoolbox.torchtrain.train_loop.train_loop.TrainLoop.state_dict`); continue with
    ``TrainLoop.load_checkpoint(path)`` or
    :class:`~aitoolbox.torchtrain.callbacks.model_load.ModelLoadContinueTraining`.
    Files: ``checkpoint_model/model_epoch_<E>.pt``, the crash checkpoint
    ``model_crash_iteration_<T>.pt`` and the manifest ``checkpoints.json``.

    Args:
        project_name: project folder name.
        experiment_name: experiment name.
        local_model_result_folder_path: results root folder.
        hyperparams: dict, or the path of a YAML / JSON file; saved with the experiment.
        cloud_save_mode: ``'s3'`` / ``'aws_s3'``, or None / ``'local'`` for local disk only.
        bucket_name: S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        rm_subopt_local_models: False keeps every checkpoint; True keeps the
            ``num_best_checkpoints_kept`` best by the history's ``loss``; a metric name ranks by
            that metric (lower is better for losses and errors, higher otherwise). The newest
            checkpoint is always kept as the resume point. Only local files are removed: the
            bucket keeps every checkpoint uploaded before it was superseded (a dropped
            checkpoint whose upload is still waiting is not uploaded: local disk stays bounded
            while the bucket is down).
        num_best_checkpoints_kept: how many of the best epoch checkpoints to keep.
        experiment_store: an existing experiment (used by tracking TrainLoops instead of the
            naming arguments).
        stop_on_signal: add a default
            :class:`~aitoolbox.torchtrain.callbacks.stop_signal.StopOnSignal` to the run (unless
            one is given): SIGTERM / SIGINT stop at the next batch boundary with an exact
            checkpoint (see ``docs/fault_tolerance.md``). False leaves the signals alone.

    Raises:
        TypeError, ValueError: an invalid argument or a missing bucket, before any training.
    """

    def __init__(self, project_name: Optional[str], experiment_name: Optional[str],
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]], hyperparams: Any,
                 cloud_save_mode: Optional[str] = "s3", bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "", rm_subopt_local_models: Union[bool, str] = False,
                 num_best_checkpoints_kept: int = 2, *, experiment_store=None, stop_on_signal: bool = True):
        metric = validate_checkpoint_args(rm_subopt_local_models, num_best_checkpoints_kept)
        #: add a default StopOnSignal to the run when none is given (see with_default_stop)
        self.stop_on_signal = bool(stop_on_signal)
        super().__init__("Model checkpoint", project_name, experiment_name, local_model_result_folder_path,
                         cloud_save_mode, bucket_name, cloud_dir_prefix, SAVER_ORDER,
                         hyperparams=hyperparams, experiment_store=experiment_store)
        self.registry = CheckpointRegistry(metric, num_best_checkpoints_kept)
        self.crash_point = checkpointing.CrashResumePoint()
        self._rank_rng: Optional[list] = None  # every DDP rank's RNG states for the next checkpoint

    def monitored_history_metrics(self):
        metric = self.registry.metric_name
        return [("rm_subopt_local_models", metric, True)] if metric else []

    def on_train_loop_registration(self):
        super().on_train_loop_registration()
        _check_optimizers_checkpointable(self.train_loop_obj)
        self.crash_point.on_train_begin(self.train_loop_obj)

    def on_train_begin(self):
        if self.is_writer():
            self.crash_point.on_train_begin(self.train_loop_obj)
            self.start_experiment()
            # Hidden temporaries of writes a killed run left (full checkpoint size each).
            remove_stale_temporaries(os.path.join(self.store.path, ef.CHECKPOINT_DIR))

    def on_batch_begin(self):
        self.crash_point.on_batch_begin()

    def on_batch_end(self):
        if self.is_writer():
            self.crash_point.on_batch_end(self.train_loop_obj)

    def on_epoch_end(self):
        self._gather_rank_rng()
        if self.is_writer():
            self.crash_point.on_epoch_end(self.train_loop_obj)
        if self.is_writer() or self.sharded():
            self.save_checkpoint("epoch")

    def _gather_rank_rng(self) -> None:
        """Under DDP, on every rank: every rank's RNG states, for the checkpoint the writer takes next
        (a resumed run then gives each rank its own streams back)."""
        self._rank_rng = checkpointing.gather_rank_rng(self.train_loop_obj)

    def sharded(self) -> bool:
        """Whether checkpoints are sharded folders that every rank writes (``gpu_mode='fsdp'``)."""
        return getattr(self.train_loop_obj.strategy, "shards_checkpoints", False)

    def on_train_end(self):
        if self.is_writer():
            self.store.finish_run()

    def on_train_crash(self, exception: BaseException):
        if isinstance(exception, TrainingStopped):
            self._save_stop_checkpoint(exception)
            return
        if not self.is_writer():
            return
        if self.sharded():  # writing shards needs every rank, and the others may not be here
            logger.warning("Training raised %s; no crash checkpoint under gpu_mode='fsdp' (a sharded checkpoint "
                           "needs every rank): resume from the newest regular checkpoint.", type(exception).__name__)
            self.store.finish_run()
            return
        try:
            state, exact = self.crash_point.state_dict(self.train_loop_obj)
            # Under DDP the other ranks' random states cannot be asked for after a failure.
            exact = exact and self.train_loop_obj.strategy.world_size == 1
            state["crash"] = {"exception": f"{type(exception).__name__}: {exception}", "exact_resume": exact}
            path = self.save_checkpoint("crash", state)
            note = "resume from it is bit-exact" if exact else (
                "it was taken mid-update, so a resume from it is not bit-exact; the newest regular "
                "checkpoint is an exact resume point")
            logger.warning("Training raised %s; crash checkpoint written to %s (%s).",
                           type(exception).__name__, path, note)
        except Exception as error:  # the original exception must propagate, not this one
            logger.error("Could not write the crash checkpoint: %s", error)
        finally:
            # After a second stop signal the user asked to stop at once: no upload wait.
            self.store.finish_run(max_wait=_stop_upload_wait(self.train_loop_obj, exception))

    def _save_stop_checkpoint(self, stop: TrainingStopped) -> None:
        """On a stop signal (at a batch boundary): an exact checkpoint, then a bounded upload wait.

        The content is that of a mid-epoch iteration checkpoint (or of an epoch checkpoint when
        the stop came at an epoch's end); ``stop`` records the path and the uploads not done.
        Only the main process writes; every rank leaves together afterwards.
        """
        self._gather_rank_rng()
        writer = self.is_writer()
        if writer or self.sharded():  # a sharded (FSDP) checkpoint is written by every rank
            try:
                path = self.save_checkpoint("epoch" if self.train_loop_obj.iteration == 0 else "iteration")
                stop.checkpoint = path if writer else stop.checkpoint
            except Exception as error:  # reported; the stop itself goes on
                logger.error("Could not write the checkpoint at the stop (%s): %s", stop.signal_name, error)
            finally:
                if writer:
                    self.store.finish_run(max_wait=stop.upload_timeout)
                    stop.not_uploaded = sorted(set(stop.not_uploaded) | set(self.store.pending_uploads()))
        self.train_loop_obj.strategy.barrier()  # the other ranks wait until the checkpoint is written

    def save_checkpoint(self, kind: str, state: Optional[Dict[str, Any]] = None) -> str:
        """Write a checkpoint of the TrainLoop now, mirror it, and apply the keep-best rule.

        Args:
            kind: ``'epoch'``, ``'iteration'`` or ``'crash'`` (an ``'epoch'`` checkpoint taken
                when the epoch did not complete is stored as ``'iteration'``).
            state: the state to write (crash checkpoints); None: ``TrainLoop.state_dict()``.

        Returns:
            The local path of the checkpoint.
        """
        loop = self.train_loop_obj
        epoch, iteration, total = checkpointing.position(loop)
        if kind == "epoch" and iteration != 0:
            kind = "iteration"
        entry = self._entry(kind, epoch, iteration, total, state.get("crash") if state else None)
        self.registry.add(entry)
        if self.sharded():
            return self._save_sharded(entry)
        path = self.store.local_path(ef.CHECKPOINT_DIR, entry["file"])
        if state is None:
            state = loop.state_dict()  # after registry.add(): the saved callback state lists this file
        else:
            state["callbacks_state_dict"] = loop.callbacks_handler.state_dict()
        rank_rng, self._rank_rng = getattr(self, "_rank_rng", None), None
        if rank_rng is not None and kind != "crash":  # a crash checkpoint cannot ask the other ranks
            state["rank_rng_states"] = rank_rng
        atomic_torch_save(state, path)
        self.store.publish(path)
        self._remove_suboptimal()
        self.store.write_json(self.registry.manifest(), ef.CHECKPOINT_DIR, MANIFEST_FILE)
        return path

    def _save_sharded(self, entry: Dict[str, Any]) -> str:
        """Every rank writes its shards into the checkpoint folder; the main process mirrors it."""
        loop = self.train_loop_obj
        writer = self.is_writer()
        # Only the main process creates the experiment folder (and its hyperparameter files).
        path = self.store.local_path(ef.CHECKPOINT_DIR, entry["file"]) if writer \
            else self.store.folder.sub_path(ef.CHECKPOINT_DIR, entry["file"])
        loop.save_checkpoint(path)
        if writer:
            self.store.publish(path)
            self._remove_suboptimal()
            self.store.write_json(self.registry.manifest(), ef.CHECKPOINT_DIR, MANIFEST_FILE)
        return path

    def _entry(self, kind: str, epoch: int, iteration: int, total: int,
               crash_info: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        metric = self.registry.metric_name  # only epoch checkpoints are ranked
        value = self.train_loop_obj.train_history.get_last(metric) if metric and kind == "epoch" else None
        return {"file": checkpoint_file_name(kind, epoch, total), "kind": kind, "epoch": epoch,
                "iteration": iteration, "total_iteration": total, "metric": metric,
                "metric_value": value if isinstance(value, (int, float)) else None,
                "exact_resume": True if crash_info is None else bool(crash_info["exact_resume"])}

    def _remove_suboptimal(self) -> None:
        for entry in self.registry.suboptimal():
            self.registry.discard(entry["file"])
            self.store.remove(os.path.join(self.store.path, ef.CHECKPOINT_DIR, entry["file"]))

    def state_dict(self) -> dict:
        """The checkpoints written so far in this experiment folder."""
        return {"experiment_folder": self.store.folder.name, **self.registry.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Take over the checkpoint list when it describes this same experiment folder."""
        if state.get("experiment_folder") == self.store.folder.name:
            self.registry.load_state_dict(state)


class ModelIterationCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` that also checkpoints every ``save_frequency`` training batches.

    Mid-epoch checkpoints (``checkpoint_model/model_iteration_<T>.pt``) hold the position inside
    the epoch, the RNG states and any gradients of an unfinished accumulation window, so that a
    run resumed from one continues bit-exactly. With ``rm_subopt_local_models`` only the newest
    mid-epoch checkpoint is kept on local disk.

    Args:
        save_frequency: checkpoint after every this many training batches (counted over the
            whole run); must be >= 1.
        project_name, experiment_name, local_model_result_folder_path: as in :class:`ModelCheckpoint`.
        hyperparams, cloud_save_mode, bucket_name, cloud_dir_prefix: as in :class:`ModelCheckpoint`.
        rm_subopt_local_models, num_best_checkpoints_kept: as in :class:`ModelCheckpoint`.
        experiment_store: as in :class:`ModelCheckpoint`.

    Raises:
        TypeError, ValueError: an invalid argument or a missing bucket, before any training.
    """

    def __init__(self, save_frequency: int, project_name: Optional[str], experiment_name: Optional[str],
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]], hyperparams: Any,
                 cloud_save_mode: Optional[str] = "s3", bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "", rm_subopt_local_models: Union[bool, str] = False,
                 num_best_checkpoints_kept: int = 2, *, experiment_store=None):
        if validate_save_frequency(save_frequency) == 0:
            raise ValueError("save_frequency must be >= 1 for ModelIterationCheckpoint; use "
                             "ModelCheckpoint for end-of-epoch checkpoints only.")
        super().__init__(project_name, experiment_name, local_model_result_folder_path, hyperparams,
                         cloud_save_mode, bucket_name, cloud_dir_prefix, rm_subopt_local_models,
                         num_best_checkpoints_kept, experiment_store=experiment_store)
        self.callback_name = "Model iteration checkpoint"
        self.save_frequency = save_frequency

    def on_batch_end(self):
        super().on_batch_end()
        if (self.train_loop_obj.total_iteration_idx + 1) % self.save_frequency == 0:
            self._gather_rank_rng()
            if self.is_writer() or self.sharded():
                self.save_checkpoint("iteration")


class ModelTrainEndSave(AbstractExperimentCallback):
    """At the end of training, save the final model and the experiment's results.

    Writes ``model/model.pt``: the TrainLoop's full state, like a checkpoint, as aitoolbox 1.8's
    final model file was a model dict (``torch.load(path, weights_only=True)['model_state_dict']``
    loads into a plain model; ``TrainLoop.load_checkpoint(path)`` or
    ``ModelLoadContinueTraining(saved_model_dir='model')`` continue training from it exactly), and
    in ``results/``:
    ``results.json`` (result package metrics on the validation / test sets, the final value of
    every history metric, the hyperparameters), ``train_history.json``, ``train_history.csv``
    and ``plots/<metric>.png`` for every history metric (skipped without matplotlib).

    Args:
        project_name: project folder name.
        experiment_name: experiment name.
        local_model_result_folder_path: results root folder.
        hyperparams: dict, or the path of a YAML / JSON file; saved with the experiment.
        val_result_package: result package evaluated on the validation set's predictions.
        test_result_package: result package evaluated on the test set's predictions.
        cloud_save_mode: ``'s3'`` / ``'aws_s3'``, or None / ``'local'`` for local disk only.
        bucket_name: S3 bucket.
        cloud_dir_prefix: key prefix inside the bucket.
        source_dirs: folders zipped into the experiment folder.
        experiment_store: an existing experiment (used by tracking TrainLoops).

    Raises:
        TypeError, ValueError: an invalid argument or a missing bucket, before any training.
    """

    def __init__(self, project_name: Optional[str], experiment_name: Optional[str],
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]], hyperparams: Any,
                 val_result_package: Optional[AbstractResultPackage] = None,
                 test_result_package: Optional[AbstractResultPackage] = None,
                 cloud_save_mode: Optional[str] = "s3", bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "", source_dirs: Sequence = (), *, experiment_store=None):
        validate_result_packages(val_result_package, test_result_package)
        super().__init__("Model train end save", project_name, experiment_name, local_model_result_folder_path,
                         cloud_save_mode, bucket_name, cloud_dir_prefix, SAVER_ORDER, hyperparams=hyperparams,
                         source_dirs=source_dirs, experiment_store=experiment_store)
        self.val_result_package = val_result_package
        self.test_result_package = test_result_package

    def on_train_loop_registration(self):
        super().on_train_loop_registration()
        loop = self.train_loop_obj
        validate_result_packages(self.val_result_package, self.test_result_package,
                                 loop.validation_loader, loop.test_loader)
        folder = self.store.folder
        for package in (self.val_result_package, self.test_result_package):
            if package is not None:  # where a package writing extra files should put them
                package.set_experiment_dir_path_for_additional_results(
                    folder.project_name, folder.experiment_name, folder.timestamp, str(folder.root))

    def on_train_begin(self):
        if self.is_writer():
            self.start_experiment()

    def on_train_end(self):
        results = self.evaluate_result_packages()  # on every rank: predicting is collective under DDP
        # On every rank: under FSDP the full state is gathered from the shards (a collective).
        state = self.train_loop_obj.state_dict() if self.is_writer() or self._gathers_state() else None
        if self.is_writer():
            self.save_model(state)
            self.save_results(results)
            self.save_additional_results()
            self.save_history()
            self.store.finish_run()

    def on_train_crash(self, exception: BaseException):
        if not self.is_writer():
            return
        try:
            self.save_history()
        except Exception as error:  # the original exception must propagate, not this one
            logger.error("Could not save the training history after the crash: %s", error)
        finally:
            self.store.finish_run(max_wait=_stop_upload_wait(self.train_loop_obj, exception))

    def evaluate_result_packages(self) -> Dict[str, Dict[str, Any]]:
        """Prepare the result packages on the (cached) validation / test predictions."""
        loop, results = self.train_loop_obj, {}
        for name, package, predict in (("validation", self.val_result_package, loop.predict_on_validation_set),
                                       ("test", self.test_result_package, loop.predict_on_test_set)):
            if package is not None:
                y_pred, y_true, metadata = predict()
                package.prepare_result_package(y_true, y_pred, hyperparameters=dict(self.store.hyperparams),
                                               additional_results=metadata)
                results[name] = package.get_results()
        return results

    def _gathers_state(self) -> bool:
        return getattr(self.train_loop_obj.strategy, "shards_checkpoints", False)

    def save_model(self, state: Optional[Dict[str, Any]] = None) -> str:
        """Save the final model as ``model/model.pt``: the TrainLoop's state (``model_state_dict``
        without wrapper prefixes, full tensors under FSDP, the optimizers, the position...), as a
        checkpoint holds it (``state``; None: ``TrainLoop.state_dict()`` now)."""
        path = self.store.local_path(ef.MODEL_DIR, FINAL_MODEL_FILE)
        atomic_torch_save(self.train_loop_obj.state_dict() if state is None else state, path)
        return self.store.publish(path)

    def save_results(self, package_results: Dict[str, Dict[str, Any]]) -> str:
        """Write ``results/results.json``: package results, final metrics, hyperparameters."""
        history = self.train_loop_obj.train_history
        final = {name: values[-1] for name, values in history.items() if len(values)}
        folder = self.store.folder
        content = {"project_name": folder.project_name, "experiment_name": folder.experiment_name,
                   "experiment_folder": folder.name, **package_results,
                   "final_metrics": final, "hyperparameters": self.store.hyperparams}
        return self.store.write_json(content, ef.RESULTS_DIR, RESULTS_FILE)

    def save_additional_results(self) -> List[str]:
        """Copy the result packages' extra files into ``results/`` and mirror them (see
        :func:`save_additional_result_files`)."""
        return save_additional_result_files(self.store, (self.val_result_package, self.test_result_package))

    def save_history(self) -> None:
        """Write the training history (JSON, CSV) and its plots into ``results/``."""
        save_history_files(self.store, self.train_loop_obj.train_history.get_train_history_dict())


def save_additional_result_files(store, packages: Sequence[Optional[AbstractResultPackage]]) -> List[str]:
    """Copy each package's ``get_additional_results_dump_paths()`` files into ``results/`` and mirror them.

    Each ``[file_name, local_path]`` pair becomes ``results/<file_name>`` (a file already there is
    only mirrored). A missing file is logged and skipped, so that the other results still get saved.

    Args:
        store: the experiment store.
        packages: result packages (None entries are skipped).

    Returns:
        The local paths of the saved files.

    Raises:
        ValueError: a ``file_name`` that is absolute or leads out of ``results/``.
    """
    saved = []
    for package in packages:
        for file_name, source in (package.get_additional_results_dump_paths() or []) if package else ():
            relative = os.path.normpath(file_name)
            if os.path.isabs(relative) or relative.split(os.sep)[0] == os.pardir:
                raise ValueError(f"{type(package).__name__}.list_additional_results_dump_paths() gave the file "
                                 f"name {file_name!r}: it must be a path inside results/, not absolute or '..'.")
            destination = store.local_path(ef.RESULTS_DIR, relative)
            if not os.path.isfile(source):
                logger.warning("Additional result file %s of %s does not exist; not saved.", source,
                               type(package).__name__)
                continue
            if os.path.abspath(source) != os.path.abspath(destination):
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with atomic_write_path(destination) as tmp_path:
                    shutil.copyfile(source, tmp_path)
            saved.append(store.publish(destination))
    return saved


def save_history_files(store, history: Dict[str, list], file_format: str = "png", plots: bool = True) -> None:
    """Write ``results/train_history.json``, ``.csv`` and (optionally) the plots, and mirror them."""
    store.write_json(history, ef.RESULTS_DIR, HISTORY_JSON_FILE)
    store.publish(write_history_csv(history, store.local_path(ef.RESULTS_DIR, HISTORY_CSV_FILE)))
    if plots:
        save_history_plots(store, history, file_format)


def save_history_plots(store, history: Dict[str, list], file_format: str = "png") -> None:
    """Plot every numeric history metric into ``results/plots/`` and mirror the files."""
    folder = store.local_path(ef.RESULTS_DIR, PLOTS_DIR)
    for path in plot_history(history, folder, file_format):
        store.publish(path)


def validate_result_packages(val_result_package, test_result_package, validation_loader: Any = False,
                             test_loader: Any = False) -> None:
    """Check the result packages (and, when the loaders are given, that their data exists).

    Raises:
        TypeError: a package that is not an ``AbstractResultPackage``.
        ValueError: a package for a data set whose loader is None.
    """
    for name, package, loader, loader_name in (
            ("val_result_package", val_result_package, validation_loader, "validation_loader"),
            ("test_result_package", test_result_package, test_loader, "test_loader")):
        if package is None:
            continue
        if not isinstance(package, AbstractResultPackage):
            raise TypeError(f"{name} must be an AbstractResultPackage (e.g. ClassificationResultPackage()) "
                            f"or None, got {type(package).__name__}.")
        if loader is None:
            raise ValueError(f"{name} is given but {loader_name} is None: pass a {loader_name} to "
                             f"evaluate it on, or drop {name}.")


__all__ = ["ModelCheckpoint", "ModelIterationCheckpoint", "ModelTrainEndSave", "validate_checkpoint_args",
           "validate_result_packages", "validate_save_frequency", "save_additional_result_files", "save_history_files", "save_history_plots"]
