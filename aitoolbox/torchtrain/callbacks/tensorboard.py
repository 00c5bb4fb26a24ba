"""TensorBoard logging of the whole training history and of the batch loss.

``tensorboard`` is an optional dependency (``pip install tensorboard``), imported only when the
callback is registered with a TrainLoop.
"""
from __future__ import annotations

import numbers
from typing import Dict, Optional

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.utils.log import get_logger


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or a clear error when tensorboard is missing.

    Raises:
        ImportError: the ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError("TensorboardFullTracking needs the tensorboard package: "
                          "pip install tensorboard (or aitoolbox[tensorboard]).") from exc
    return SummaryWriter


class TensorboardFullTracking(AbstractCallback):
    """Write every training-history metric and the training batch loss to TensorBoard.

    At the end of every epoch each history value not yet written goes to TensorBoard under its
    history key, with the value's position in its history list as the step (the epoch index for
    the per-epoch losses). Every ``batch_log_every_n_steps`` training batches the batch loss is
    written as ``batch/loss`` (``batch/loss_<name>`` for each loss of a ``MultiLoss``), with the
    batch index over the run as the step (under DDP: the main process's own batch loss). Runs on
    the main process only.

    Args:
        log_dir: folder of the event files; None: TensorBoard's default ``runs/<date>_<host>``.
        batch_log_every_n_steps: write the batch loss every this many batches (0: never). Reading
            the loss syncs with the device, so only on those batches.
        flush_secs: how often the writer flushes to disk.
        execution_order: keep it above the callbacks that write metrics into the history.

    Raises:
        ImportError: tensorboard is not installed (at registration, before training).
    """

    def __init__(self, log_dir: Optional[str] = None, batch_log_every_n_steps: int = 50,
                 flush_secs: int = 120, execution_order: int = 50):
        super().__init__("TensorboardFullTracking", execution_order=execution_order, device_idx_execution=0)
        if batch_log_every_n_steps < 0:
            raise ValueError(f"batch_log_every_n_steps must be >= 0, got {batch_log_every_n_steps}.")
        self.log_dir, self.flush_secs = log_dir, flush_secs
        self.batch_log_every_n_steps = batch_log_every_n_steps
        self.writer = None
        self.num_written: Dict[str, int] = {}

    def on_train_loop_registration(self):
        summary_writer_class()

    def on_train_begin(self):
        if self.writer is None:
            self.writer = summary_writer_class()(log_dir=self.log_dir, flush_secs=self.flush_secs)
            self.log_dir = self.writer.get_logdir()

    def on_batch_end(self):
        n = self.batch_log_every_n_steps
        step = self.train_loop_obj.total_iteration_idx  # batches before this one, over the run
        if not n or (step + 1) % n:
            return
        loss = self.train_loop_obj.loss_batch_accum[-1]
        if isinstance(loss, MultiLoss):
            for name, value in loss.items():
                self.writer.add_scalar(f"batch/loss_{name}", float(value), step)
            loss = loss.total()
        self.writer.add_scalar("batch/loss", float(loss), step)

    def on_epoch_end(self):
        for name, values in self.train_loop_obj.train_history.items():
            for idx in range(self.num_written.get(name, 0), len(values)):
                if isinstance(values[idx], numbers.Number):
                    self.writer.add_scalar(name, values[idx], idx)
            self.num_written[name] = len(values)
        self.writer.flush()

    def on_train_end(self):
        self.close()

    def on_train_crash(self, exception: BaseException):
        try:
            self.close()
        except Exception as exc:  # must not hide the training error
            get_logger().warning(f"TensorboardFullTracking: closing the writer failed: {exc!r}")

    def close(self) -> None:
        """Flush and close the event file (a later training run opens a new one)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict:
        return {"num_written": dict(self.num_written)}

    def load_state_dict(self, state: dict) -> None:
        self.num_written = dict(state["num_written"])
