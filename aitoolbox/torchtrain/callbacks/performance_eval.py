"""Performance evaluation callbacks: metrics into the training history, reports, files and plots.

* :class:`ModelPerformanceEvaluation` - evaluates a result package on the train / validation
  predictions and stores ``train_<metric>`` / ``val_<metric>`` in the history.
* :class:`ModelPerformancePrintReport` - logs chosen history metrics.
* :class:`ModelTrainHistoryPlot` / :class:`ModelTrainHistoryFileWriter` - plot / write the
  history into the experiment folder's ``results/``.
* :class:`TrainHistoryFormatter` / :class:`MetricHistoryRename` - derive history entries from
  other entries.

Execution order: evaluation first (-100), then formatters (-50), reports (50), writers (900) and
savers (1000), so that every observer sees the epoch's metrics.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.result_package.abstract_result_packages import AbstractResultPackage
from aitoolbox.experiment.result_writers import history_to_csv
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.experiment_base import (
    EVALUATION_ORDER, HISTORY_FORMAT_ORDER, REPORT_ORDER, WRITER_ORDER, AbstractExperimentCallback)
from aitoolbox.torchtrain.callbacks.model_save import HISTORY_JSON_FILE, save_history_plots
from aitoolbox.utils.io import atomic_write_text

logger = logging.getLogger("aitoolbox")
HISTORY_FILE_FORMATS = ("txt", "csv", "json")


def _check_frequency(value: Any, arg_name: str) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{arg_name} must be None (every epoch) or an int >= 1, got {value!r}.")
    return value


def _due(epoch_idx: int, frequency: Optional[int]) -> bool:
    """Every ``frequency``-th epoch from the first (indices 0, f, 2f, ...), as the original."""
    return frequency is None or epoch_idx % frequency == 0


class MissingMetricError(KeyError, ValueError):
    """A metric asked for is not in the training history (a KeyError, and the original's ValueError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelPerformanceEvaluation(AbstractCallback):
    """Evaluate a result package on the model's predictions and store the metrics in the history.

    Uses the TrainLoop's cached ``predict_on_train_set`` / ``predict_on_validation_set``, so that
    several consumers in one epoch share one prediction pass. Metrics go into the history as
    ``train_<metric>`` and ``val_<metric>`` (e.g. ``val_Accuracy``; a dict-valued metric as
    ``val_<metric>_<key>``). At the end of training the package is evaluated once more, into
    ``train_end_train_<metric>`` / ``train_end_val_<metric>``.

    Args:
        result_package: an ``AbstractResultPackage``, e.g. ``ClassificationResultPackage()``.
        args: the hyperparameters handed to the package (not mutated).
        on_each_epoch: evaluate at every epoch end (besides the end of training).
        on_train_data: evaluate on the training set.
        on_val_data: evaluate on the validation set.
        eval_frequency: with ``on_each_epoch``, evaluate every this many epochs, starting with the
            first (None: every one).
        if_available_output_to_project_dir: in a tracking TrainLoop, tell the package the
            experiment folder (``set_experiment_dir_path_for_additional_results``) so that it
            writes its extra files inside it.

    Raises:
        TypeError, ValueError: invalid arguments, or (at registration) ``on_val_data`` without a
            validation loader.
    """

    def __init__(self, result_package: AbstractResultPackage, args: Optional[Dict[str, Any]],
                 on_each_epoch: bool = True, on_train_data: bool = False, on_val_data: bool = True,
                 eval_frequency: Optional[int] = None, if_available_output_to_project_dir: bool = True):
        super().__init__("Model performance evaluation", execution_order=EVALUATION_ORDER)
        if not isinstance(result_package, AbstractResultPackage):
            raise TypeError("result_package must be an AbstractResultPackage (e.g. "
                            "ClassificationResultPackage()), "
                            f"got {type(result_package).__name__}.")
        if not on_train_data and not on_val_data:
            raise ValueError("ModelPerformanceEvaluation evaluates nothing: set on_train_data and/or on_val_data.")
        self.result_package = result_package
        self.train_result_package = copy.deepcopy(result_package) if on_train_data else None
        self.args = args
        self.on_each_epoch, self.on_train_data, self.on_val_data = on_each_epoch, on_train_data, on_val_data
        self.eval_frequency = _check_frequency(eval_frequency, "eval_frequency")
        self.if_available_output_to_project_dir = if_available_output_to_project_dir

    def produced_history_metrics(self):
        """``[train_|val_]<metric>`` of the package (its names are known only once it ran)."""
        datasets = (["train_"] if self.on_train_data else []) + (["val_"] if self.on_val_data else [])
        produced = [f"train_end_{d}*" for d in datasets]
        return produced + ([f"{d}*" for d in datasets] if self.on_each_epoch else [])

    def on_train_loop_registration(self):
        loop = self.train_loop_obj
        if self.on_val_data and loop.validation_loader is None:
            raise ValueError("ModelPerformanceEvaluation(on_val_data=True) needs a validation_loader in the "
                             "TrainLoop; pass one or set on_val_data=False.")
        experiment = _loop_experiment(loop)
        if self.if_available_output_to_project_dir and experiment is not None:
            for package in (self.result_package, self.train_result_package):
                if package is not None:
                    package.set_experiment_dir_path_for_additional_results(*experiment)

    def on_epoch_end(self):
        if self.on_each_epoch and _due(self.train_loop_obj.epoch, self.eval_frequency):
            self.evaluate()
        self._reset_metric_states()

    def on_train_end(self):
        self.evaluate(prefix="train_end_")

    def _reset_metric_states(self) -> None:
        """Stateful packages (``TorchMetricsPackage``) forget the epoch's accumulated state."""
        for package in (self.train_result_package, self.result_package):
            if package is not None and hasattr(package, "metric_reset"):
                package.metric_reset()

    def evaluate_model_performance(self, prefix: str = "") -> None:
        """aitoolbox 1.8's name of :meth:`evaluate`."""
        self.evaluate(prefix)

    def evaluate(self, prefix: str = "") -> None:
        """Evaluate the packages now and append their metrics to the history (every rank).

        Args:
            prefix: put before the history names, e.g. ``'train_end_'``.
        """
        loop = self.train_loop_obj
        if self.on_train_data:
            self._evaluate_into_history(f"{prefix}train_", self.train_result_package, loop.predict_on_train_set,
                                        loop.evaluate_loss_on_train_set)
        if self.on_val_data:
            self._evaluate_into_history(f"{prefix}val_", self.result_package, loop.predict_on_validation_set,
                                        loop.evaluate_loss_on_validation_set)

    def _evaluate_into_history(self, prefix: str, package: AbstractResultPackage, predict: Callable,
                               evaluate_loss: Callable) -> None:
        y_pred, y_true, metadata = predict()
        additional_results = dict(metadata) if isinstance(metadata, dict) else {}
        if getattr(package, "requires_loss", False):
            additional_results["loss"] = evaluate_loss(float_dict_format=True)
        hyperparameters = None if self.args is None else dict(self.args)
        package.prepare_result_package(y_true, y_pred, hyperparameters=hyperparameters,
                                       additional_results=additional_results)
        for name, value in package.get_results().items():
            self.train_loop_obj.insert_metric_result_into_history(f"{prefix}{name}", value)


def _loop_experiment(loop) -> Optional[Tuple[str, str, str, str]]:
    """``(project_name, experiment_name, experiment_timestamp, local_model_result_folder_path)`` of a
    tracking TrainLoop, or None for a plain one."""
    names = ("project_name", "experiment_name", "experiment_timestamp", "local_model_result_folder_path")
    values = tuple(getattr(loop, name, None) for name in names)
    if any(value is None for value in values):
        return None
    return tuple(str(value) for value in values)


class ModelPerformancePrintReport(AbstractCallback):
    """Log the latest values of chosen history metrics (main process only).

    Args:
        metrics: history metric names, e.g. ``['val_Accuracy', 'val_loss']``.
        on_each_epoch: report at every epoch end (besides the end of training).
        report_frequency: with ``on_each_epoch``, report every this many epochs, starting with the
            first.
        strict_metric_reporting: a metric missing from the history raises; False logs a warning.
            At the end of training each metric is reported as ``train_end_<metric>`` (as written
            by ``ModelPerformanceEvaluation``), or under its own name when there is none.
        list_tracked_metrics: also log the names of every metric in the history.

    Raises:
        TypeError, ValueError: invalid arguments.
    """

    def __init__(self, metrics: Sequence[str], on_each_epoch: bool = True, report_frequency: Optional[int] = None,
                 strict_metric_reporting: bool = True, list_tracked_metrics: bool = False):
        super().__init__("Model performance print report", execution_order=REPORT_ORDER)
        if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
            raise TypeError(f"metrics must be a list of history metric names, got {metrics!r}.")
        if not metrics:
            raise ValueError("metrics is empty: name at least one history metric, e.g. ['val_loss'].")
        self.metrics = list(metrics)
        self.on_each_epoch, self.report_frequency = on_each_epoch, _check_frequency(report_frequency,
                                                                                    "report_frequency")
        self.strict_metric_reporting, self.list_tracked_metrics = strict_metric_reporting, list_tracked_metrics

    def monitored_history_metrics(self):
        if not self.strict_metric_reporting:  # missing metrics are accepted (and warned about)
            return []
        return [("metrics", metric, self.on_each_epoch) for metric in self.metrics]

    def on_epoch_end(self):
        if self.on_each_epoch and _due(self.train_loop_obj.epoch, self.report_frequency):
            self.report(f"Epoch {self.train_loop_obj.epoch + 1}")

    def on_train_end(self):
        self.report("End of training", prefix="train_end_")

    def report(self, title: str, prefix: str = "") -> None:
        """Log the metrics under ``title``.

        Args:
            title: the report's heading.
            prefix: report ``<prefix><metric>`` where the history has it.

        Raises:
            MissingMetricError: (a KeyError and ValueError) a metric is missing and
                ``strict_metric_reporting`` is True.
        """
        history = self.train_loop_obj.train_history
        names = [f"{prefix}{m}" if history.get_last(f"{prefix}{m}") is not None else m for m in self.metrics]
        missing = [m for m in names if history.get_last(m) is None]
        if missing and self.strict_metric_reporting:
            raise MissingMetricError(
                f"Metrics {missing} are not in the training history (it has {list(history.keys())}); "
                "evaluate them (e.g. ModelPerformanceEvaluation) or pass strict_metric_reporting=False.")
        if not self.train_loop_obj.is_main_process():
            return
        if missing:
            logger.warning("Metrics not in the training history: %s", missing)
        lines = [f"{title} performance report:"]
        lines += [f"  {m}: {history.get_last(m)}" for m in names if m not in missing]
        if self.list_tracked_metrics:
            lines.append(f"  tracked metrics: {list(history.keys())}")
        logger.info("\n".join(lines))


class ModelTrainHistoryBaseCB(AbstractExperimentCallback):
    """Base class of callbacks that write the training history out (plots, files): when, and where.

    Subclasses implement :meth:`write`, writing through ``self.store`` (the experiment store) into
    the experiment folder; it runs at every epoch end (``epoch_end``) and/or at the end of
    training (``train_end``), on the writing process only.

    Args:
        callback_name: name of the callback.
        execution_order: callback order; None: the writers' slot (after evaluation and reports).
        epoch_end: write at every epoch end.
        train_end: write at the end of training.
        file_format: the output format, for the subclass.
        project_name, experiment_name, local_model_result_folder_path: the experiment, as in
            ``ModelCheckpoint``; None (all three): the TrainLoop's experiment.
        cloud_save_mode, bucket_name, cloud_dir_prefix: as in ``ModelCheckpoint``.

    Raises:
        ValueError: both ``epoch_end`` and ``train_end`` False, or invalid experiment arguments.
    """

    def __init__(self, callback_name: str, execution_order: Optional[int] = None, epoch_end: bool = True,
                 train_end: bool = False, file_format: str = "", project_name: Optional[str] = None,
                 experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]] = None,
                 cloud_save_mode: Optional[str] = None, bucket_name: str = "model-result",
                 cloud_dir_prefix: str = ""):
        if not epoch_end and not train_end:
            raise ValueError(f"{callback_name} writes nothing: set epoch_end and/or train_end.")
        super().__init__(callback_name, project_name, experiment_name, local_model_result_folder_path,
                         cloud_save_mode, bucket_name, cloud_dir_prefix,
                         execution_order=WRITER_ORDER if execution_order is None else execution_order)
        self.epoch_end, self.train_end, self.file_format = epoch_end, train_end, file_format

    def on_train_begin(self):
        if self.is_writer():
            self.store.start_run()

    def on_epoch_end(self):
        if self.epoch_end and self.is_writer():
            self.write()

    def on_train_end(self):
        if self.is_writer():
            if self.train_end:
                self.write()
            self.store.finish_run()

    def write(self) -> None:
        """Write the output now."""
        raise NotImplementedError


class ModelTrainHistoryPlot(ModelTrainHistoryBaseCB):
    """Plot every numeric history metric into ``results/plots/<metric>.<file_format>``.

    matplotlib is optional: without it the plots are skipped with one log line. Without the
    naming arguments the TrainLoop's experiment (e.g. of a tracking TrainLoop) is used.

    Args:
        epoch_end: plot at every epoch end.
        train_end: plot at the end of training.
        file_format: image format understood by matplotlib (``'png'``, ``'pdf'``, ``'svg'``, ...).
        project_name, experiment_name, local_model_result_folder_path: the experiment, as in
            ``ModelCheckpoint``; None (all three): the TrainLoop's experiment.
        cloud_save_mode, bucket_name, cloud_dir_prefix: as in ``ModelCheckpoint``.

    Raises:
        TypeError, ValueError: invalid arguments or a missing bucket.
    """

    def __init__(self, epoch_end: bool = True, train_end: bool = False, file_format: str = "png",
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]] = None,
                 cloud_save_mode: Optional[str] = None, bucket_name: str = "model-result",
                 cloud_dir_prefix: str = ""):
        super().__init__("Model train history plot", None, epoch_end, train_end,
                         ef.validate_name(file_format, "file_format"), project_name, experiment_name,
                         local_model_result_folder_path, cloud_save_mode, bucket_name, cloud_dir_prefix)

    def write(self) -> None:
        save_history_plots(self.store, self.train_loop_obj.train_history.get_train_history_dict(),
                           self.file_format)


class ModelTrainHistoryFileWriter(ModelTrainHistoryBaseCB):
    """Write the training history to ``results/train_history.<file_format>``.

    Args:
        epoch_end: write at every epoch end.
        train_end: write at the end of training.
        file_format: ``'txt'`` (one readable line per epoch), ``'csv'`` or ``'json'``.
        project_name, experiment_name, local_model_result_folder_path: the experiment, as in
            ``ModelCheckpoint``; None (all three): the TrainLoop's experiment.
        cloud_save_mode, bucket_name, cloud_dir_prefix: as in ``ModelCheckpoint``.

    Raises:
        TypeError, ValueError: invalid arguments or a missing bucket.
    """

    def __init__(self, epoch_end: bool = True, train_end: bool = False, file_format: str = "txt",
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[Union[str, os.PathLike]] = None,
                 cloud_save_mode: Optional[str] = None, bucket_name: str = "model-result",
                 cloud_dir_prefix: str = ""):
        if file_format not in HISTORY_FILE_FORMATS:
            raise ValueError(f"file_format must be one of {HISTORY_FILE_FORMATS}, got {file_format!r}.")
        super().__init__("Model train history file writer", None, epoch_end, train_end, file_format,
                         project_name, experiment_name, local_model_result_folder_path, cloud_save_mode,
                         bucket_name, cloud_dir_prefix)

    def write(self) -> None:
        history = self.train_loop_obj.train_history.get_train_history_dict()
        if self.file_format == "json":
            self.store.write_json(history, ef.RESULTS_DIR, HISTORY_JSON_FILE)
            return
        text = history_to_csv(history) if self.file_format == "csv" else history_to_text(history)
        path = self.store.local_path(ef.RESULTS_DIR, f"train_history.{self.file_format}")
        self.store.publish(atomic_write_text(text, path))


def history_to_text(history: Dict[str, list]) -> str:
    """The history as readable text: one line per epoch, then the metrics with other lengths."""
    num_epochs = len(history.get("loss", [])) or max((len(v) for v in history.values()), default=0)
    lines = []
    for epoch in range(num_epochs):
        values = ", ".join(f"{name}: {vals[epoch]}" for name, vals in history.items() if len(vals) == num_epochs)
        lines.append(f"Epoch {epoch + 1}: {values}")
    lines += [f"{name}: {vals}" for name, vals in history.items() if vals and len(vals) != num_epochs]
    return "\n".join(lines) + "\n"


class TrainHistoryFormatter(AbstractCallback):
    """Derive a history entry from the history: ``name, value = setter(getter(history))``.

    Args:
        input_metric_getter: ``fn(history_dict) -> value`` reading the input (None: missing).
        output_metric_setter: ``fn(value) -> (metric_name, metric_value)`` naming the output.
        epoch_end: run at every epoch end.
        train_end: run at the end of training.
        strict_metric_extract: a missing input raises; False logs a warning and skips.

    Raises:
        TypeError, ValueError: invalid arguments.
    """

    def __init__(self, input_metric_getter: Callable[[Dict[str, list]], Any],
                 output_metric_setter: Callable[[Any], Tuple[str, Any]], epoch_end: bool = True,
                 train_end: bool = False, strict_metric_extract: bool = True):
        super().__init__("Train history formatter", execution_order=HISTORY_FORMAT_ORDER)
        if not callable(input_metric_getter) or not callable(output_metric_setter):
            raise TypeError("input_metric_getter and output_metric_setter must be callables.")
        if not epoch_end and not train_end:
            raise ValueError("TrainHistoryFormatter does nothing: set epoch_end and/or train_end.")
        self.input_metric_getter, self.output_metric_setter = input_metric_getter, output_metric_setter
        self.epoch_end, self.train_end, self.strict_metric_extract = epoch_end, train_end, strict_metric_extract

    def produced_history_metrics(self):
        return None  # the output's name comes from output_metric_setter, at run time

    def on_epoch_end(self):
        if self.epoch_end:
            self.format_history()

    def on_train_end(self):
        if self.train_end:
            self.format_history()

    def format_history(self) -> None:
        """Read the input, and append the output to the history (on every rank).

        Raises:
            KeyError: the input is missing and ``strict_metric_extract`` is True.
        """
        history = self.train_loop_obj.train_history.get_train_history()
        try:
            value = self.input_metric_getter(history)
        except (KeyError, IndexError, TypeError):
            value = None
        if value is None:
            if self.strict_metric_extract:
                raise KeyError(f"{self.callback_name}: input metric not found in the training history "
                               f"(it has {list(history)}); pass strict_metric_extract=False to skip.")
            logger.warning("%s: input metric not found in the training history; skipped.", self.callback_name)
            return
        name, output = self.output_metric_setter(value)
        self.train_loop_obj.insert_metric_result_into_history(name, output)


class MetricHistoryRename(TrainHistoryFormatter):
    """Copy the latest value of a history metric under a new name, e.g. ``val_Accuracy`` -> ``acc``.

    Args:
        input_metric_path: the history metric; ``'metric/key/...'`` reads into a dict value.
        new_metric_name: the name of the copy in the history.
        epoch_end: run at every epoch end.
        train_end: run at the end of training.
        strict_metric_extract: a missing input raises; False logs a warning and skips.

    Raises:
        TypeError, ValueError: invalid arguments.
    """

    def __init__(self, input_metric_path: str, new_metric_name: str, epoch_end: bool = True,
                 train_end: bool = False, strict_metric_extract: bool = True):
        if not isinstance(input_metric_path, str) or not isinstance(new_metric_name, str) or not new_metric_name:
            raise TypeError("input_metric_path and new_metric_name must be non-empty strings.")
        # partials of module functions, not lambdas: the callback must pickle (DDP spawn)
        super().__init__(functools.partial(_read_metric_path, path=input_metric_path),
                         functools.partial(_name_value, new_metric_name), epoch_end, train_end,
                         strict_metric_extract)
        self.callback_name = f"Metric history rename {input_metric_path} -> {new_metric_name}"
        self.input_metric_path, self.new_metric_name = input_metric_path, new_metric_name

    def produced_history_metrics(self):
        return [self.new_metric_name, f"{self.new_metric_name}_*"]

    def monitored_history_metrics(self):
        if not self.strict_metric_extract:  # a missing input is skipped, as asked
            return []
        return [("input_metric_path", self.input_metric_path.split("/")[0], self.epoch_end)]


def _name_value(name: str, value: Any) -> Tuple[str, Any]:
    return name, value


def _read_metric_path(history: Dict[str, list], path: str) -> Any:
    name, *keys = path.split("/")
    values = history.get(name)
    if not values:
        return None
    value = values[-1]
    for key in keys:
        value = value[key]
    return value


__all__ = ["ModelPerformanceEvaluation", "ModelPerformancePrintReport", "ModelTrainHistoryBaseCB",
           "MissingMetricError", "ModelTrainHistoryPlot",
           "ModelTrainHistoryFileWriter", "TrainHistoryFormatter", "MetricHistoryRename", "history_to_text"]
