"""Progress messages and metric logging through ``logging``, on the main process only."""
from __future__ import annotations

import math
import numbers
import sys
import time
from typing import Dict, Optional

import torch

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop.components.loss_values import losses_to_floats
from aitoolbox.utils.log import get_logger


class PrintProgress(AbstractCallback):
    """Log a message when training starts and ends and when each epoch starts.

    Args:
        execution_order: callback execution order.
    """

    def __init__(self, execution_order: int = 0):
        super().__init__("PrintProgress", execution_order=execution_order, device_idx_execution=0)

    def on_train_begin(self):
        loop = self.train_loop_obj
        length = f"{loop.num_iterations} iterations" if loop.num_iterations else f"{loop.num_epochs} epochs"
        try:
            steps = f"{loop.get_num_training_steps()} optimizer steps"
        except ValueError:  # a train loader without a length: known only once it is read
            steps = "number of optimizer steps unknown (a stream)"
        get_logger().info(f"Starting training run: {length}, {steps}.")

    def on_epoch_begin(self):
        loop = self.train_loop_obj
        total = f"/{loop.num_epochs}" if loop.num_epochs else ""
        get_logger().info(f"Starting epoch {loop.epoch + 1}{total}")

    def on_train_end(self):
        get_logger().info(f"Finishing training run after {self.train_loop_obj.num_optimizer_steps} "
                          "optimizer steps.")


class LogMetrics(AbstractCallback):
    """Log, at the end of every epoch, the latest value of each history metric updated in it.

    Subclass and override :meth:`log_metrics` to send the metrics somewhere else.

    Args:
        execution_order: keep it above the callbacks that write metrics into the history.
    """

    def __init__(self, execution_order: int = 50):
        super().__init__("LogMetrics", execution_order=execution_order, device_idx_execution=0)
        self.num_seen: Dict[str, int] = {}

    def on_epoch_end(self):
        loop = self.train_loop_obj
        # Lengths when the epoch's end began: an epoch completed after a num_iterations stop
        # re-records (replaces) values, which a count of values seen would miss.
        marks = getattr(loop, "_epoch_close_marks", None) or {}
        updated = {}
        for name, values in loop.train_history.items():
            seen = min(self.num_seen.get(name, 0), marks.get(name, len(values)))
            if len(values) > seen:
                updated[name] = values[-1]
            self.num_seen[name] = len(values)
        if updated:
            self.log_metrics(updated)

    def log_metrics(self, metrics: Dict[str, object]) -> None:
        """Report the metrics updated in this epoch.

        Args:
            metrics: history key -> latest value.
        """
        parts = [f"{k}: {format_value(v)}" for k, v in metrics.items()]
        get_logger().info(f"Epoch {self.train_loop_obj.epoch + 1} - " + ", ".join(parts))

    def state_dict(self) -> dict:
        return {"num_seen": dict(self.num_seen)}

    def load_state_dict(self, state: dict) -> None:
        self.num_seen = dict(state["num_seen"])


# ---------------------------------------------------------------- the loop's per-epoch progress display
def format_value(value) -> str:
    """A history value for a log line: real numbers with 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
        return str(value)
    return f"{value:.4g}"


def format_duration(seconds: float) -> str:
    """``seconds`` as ``4.2s``, ``42s``, ``3m05s`` or ``2h03m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def is_terminal(stream) -> bool:
    """Whether ``stream`` shows a live progress bar: a TTY, or a Jupyter notebook's output."""
    isatty = getattr(stream, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # a closed stream
        return False
    from tqdm import autonotebook, std
    return autonotebook.tqdm is not std.tqdm and stream is sys.stderr  # tqdm found a notebook


class EpochProgress:
    """The progress display of one epoch; the loop calls :meth:`update` at batch ``next_update``.

    The loop's only per-batch cost is comparing its batch index with :attr:`next_update`. The
    stride between updates adapts so that updates come about every :attr:`update_interval_s`
    seconds, whatever the speed of a batch. Each update adds the batch losses recorded since the
    previous one to a running mean (one device-to-host copy per update).

    Args:
        loop: the ``TrainLoop``; ``loop.loss_batch_accum`` holds this epoch's batch losses.
        stream: where to write; default ``sys.stderr``.
    """

    #: seconds between two updates of the running loss (the loop's checks, not the display)
    update_interval_s = 0.1

    def __init__(self, loop, stream=None):
        self.loop = loop
        self.stream = sys.stderr if stream is None else stream
        # None: the number of batches is unknown (a stream read to its end)
        self.total = None if math.isinf(loop._epoch_len) else loop._epoch_len
        self.desc = f"Epoch {loop.epoch + 1}" + (f"/{loop.num_epochs}" if loop.num_epochs else "")
        self.start_iteration = loop.iteration
        self.start_time = self._last_time = time.perf_counter()
        self._stride = 1
        self.next_update = loop.iteration + 1
        self._loss_sum, self._num_losses = 0.0, 0

    def running_loss(self) -> Optional[float]:
        """Mean of this epoch's batch losses so far (a ``MultiLoss``: of its totals), or None."""
        losses = self.loop.loss_batch_accum
        if losses and isinstance(losses[0], torch.Tensor):  # the loop's floats, each converted once
            return self.loop._loss_values.mean(losses)
        new = losses[self._num_losses:]
        if new:  # MultiLoss
            self._loss_sum += math.fsum(losses_to_floats([loss.total().detach() for loss in new]))
            self._num_losses = len(losses)
        return self._loss_sum / self._num_losses if self._num_losses else None

    def update(self) -> None:
        """Called by the loop once its batch index reaches :attr:`next_update`."""
        now = time.perf_counter()
        elapsed, self._last_time = now - self._last_time, now
        if elapsed < self.update_interval_s / 2:
            self._stride *= 2
        elif elapsed > self.update_interval_s * 2 and self._stride > 1:
            self._stride //= 2
        self.next_update = self.loop.iteration + self._stride
        self.show(now)

    def show(self, now: float) -> None:
        """Display the state after ``loop.iteration`` batches."""
        raise NotImplementedError

    def close(self) -> None:
        """The epoch is over (or stopped)."""


class TqdmEpochProgress(EpochProgress):
    """A tqdm bar (cleared at the end of the epoch) with the running mean batch loss as postfix."""

    #: tqdm's ``mininterval``: seconds between two redraws
    mininterval = 0.1

    def __init__(self, loop, stream=None):
        super().__init__(loop, stream)
        from tqdm.auto import tqdm
        self.bar = tqdm(total=self.total, initial=self.start_iteration, desc=self.desc, leave=False,
                        dynamic_ncols=True, mininterval=self.mininterval,
                        file=self.stream if stream is not None else None)

    def show(self, now: float) -> None:
        loss = self.running_loss()
        if loss is not None:
            self.bar.set_postfix_str(f"loss={loss:.4g}", refresh=False)
        self.bar.update(self.loop.iteration - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class LineEpochProgress(EpochProgress):
    """Plain progress lines for logs that are not a terminal (CI, SLURM, ``nohup``).

    A line every :attr:`interval_s` seconds (and, when :attr:`every_n_batches` is set, every
    that many batches), e.g.
    ``Epoch 2/5: 1200/5000 batches (24%), 41.3 batches/s, 29s elapsed, ETA 1m32s, loss 0.6931``.
    Set the class attributes to change the cadence for every loop.
    """

    #: seconds between two lines
    interval_s = 30.0
    #: also write a line every this many batches (None: by time only)
    every_n_batches: Optional[int] = None

    def __init__(self, loop, stream=None):
        super().__init__(loop, stream)
        self._last_line_time = self.start_time
        self._last_line_batch = self.start_iteration

    def update(self) -> None:
        super().update()
        if self.every_n_batches:  # land exactly on the multiples
            to_next = self.every_n_batches - self.loop.iteration % self.every_n_batches
            self.next_update = min(self.next_update, self.loop.iteration + to_next)

    def show(self, now: float) -> None:
        done = self.loop.iteration
        by_count = bool(self.every_n_batches) and done % self.every_n_batches == 0 and done > self._last_line_batch
        if not by_count and now - self._last_line_time < self.interval_s:
            return
        self._last_line_time, self._last_line_batch = now, done
        self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def line(self, now: float) -> str:
        """The progress line after ``loop.iteration`` batches."""
        done, elapsed = self.loop.iteration, now - self.start_time
        if self.total is None:
            parts = [f"{self.desc}: {done} batches"]
        else:
            parts = [f"{self.desc}: {done}/{self.total} batches ({100 * done // max(self.total, 1)}%)"]
        rate = (done - self.start_iteration) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.1f} batches/s" if rate < 100 else f"{rate:.0f} batches/s")
        parts.append(f"{format_duration(elapsed)} elapsed")
        if rate > 0 and self.total is not None:
            parts.append(f"ETA {format_duration((self.total - done) / rate)}")
        loss = self.running_loss()
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        return ", ".join(parts)


def open_epoch_progress(loop, stream=None) -> EpochProgress:
    """The progress display of the loop's current epoch: a bar on a terminal, lines otherwise."""
    shown_on = sys.stderr if stream is None else stream
    cls = TqdmEpochProgress if is_terminal(shown_on) else LineEpochProgress
    return cls(loop, stream)
