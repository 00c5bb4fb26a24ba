"""CSV files: one row per logged step and one row per epoch.

``steps.csv`` (``step,wall_time,<metric>...``) is appended to: each block of steps is written with
one ``write`` of whole lines, then flushed to the operating system, so a process that crashes or is
killed leaves every block written before it complete (there is no fsync per block: that is the
checkpoints' job, and it would cost milliseconds). ``epochs.csv`` (``epoch,step,<history name>...``)
is appended to in the same way; when a history key appears later (a metric computed every few
epochs) the file is rewritten once, atomically, with the wider header instead of dropping it.
Other values (``log_metrics``, e.g. the end-of-training test loss) go to ``metrics.csv`` as
``step,name,value`` rows; the hyperparameters to ``hyperparams.csv``. Per-step values are written
with 9 significant digits (exact for float32 numbers such as the batch losses), the wall time to
the millisecond; the per-epoch values with ``repr``, which reads back to the same number.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from aitoolbox.experiment.loggers.base import ExperimentLogger, flatten_params, resolve_folder, rows_to_columns
from aitoolbox.utils.io import atomic_write_text

logger = logging.getLogger("aitoolbox")
STEPS_FILE, EPOCHS_FILE, METRICS_FILE, HYPERPARAMS_FILE = "steps.csv", "epochs.csv", "metrics.csv", "hyperparams.csv"


class CSVLogger(ExperimentLogger):
    """Per-step and per-epoch CSV files in the experiment folder (``<experiment>/logs/``).

    Args:
        save_dir: the folder of the files; None: ``logs/`` in the TrainLoop's experiment folder.

    Attributes:
        folder: the folder written to (known after :meth:`setup`).
    """

    name = "CSV"
    needs_folder = True

    def __init__(self, save_dir: Optional[str] = None):
        self.save_dir = None if save_dir is None else os.path.expanduser(os.fspath(save_dir))
        self.folder: Optional[str] = None
        self._steps_file = None
        self._columns: Optional[List[str]] = None
        self._dropped: set = set()
        self._epoch_rows: List[Dict[str, Any]] = []
        self._epoch_columns: List[str] = []
        self._epochs_file = None

    def setup(self, experiment_dir: Optional[str]) -> None:
        self.folder = resolve_folder(self, self.save_dir, experiment_dir, "logs")
        self._steps_file = open(os.path.join(self.folder, STEPS_FILE), "a", encoding="utf-8", newline="")

    @property
    def steps_path(self) -> str:
        """Path of ``steps.csv``."""
        return os.path.join(self.folder, STEPS_FILE)

    @property
    def epochs_path(self) -> str:
        """Path of ``epochs.csv``."""
        return os.path.join(self.folder, EPOCHS_FILE)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        rows = "".join(_csv_line([name, value]) for name, value in flatten_params(params).items())
        atomic_write_text("name,value\n" + rows, os.path.join(self.folder, HYPERPARAMS_FILE))

    def log_steps(self, names: Sequence[str], steps: Sequence[int], wall_times: Sequence[float],
                  rows: Sequence[Sequence[Optional[float]]]) -> None:
        self.log_columns(names, steps, wall_times, rows_to_columns(rows, len(names)))

    def log_columns(self, names: Sequence[str], steps: Sequence[int], wall_times: Sequence[float],
                    columns: Sequence[Sequence[Optional[float]]]) -> None:
        order = self._column_order(names)
        if order is not None:
            columns = [[None] * len(steps) if j is None else columns[j] for j in order]
        # the values interleaved row by row with slice assignments (in C), then one % over the
        # block; 9 significant digits: exact for float32 values (the batch losses); a column with
        # one value throughout the block (mostly the learning rate) is formatted once
        columns = [c if isinstance(c, (list, tuple)) else list(c) for c in columns]
        line, varying, n = "%d,%.3f", [], len(steps)
        for column in columns:
            if n and column[0] is not None and column[-1] == column[0] and column.count(column[0]) == n:
                line += ",%.9g" % column[0]
            else:
                line += ",%.9g"
                varying.append(column)
        width = 2 + len(varying)
        flat = [None] * (width * n)
        flat[0::width], flat[1::width] = steps, wall_times
        for j, column in enumerate(varying):
            flat[2 + j::width] = column
        try:
            text = (line + "\n") * n % tuple(flat)
        except TypeError:  # a value is None: row by row, blank where missing
            text = "".join([_slow_line(row[0], row[1], row[2:]) for row in zip(steps, wall_times, *columns)])
        self._steps_file.write(text)
        self._steps_file.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Values outside the per-step and per-epoch series (e.g. ``train_end_test_loss``): appended to
        ``metrics.csv`` as ``step,name,value`` rows."""
        path = os.path.join(self.folder, METRICS_FILE)
        header = "" if os.path.exists(path) else "step,name,value\n"
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(header + "".join(_csv_line([step, name, value]) for name, value in metrics.items()))

    def _column_order(self, names: Sequence[str]) -> Optional[List[Optional[int]]]:
        """Indices of the file's columns in ``names`` (None: the same order); writes the header once."""
        if self._columns is None:
            self._columns = list(names)
            self._steps_file.write(_csv_line(["step", "wall_time"] + self._columns))
            return None
        if list(names) == self._columns:
            return None
        new = [n for n in names if n not in self._columns and n not in self._dropped]
        if new:
            self._dropped.update(new)
            logger.warning("CSVLogger: %s not in the columns of %s (fixed by the first logged step); not written.",
                           new, self.steps_path)
        index = {n: j for j, n in enumerate(names)}
        return [index.get(n) for n in self._columns]

    def log_epoch_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        row = {"epoch": epoch, "step": step, **metrics}
        self._epoch_rows.append(row)
        new_columns = [name for name in row if name not in self._epoch_columns]
        if self._epochs_file is None and len(self._epoch_rows) == 1:  # the first row: a new file
            self._epoch_columns = new_columns
            self._epochs_file = open(self.epochs_path, "w", encoding="utf-8", newline="")
            self._epochs_file.write(_csv_line(self._epoch_columns) + _csv_line(list(row.values())))
        elif new_columns:
            self._rewrite_epochs(new_columns)
        else:
            self._epochs_file.write(_csv_line([row.get(name, "") for name in self._epoch_columns]))
        self.flush()

    def _rewrite_epochs(self, new_columns: List[str]) -> None:
        """Write ``epochs.csv`` whole (atomically) with ``new_columns`` added, then append to it."""
        self._epoch_columns += new_columns
        self._epochs_file.close()
        text = "".join(_csv_line([row.get(name, "") for name in self._epoch_columns]) for row in self._epoch_rows)
        atomic_write_text(_csv_line(self._epoch_columns) + text, self.epochs_path)
        self._epochs_file = open(self.epochs_path, "a", encoding="utf-8", newline="")

    def flush(self) -> None:
        for f in (self._steps_file, self._epochs_file):
            if f is not None:
                f.flush()

    def finalize(self, status: str = "success") -> None:
        self.flush()
        for name in ("_steps_file", "_epochs_file"):
            if getattr(self, name) is not None:
                getattr(self, name).close()
                setattr(self, name, None)


def _slow_line(step: int, wall_time: float, row: Sequence[Optional[float]]) -> str:
    """A steps.csv line with missing (None) values left blank."""
    return "%d,%.3f," % (step, wall_time) + ",".join(["" if v is None else "%.9g" % v for v in row]) + "\n"


def _csv_line(values: Sequence[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([repr(v) if isinstance(v, float) else v for v in values])
    return out.getvalue()
