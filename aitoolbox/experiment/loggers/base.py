"""The one interface every experiment logger implements.

A logger receives plain Python numbers: the ``LoggerCallback`` keeps a run's per-step values as
tensors and converts them only when it hands a block of steps over (every ``flush_every_n_steps``
logged steps and at every epoch end), so that logging never synchronises a CUDA device per step.

Call order (all on the main process, never inside a collective)::

    setup(experiment_dir)            once, before anything is logged
    log_hyperparams(params)          once, at the start of training
    log_columns(names, steps, wall_times, columns) / log_metrics(metrics, step)   many times
    log_epoch_metrics(metrics, step, epoch)   at every epoch end
    log_artifact(path)               at the end of training (the experiment folder's files)
    finalize(status)                 once, at the end ('success') or after a crash ('failed')
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence


class ExperimentLogger:
    """Base of the experiment loggers (CSV, TensorBoard, MLflow, Weights & Biases).

    Subclasses implement at least :meth:`log_metrics`; :meth:`log_columns` (what the callback
    calls with each block of steps) defaults to :meth:`log_steps`, which defaults to
    :meth:`log_metrics`, as does :meth:`log_epoch_metrics`; the other methods do nothing. A method may
    raise (a server that is down): the ``LoggerCallback`` warns once, keeps the values and hands
    them over again later, and training goes on.

    Attributes:
        name: what warnings call the logger.
        needs_folder: the logger writes files and needs a folder (its own ``save_dir`` or the
            experiment folder the callback gives to :meth:`setup`).
    """

    name = "logger"
    needs_folder = False

    def setup(self, experiment_dir: Optional[str]) -> None:
        """Prepare to log (open files, start a run); called once before anything is logged.

        Args:
            experiment_dir: the TrainLoop's experiment folder, or None when there is none.
        """

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters (a flat or nested dict)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` (name -> number) at ``step``.

        Args:
            metrics: the values, Python numbers.
            step: the x-axis value: batches trained so far.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement log_metrics(metrics, step).")

    def log_steps(self, names: Sequence[str], steps: Sequence[int], wall_times: Sequence[float],
                  rows: Sequence[Sequence[Optional[float]]]) -> None:
        """Record a block of per-step values: ``rows[i][j]`` is ``names[j]`` at ``steps[i]``.

        A value None was not measured at that step (e.g. the gradient norm of a batch that did
        not step the optimizer). Backends that can write a block at once override this.

        Args:
            names: metric names, one per column.
            steps: the step of each row.
            wall_times: when each step ended (``time.time()``).
            rows: the values.
        """
        for step, row in zip(steps, rows):
            self.log_metrics({n: v for n, v in zip(names, row) if v is not None}, step)

    def log_columns(self, names: Sequence[str], steps: Sequence[int], wall_times: Sequence[float],
                    columns: Sequence[Sequence[Optional[float]]]) -> None:
        """Record a block of per-step values by columns: ``columns[j][i]`` is ``names[j]`` at ``steps[i]``.

        What ``LoggerCallback`` calls with each block (columns are what the callback collects and
        what the CSV and TensorBoard writers lay out fastest). The default hands the block to
        :meth:`log_steps` as rows. The arguments are shared with the other loggers: read them,
        do not change them.

        Args:
            names: metric names, one per column.
            steps: the step of each row.
            wall_times: when each step ended (``time.time()``).
            columns: one sequence of ``len(steps)`` values (None: not measured) per name.
        """
        self.log_steps(names, steps, wall_times, columns_to_rows(columns, len(steps)))

    def log_epoch_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        """Record the values an epoch's end put into the training history.

        Args:
            metrics: history name -> latest value.
            step: batches trained so far.
            epoch: index of the epoch that ended (0 for the first).
        """
        self.log_metrics({**metrics, "epoch": epoch}, step)

    def log_artifact(self, path: str, name: Optional[str] = None) -> None:
        """Store a file or folder with the run (loggers that only write local files ignore it).

        Args:
            path: the file or folder.
            name: where to put it within the run's artifacts; None: top level.
        """

    def flush(self) -> None:
        """Push what is buffered to its destination."""

    def finalize(self, status: str = "success") -> None:
        """Close the run: ``status`` is ``'success'`` or ``'failed'``."""


def resolve_folder(logger: ExperimentLogger, save_dir: Optional[str], experiment_dir: Optional[str],
                   sub_folder: str) -> str:
    """The folder a file-writing logger writes into (created): ``save_dir`` when given, else
    ``<experiment_dir>/<sub_folder>``.

    Raises:
        ValueError: neither is known.
    """
    if save_dir is not None:
        folder = save_dir
    elif experiment_dir is not None:
        folder = os.path.join(experiment_dir, sub_folder)
    else:
        raise ValueError(f"{type(logger).__name__} has no folder to write to: pass save_dir=..., or use it "
                         "with a tracking TrainLoop (TrainLoopCheckpoint / TrainLoopEndSave / "
                         "TrainLoopCheckpointEndSave), whose experiment folder it then writes into.")
    os.makedirs(folder, exist_ok=True)
    return os.path.abspath(folder)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict:
    """A nested dict of hyperparameters flattened to ``{'a/b': value}``."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def columns_to_rows(columns: Sequence[Sequence], num_rows: int) -> list:
    """``columns[j][i]`` as ``rows[i][j]`` (lists)."""
    return [list(row) for row in zip(*columns)] if columns else [[] for _ in range(num_rows)]


def rows_to_columns(rows: Sequence[Sequence], num_columns: int) -> list:
    """``rows[i][j]`` as ``columns[j][i]`` (lists)."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(num_columns)]
