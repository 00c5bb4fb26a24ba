"""Writers of experiment results: JSON, the training history as CSV, and metric plots.

Everything is written atomically (temporary file, then rename). Results are JSON, never pickle.
matplotlib is optional: it is imported only when plotting, and without it plots are skipped
with one log line.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import numbers
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from aitoolbox.utils.io import atomic_write_path, atomic_write_text

logger = logging.getLogger("aitoolbox")
_warned_no_matplotlib = False


def to_jsonable(value: Any) -> Any:
    """``value`` made of JSON types only: tensors / arrays become lists, the rest ``repr()``.

    Non-finite floats become the strings ``'nan'``, ``'inf'``, ``'-inf'`` so the file stays
    strict JSON.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return to_jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def write_json(obj: Any, path: str) -> str:
    """Write ``obj`` (made JSON-safe by :func:`to_jsonable`) to ``path`` atomically."""
    return atomic_write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n", path)


#: history keys with this prefix hold end-of-training values (one per ``fit``), not per-epoch ones
TRAIN_END_PREFIX = "train_end_"


def is_train_end_metric(name: str) -> bool:
    """Whether a history key holds end-of-training values (``train_end_test_loss``, ...)."""
    return name.startswith(TRAIN_END_PREFIX)


def history_epochs(history: Mapping[str, Sequence]) -> Dict[str, List[int]]:
    """The epoch (1-based) each recorded value belongs to, per history key with values.

    A per-epoch key's i-th value belongs to epoch i. A ``train_end_*`` key's values were recorded
    at the end of training, so they belong to the last epochs: the latest one to the last epoch
    of the history (with one ``fit``, its only value is the last epoch's), the one before to the
    epoch before, and so on.
    """
    names = [name for name, values in history.items() if len(values)]
    num_epochs = max((len(history[n]) for n in names if not is_train_end_metric(n)), default=0)
    epochs = {}
    for name in names:
        count = len(history[name])
        if is_train_end_metric(name):
            last = max(num_epochs, count)
            epochs[name] = list(range(last - count + 1, last + 1))
        else:
            epochs[name] = list(range(1, count + 1))
    return epochs


def history_to_csv(history: Mapping[str, Sequence]) -> str:
    """The history as CSV: a header of metric names, one row per epoch.

    Each value is in the row of the epoch it belongs to (:func:`history_epochs`): a
    ``train_end_*`` value in the last epoch's row, never in the first one's; other cells blank.
    """
    epochs = history_epochs(history)
    num_rows = max((e[-1] for e in epochs.values()), default=0)
    rows = {name: dict(zip(epoch_list, history[name])) for name, epoch_list in epochs.items()}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch"] + list(epochs))
    for epoch in range(1, num_rows + 1):
        writer.writerow([epoch] + [_csv_cell(rows[name], epoch) for name in epochs])
    return buffer.getvalue()


def _csv_cell(values: Mapping[int, Any], epoch: int) -> Any:
    if epoch not in values:
        return ""
    value = to_jsonable(values[epoch])
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def write_history_csv(history: Mapping[str, Sequence], path: str) -> str:
    """Write :func:`history_to_csv` to ``path`` atomically."""
    return atomic_write_text(history_to_csv(history), path)


def plottable_metrics(history: Mapping[str, Sequence]) -> Dict[str, List[float]]:
    """The history's metrics that have at least one value, all of them real numbers."""
    result = {}
    for name, values in history.items():
        if values and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            result[name] = [float(v) for v in values]
    return result


def plot_file_name(metric_name: str, file_format: str = "png") -> str:
    """File name of a metric's plot: the metric name made safe for any file system."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in metric_name).strip(".")
    return f"{safe or 'metric'}.{file_format}"


def import_matplotlib_figure() -> Optional[Any]:
    """matplotlib's ``Figure`` class, or None (logged once) when matplotlib is not installed."""
    global _warned_no_matplotlib
    try:
        from matplotlib.figure import Figure
    except ImportError:
        if not _warned_no_matplotlib:
            logger.info("matplotlib is not installed: training history plots are skipped "
                        "(pip install 'aitoolbox[plots]' to get them).")
            _warned_no_matplotlib = True
        return None
    return Figure


def new_figure(figsize=(6, 4)) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas (object API: no pyplot, no global backend change).

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def metric_figure(metric_name: str, values: Sequence[float], epochs: Optional[Sequence[int]] = None) -> Any:
    """A matplotlib ``Figure`` of one metric over the epochs, with integer epoch ticks.

    Args:
        metric_name: the title and the y label.
        values: the values.
        epochs: the epoch of each value (default ``1..len(values)``; see :func:`history_epochs`).

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.ticker import MaxNLocator

    epochs = list(range(1, len(values) + 1)) if epochs is None else list(epochs)
    figure = new_figure()
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(epochs, list(values), marker="o" if len(values) < 30 else None)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs and min(epochs) == max(epochs):  # one epoch: an axis around it, not a sub-epoch one
        axes.set_xlim(epochs[0] - 1, epochs[0] + 1)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric_name)
    axes.set_title(metric_name)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return figure


def save_figure(figure: Any, path: str, file_format: str = "png") -> str:
    """Save a figure to ``path`` atomically; returns ``path``."""
    with atomic_write_path(path) as tmp_path:
        figure.savefig(tmp_path, format=file_format)
    return path


def plot_metric(metric_name: str, values: Sequence[float], path: str, file_format: str = "png",
                epochs: Optional[Sequence[int]] = None) -> str:
    """Plot one metric over the epochs (:func:`metric_figure`) into ``path`` (atomically).

    Raises:
        ImportError: matplotlib is not installed.
    """
    return save_figure(metric_figure(metric_name, values, epochs), path, file_format)


def plot_history(history: Mapping[str, Sequence], folder: str, file_format: str = "png") -> List[str]:
    """Plot every numeric metric of ``history`` into ``folder``; returns the files written.

    Each value is plotted at the epoch it belongs to (:func:`history_epochs`).

    Without matplotlib nothing is written (and one log line says so).
    """
    if import_matplotlib_figure() is None:
        return []
    written = []
    epochs = history_epochs(history)
    for name, values in plottable_metrics(history).items():
        written.append(plot_metric(name, values, os.path.join(folder, plot_file_name(name, file_format)),
                                   file_format, epochs[name]))
    return written
