"""Reports of the training history and of the gradients: plots (PNG or one PDF) and text tables.

Built on :mod:`aitoolbox.experiment.result_writers` (the figures, atomic writes); matplotlib is
imported only when plotting (``pip install "aitoolbox[plots]"``). Every ``generate_report`` returns
``[path inside the results folder, local path]`` pairs (the plotters) or one such pair (the writer),
which is what the cloud savers need to mirror the files.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from aitoolbox.experiment import result_writers as rw
from aitoolbox.utils.io import atomic_write_path, atomic_write_text
from aitoolbox.utils.optional import import_optional

logger = logging.getLogger("aitoolbox")
PLOT_FORMATS = ("png", "pdf")
TABLE_FORMATS = ("txt", "tsv", "csv")


def history_dict(training_history: Any) -> Dict[str, List]:
    """``{name: values}`` of a ``TrainingHistory`` (or a plain dict), without the empty metrics."""
    if hasattr(training_history, "get_train_history_dict"):
        return training_history.get_train_history_dict(flatten_dict=True)
    return {name: list(values) for name, values in dict(training_history).items() if len(values)}


def _check_format(file_format: str, allowed: Sequence[str]) -> None:
    if file_format not in allowed:
        raise ValueError(f"file_format {file_format!r} is not supported: use one of {list(allowed)}.")


def _require_matplotlib(feature: str) -> None:
    import_optional("matplotlib", "plots", feature)


def _save_figures(figures: Iterator[Tuple[str, Any]], base_folder: str, folder_name: str, file_format: str,
                  file_prefix: str = "") -> List[List[str]]:
    """PNG: one file per figure in ``base_folder/folder_name/``; PDF: all in ``base_folder/<folder_name>.pdf``."""
    if file_format == "png":
        folder = os.path.join(base_folder, folder_name)
        os.makedirs(folder, exist_ok=True)
        paths = []
        for name, figure in figures:
            file_name = rw.plot_file_name(f"{file_prefix}{name}", "png")
            paths.append([os.path.join(folder_name, file_name),
                          rw.save_figure(figure, os.path.join(folder, file_name), "png")])
        return paths
    from matplotlib.backends.backend_pdf import PdfPages

    os.makedirs(base_folder, exist_ok=True)
    file_name = f"{folder_name}.pdf"
    path = os.path.join(base_folder, file_name)
    with atomic_write_path(path) as tmp_path:
        with PdfPages(tmp_path) as pdf:
            for _, figure in figures:
                pdf.savefig(figure)
    return [[file_name, path]]


class TrainingHistoryPlotter:
    """Plot every metric of the training history over the epochs.

    Args:
        experiment_results_local_path: the experiment's results folder.
    """

    def __init__(self, experiment_results_local_path: str):
        self.experiment_results_local_path = os.path.expanduser(os.fspath(experiment_results_local_path))

    def generate_report(self, training_history: Any, plots_folder_name: str = "plots",
                        file_format: str = "png") -> List[List[str]]:
        """Plot each numeric metric with more than one value.

        Args:
            training_history: a ``TrainingHistory`` (or a ``{name: values}`` dict).
            plots_folder_name: PNG: the folder of the plots; PDF: the PDF's file name (no extension).
            file_format: ``'png'`` (a file per metric) or ``'pdf'`` (one file, a page per metric).

        Returns:
            ``[path inside the results folder, local path]`` of every file written.

        Raises:
            ValueError: an unsupported ``file_format``.
            ImportError: matplotlib is not installed.
        """
        _check_format(file_format, PLOT_FORMATS)
        _require_matplotlib("TrainingHistoryPlotter")
        return _save_figures(self.generate_plots(training_history), self.experiment_results_local_path,
                             plots_folder_name, file_format)

    @staticmethod
    def generate_plots(training_history: Any) -> Iterator[Tuple[str, Any]]:
        """``(metric name, figure)`` of each numeric metric with more than one value."""
        for name, values in rw.plottable_metrics(history_dict(training_history)).items():
            if len(values) > 1:
                yield name, TrainingHistoryPlotter.plot_performance_curve(name, values)

    @staticmethod
    def plot_performance_curve(metric_name: str, result_history: Sequence[float]) -> Any:
        """The figure of one metric over the epochs, its best values in the subtitle."""
        figure = rw.metric_figure(metric_name, result_history)
        values = list(result_history)
        best_max, best_min = max(range(len(values)), key=values.__getitem__), min(range(len(values)),
                                                                                   key=values.__getitem__)
        figure.axes[0].set_title(f"{metric_name}\nmax {values[best_max]:.6g} (epoch {best_max + 1}), "
                                 f"min {values[best_min]:.6g} (epoch {best_min + 1})", fontsize=9)
        figure.tight_layout()
        return figure


class TrainingHistoryWriter:
    """Append the latest value of every training-history metric to a text / TSV / CSV report.

    Args:
        experiment_results_local_path: the experiment's results folder.

    Attributes:
        metric_name_cols: the columns of the TSV / CSV table written last.
    """

    def __init__(self, experiment_results_local_path: str):
        self.experiment_results_local_path = os.path.expanduser(os.fspath(experiment_results_local_path))
        self.metric_name_cols: Optional[List[str]] = None

    def generate_report(self, training_history: Any, epoch: int, file_name: str, results_folder_name: str = "",
                        file_format: str = "txt") -> Tuple[str, str]:
        """Append this epoch's values to ``<results>/<results_folder_name>/<file_name>`` (atomically).

        ``'txt'``: an ``Epoch: <epoch>`` block with a ``name:<TAB>value`` line per metric.
        ``'tsv'`` / ``'csv'``: a header row ``Epoch, <metrics>`` the first time, then a row per call;
        when the set of metrics changes, a ``NEW_METRICS_DETECTED`` row and a new header.

        Returns:
            ``(path inside the results folder, local path)``.

        Raises:
            ValueError: an unsupported ``file_format``.
        """
        _check_format(file_format, TABLE_FORMATS)
        folder = os.path.join(self.experiment_results_local_path, results_folder_name or "")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, file_name)
        history = history_dict(training_history)
        if file_format == "txt":
            addition = self.txt_block(history, epoch)
        else:
            addition = self.table_rows(history, epoch, "\t" if file_format == "tsv" else ",")
        atomic_write_text(_read_text(path) + addition, path)
        return os.path.join(results_folder_name or "", file_name), path

    @staticmethod
    def txt_block(history: Mapping[str, List], epoch: int) -> str:
        """The text block of one epoch."""
        rule = "=" * 28
        lines = [rule, f"Epoch: {epoch}", rule] + [f"{name}:\t{values[-1]}" for name, values in history.items()]
        return "\n".join(lines) + "\n\n\n"

    def table_rows(self, history: Mapping[str, List], epoch: int, delimiter: str) -> str:
        """The CSV / TSV rows of one epoch (with a header when the metrics are new)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
        names = list(history)
        if self.metric_name_cols is None:
            self.metric_name_cols = names
            writer.writerow(["Epoch"] + names)
        elif sorted(names) != sorted(self.metric_name_cols):
            self.metric_name_cols = names
            writer.writerow(["NEW_METRICS_DETECTED"])
            writer.writerow(["Epoch"] + names)
        writer.writerow([epoch] + [history[name][-1] for name in self.metric_name_cols])
        return buffer.getvalue()


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as file:
        return file.read()


class GradientPlotter:
    """Plot the distribution (histogram) of each layer's gradients.

    Args:
        experiment_grad_results_local_path: the folder the plots go into.
    """

    def __init__(self, experiment_grad_results_local_path: str):
        self.experiment_grad_results_local_path = os.path.expanduser(os.fspath(experiment_grad_results_local_path))

    def generate_report(self, model_layer_gradients: Sequence[Any], grad_plots_folder_name: str = "grad_plots",
                        file_format: str = "png") -> List[List[str]]:
        """Plot the gradients of every layer (a layer whose gradients are None is skipped and logged).

        Args:
            model_layer_gradients: per layer, its flattened gradients (array, tensor or list) or None.
            grad_plots_folder_name: PNG: the plots' folder (files ``layer_<idx>.png``); PDF: the
                PDF's file name (no extension).
            file_format: ``'png'`` or ``'pdf'``.

        Returns:
            ``[path inside the gradient folder, local path]`` of every file written.

        Raises:
            ValueError: an unsupported ``file_format``.
            ImportError: matplotlib is not installed.
        """
        _check_format(file_format, PLOT_FORMATS)
        _require_matplotlib("GradientPlotter")
        return _save_figures(self.generate_dist_plots(model_layer_gradients), self.experiment_grad_results_local_path,
                             grad_plots_folder_name, file_format, file_prefix="layer_")

    @staticmethod
    def generate_dist_plots(model_layer_gradients: Sequence[Any],
                            layer_names: Optional[Sequence[str]] = None) -> Iterator[Tuple[Any, Any]]:
        """``(layer name, figure)`` of each layer that has gradients."""
        for idx, gradients in enumerate(model_layer_gradients):
            name = idx if layer_names is None else layer_names[idx]
            if gradients is None:
                logger.info("Layer %s grads are None", name)
                continue
            yield name, GradientPlotter.plot_gradient_distribution(gradients, name)

    @staticmethod
    def plot_gradient_distribution(gradients: Any, layer_name: Any) -> Any:
        """The histogram of one layer's gradients, with their mean and std in the title."""
        values = _flat_floats(gradients)
        mean = float(np.mean(values)) if values.size else float("nan")
        std = float(np.std(values)) if values.size else float("nan")
        figure = rw.new_figure((6, 4))
        axes = figure.add_subplot(1, 1, 1)
        axes.hist(values, bins=min(50, max(values.size, 1)))
        axes.set_xlabel("Gradient magnitude")
        axes.set_ylabel("count")
        axes.set_title(f"Gradient distribution for layer {layer_name}\nmean {mean:.4g}, std {std:.4g}", fontsize=9)
        figure.tight_layout()
        return figure


def _flat_floats(values: Any) -> np.ndarray:
    """The gradients as a flat float64 numpy array (tensors are moved to the CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


__all__ = ["TrainingHistoryPlotter", "TrainingHistoryWriter", "GradientPlotter"]
