"""``LoggerCallback``: sends a run's numbers to any number of experiment loggers.

What it logs:

- every ``log_every_n_steps`` batches: ``train/loss`` (the batch loss; per loss of a ``MultiLoss``
  also ``train/loss_<name>``), ``train/lr`` (one per param group when there are several:
  ``train/lr_group<g>``, ``train/lr_opt<o>_group<g>``) and, when a ``GradNormClip`` callback
  computes it, ``train/grad_norm`` (the norm before clipping; blank on batches that did not step),
  with ``step`` = batches trained so far;
- at every epoch end, the values the epoch put into the training history (``loss``, ``val_loss``,
  ``accumulated_loss``, metrics, throughput ...) through ``log_epoch_metrics``; at the end of
  training what came after the last epoch (``train_end_test_loss``);
- at the start, the hyperparameters; at the end, the experiment folder as an artifact.

Cost: the hot path (``on_batch_end``) only appends the step, the time, the loss *tensor* and the
learning rates to a list. The values become Python numbers when a block is handed to the loggers
(every ``flush_every_n_steps`` logged steps and at every epoch end), in one go, as columns
(``ExperimentLogger.log_columns``): a CUDA run does not synchronise with the device per step.

Under DDP the callback runs on rank 0 only (``device_idx_execution=0``): the batch loss is rank
0's, the history values are the loop's (averaged over the ranks where the loop does so). It never
calls a collective.

A logger that raises (a tracking server that is down) is reported with one warning; its calls are
kept (up to ``max_pending_calls``) and handed to it again, in order, at the next flush after
``retry_after_s`` seconds, and once more at the end of training. Training never stops for it.
"""
from __future__ import annotations

import collections
import logging
import numbers
import operator
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from aitoolbox.experiment.loggers.base import ExperimentLogger, rows_to_columns
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss

logger = logging.getLogger("aitoolbox")

#: after the savers (1000): the final model and results exist when the folder is logged at the end
LOGGER_ORDER = 1100


class GuardedLogger:
    """One logger behind a wall: its failures are warned about once and its calls replayed.

    Args:
        target: the logger.
        retry_after_s: after a failure, wait this long before trying again.
        max_pending_calls: calls kept while the logger fails (the oldest are dropped beyond).
    """

    def __init__(self, target: ExperimentLogger, retry_after_s: float, max_pending_calls: int):
        self.target = target
        self.retry_after_s = retry_after_s
        self.pending: collections.deque = collections.deque(maxlen=max_pending_calls)
        self.experiment_dir: Optional[str] = None
        self.is_set_up = False
        self.failed_at: Optional[float] = None
        self.num_failures = 0
        self.dropping = False

    def call(self, method: str, *args) -> None:
        """Queue ``target.<method>(*args)`` and deliver what is queued (unless waiting to retry)."""
        if len(self.pending) == self.pending.maxlen and not self.dropping:
            self.dropping = True
            logger.warning("%s logger: more than %d calls pending; dropping the oldest from now on.",
                           self.target.name, self.pending.maxlen)
        self.pending.append((method, args))
        self.deliver()

    def deliver(self, force: bool = False) -> bool:
        """Hand the queued calls over, in order; returns whether all were delivered."""
        if self.failed_at is not None and not force and time.monotonic() - self.failed_at < self.retry_after_s:
            return False
        try:
            if not self.is_set_up:
                self.target.setup(self.experiment_dir)
                self.is_set_up = True
            while self.pending:
                method, args = self.pending[0]
                getattr(self.target, method)(*args)
                self.pending.popleft()
        except Exception as error:  # a logger never stops training
            self._failed(error)
            return False
        if self.failed_at is not None:
            logger.warning("%s logger: delivering again after %d failed attempt(s).", self.target.name,
                           self.num_failures)
        self.failed_at = None
        return True

    def _failed(self, error: Exception) -> None:
        self.failed_at = time.monotonic()
        self.num_failures += 1
        if self.num_failures == 1:
            logger.warning("%s logger failed (%s: %s); training goes on, its values are kept and sent again "
                           "every %gs. (Warned once.)", self.target.name, type(error).__name__, error,
                           self.retry_after_s)

    def finalize(self, status: str) -> None:
        """Last delivery attempt, then ``finalize`` (both guarded)."""
        self.deliver(force=True)
        if self.pending:
            logger.warning("%s logger: %d call(s) could not be delivered before the end of training.",
                           self.target.name, len(self.pending))
        if self.is_set_up:
            try:
                self.target.finalize(status)
            except Exception as error:
                if self.num_failures == 0:
                    logger.warning("%s logger: finalize failed (%s: %s).", self.target.name,
                                   type(error).__name__, error)


class LoggerCallback(AbstractCallback):
    """Log the per-step values and the per-epoch history to experiment loggers.

    Args:
        loggers: ``ExperimentLogger`` instances (``CSVLogger``, ``TensorBoardLogger``,
            ``MLflowLogger``, ``WandBLogger``, or your own), or one of them.
        log_every_n_steps: log the per-step values at every n-th batch (batches n, 2n, ...).
        flush_every_n_steps: hand the logged steps to the loggers every this many logged steps
            (and at every epoch end).
        hyperparams: hyperparameters to log; None: the TrainLoop's (a tracking TrainLoop's).
        log_artifacts: at the end of training, log the experiment folder (when there is one)
            with ``log_artifact``.
        retry_after_s: after a logger failed, wait this long before sending to it again.
        max_pending_calls: calls kept for a failing logger.
        execution_order: callback execution order (after the callbacks that fill the history
            and the savers).

    Raises:
        TypeError, ValueError: invalid arguments (named). At the start of training a
            ``ValueError`` when a file-writing logger has neither ``save_dir`` nor an experiment folder.
    """

    def __init__(self, loggers, log_every_n_steps: int = 1, flush_every_n_steps: int = 500,
                 hyperparams: Optional[Mapping[str, Any]] = None, log_artifacts: bool = True,
                 retry_after_s: float = 30.0, max_pending_calls: int = 10_000,
                 execution_order: int = LOGGER_ORDER):
        super().__init__("LoggerCallback", execution_order=execution_order, device_idx_execution=0)
        self.loggers = _check_loggers(loggers)
        self.log_every_n_steps = _positive_int(log_every_n_steps, "log_every_n_steps")
        self.flush_every_n_steps = _positive_int(flush_every_n_steps, "flush_every_n_steps")
        self.hyperparams = hyperparams
        self.log_artifacts = log_artifacts
        self.guards = [GuardedLogger(lg, float(retry_after_s), _positive_int(max_pending_calls, "max_pending_calls"))
                       for lg in self.loggers]
        self._buffer: List[tuple] = []
        self._groups: List[dict] = []
        self._norm_sources: list = []
        self._last_norm_step = 0
        self._num_seen: Dict[str, int] = {}

    # ------------------------------------------------------------------ start
    def on_train_begin(self):
        loop = self.train_loop_obj
        experiment_dir = self._experiment_dir()
        for guard in self.guards:
            if guard.target.needs_folder and experiment_dir is None and getattr(guard.target, "save_dir", None) is None:
                raise ValueError(f"LoggerCallback: {type(guard.target).__name__} has no folder to write to: pass "
                                 "it save_dir=..., or train with a tracking TrainLoop (TrainLoopCheckpoint / "
                                 "TrainLoopEndSave / TrainLoopCheckpointEndSave), whose experiment folder it uses.")
            guard.experiment_dir = experiment_dir
        self._groups = [group for opt in loop.optimizers for group in opt.param_groups]
        self._one_group = len(self._groups) == 1  # the common case reads one dict entry per step
        self._group0 = self._groups[0] if self._groups else None
        self._lr_names = _lr_names(loop.optimizers)
        # a tensor learning rate is changed in place by the schedulers: the buffer keeps copies
        self._tensor_lrs = any(isinstance(group["lr"], torch.Tensor) for group in self._groups)
        # a GradNormClip exists only where its module was imported: no import (3 modules) otherwise
        gradient = sys.modules.get("aitoolbox.torchtrain.callbacks.gradient")
        self._norm_sources = [] if gradient is None else [cb for cb in loop.callbacks
                                                          if isinstance(cb, gradient.GradNormClip)]
        self._last_norm_step = loop.num_optimizer_steps
        self._num_seen = {name: len(values) for name, values in loop.train_history.items()}
        self._buffer = []
        params = self._hyperparams()
        for guard in self.guards:
            if params:
                guard.call("log_hyperparams", params)
            else:
                guard.deliver()  # set up now, not at the first flush

    def _experiment_dir(self) -> Optional[str]:
        store = getattr(self.train_loop_obj, "experiment_store", None)
        return None if store is None else store.ensure_created()

    def _hyperparams(self) -> dict:
        if self.hyperparams is not None:
            return dict(self.hyperparams)
        loop = self.train_loop_obj
        params = getattr(loop, "hyperparams", None)
        if params is None and getattr(loop, "experiment_store", None) is not None:
            params = loop.experiment_store.hyperparams
        return dict(params or {})

    # ------------------------------------------------------------------ the hot path
    def on_batch_end(self):
        loop = self.train_loop_obj
        step = loop.total_iteration_idx + 1
        if step % self.log_every_n_steps:
            return
        norms = None
        if self._norm_sources and loop.num_optimizer_steps != self._last_norm_step:
            self._last_norm_step = loop.num_optimizer_steps
            norms = [dict(cb.total_norms) for cb in self._norm_sources]  # the callback reuses its dict
        lrs = self._group0["lr"] if self._one_group else [g["lr"] for g in self._groups]
        if self._tensor_lrs:
            lrs = _copy_tensors(lrs)
        losses, buffer = loop.loss_batch_accum, self._buffer
        buffer.append((step, time.time(), losses[-1], lrs, norms, len(losses) - 1))
        if len(buffer) >= self.flush_every_n_steps:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered steps to the loggers (their values converted now, in one go)."""
        if not self._buffer:
            return
        buffer, self._buffer = self._buffer, []
        steps, wall_times = _column(buffer, 0), _column(buffer, 1)
        names, columns = self._step_columns(buffer, self._loss_floats(buffer))
        for guard in self.guards:
            guard.call("log_columns", names, steps, wall_times, columns)

    def _step_columns(self, buffer: Sequence[tuple], losses: list):
        """``(names, columns)`` of the buffered steps, as Python numbers."""
        lrs = _column(buffer, 3)
        names = ["train/loss"]
        if isinstance(losses[0], dict):
            names += [f"train/loss_{n}" for n in list(losses[0])[1:]]
        names += self._lr_names
        norm_names = self._norm_names()
        if self._one_group and not norm_names and not isinstance(losses[0], dict):  # the common case
            return names, [losses, lrs if type(lrs[0]) is float else [float(lr) for lr in lrs]]
        rows = []
        for loss, step_lrs, step_norms in zip(losses, lrs, _column(buffer, 4)):
            row = list(loss.values()) if isinstance(loss, dict) else [loss]
            row += [float(step_lrs)] if self._one_group else [float(lr) for lr in step_lrs]
            if norm_names:
                row += _norm_values(step_norms, len(norm_names))
            rows.append(row)
        return names + norm_names, rows_to_columns(rows, len(names) + len(norm_names))

    def _loss_floats(self, buffer: Sequence[tuple]) -> list:
        """The buffered batch losses as floats: the loop's own floats of ``loss_batch_accum`` where
        the loss is still there (each loss is converted once, for the progress display, the
        epoch's mean and the loggers together), else converted here."""
        shared = getattr(self.train_loop_obj, "_loss_values", None)
        accum = self.train_loop_obj.loss_batch_accum
        if shared is None or not isinstance(buffer[0][2], torch.Tensor) or not accum:
            return _to_floats(_column(buffer, 2))
        values = shared.update(accum)
        first, last = buffer[0][5], buffer[-1][5]
        stride = buffer[1][5] - first if len(buffer) > 1 else 1
        if stride > 0 and last < len(values):  # the usual case: evenly spaced, still in the epoch's list
            window = slice(first, last + 1, stride)
            if len(accum[window]) == len(buffer) and all(map(operator.is_, accum[window], map(_LOSS, buffer))):
                return values[window]
        n = len(accum)
        return [values[i] if i < n and accum[i] is loss else float(loss) for _, _, loss, _, _, i in buffer]

    def _norm_names(self) -> List[str]:
        count = sum(max(1, len(cb.total_norms)) for cb in self._norm_sources)
        return ["train/grad_norm"] if count == 1 else [f"train/grad_norm_{i}" for i in range(count)]

    # ------------------------------------------------------------------ epoch and training end
    def on_epoch_end(self):
        self.flush()
        metrics = self._new_history_values()
        if metrics:
            loop = self.train_loop_obj
            for guard in self.guards:
                guard.call("log_epoch_metrics", metrics, loop.total_iteration_idx, loop.epoch)

    def _new_history_values(self, epoch_end: bool = True) -> Dict[str, float]:
        loop = self.train_loop_obj
        # at an epoch end, the lengths when it began: an epoch completed after a num_iterations stop
        # re-records (replaces) its values, which a count of the values seen would miss
        marks = (getattr(loop, "_epoch_close_marks", None) or {}) if epoch_end else {}
        new = {}
        for name, values in loop.train_history.items():
            seen = min(self._num_seen.get(name, 0), marks.get(name, len(values)))
            if len(values) > seen and isinstance(values[-1], numbers.Real) and not isinstance(values[-1], bool):
                new[name] = float(values[-1])
            self._num_seen[name] = len(values)
        return new

    def on_train_end(self):
        self.flush()
        metrics = self._new_history_values(epoch_end=False)
        if metrics:
            for guard in self.guards:
                guard.call("log_metrics", metrics, self.train_loop_obj.total_iteration_idx)
        experiment_dir = self.guards[0].experiment_dir if self.guards else None
        for guard in self.guards:
            if self.log_artifacts and experiment_dir is not None:
                guard.call("log_artifact", experiment_dir, None)
            guard.finalize("success")

    def on_train_crash(self, exception: BaseException):
        try:
            self.flush()
        except Exception as error:  # must not hide the training error
            logger.warning("LoggerCallback: flushing after the crash failed: %r", error)
        for guard in self.guards:
            guard.finalize("failed")


_LOSS = operator.itemgetter(2)


def _column(buffer: Sequence[tuple], index: int) -> list:
    """Field ``index`` of every buffered step (in C: no object per step)."""
    return list(map(operator.itemgetter(index), buffer))


def _to_floats(values: Sequence) -> list:
    """Batch losses (tensors or ``MultiLoss``) as floats (dicts ``{'': total, name: value}``)."""
    if isinstance(values[0], MultiLoss):
        out = []
        for loss in values:
            parts = {name: float(loss[name]) for name in loss}
            out.append({"": sum(parts.values()), **parts})
        return out
    if values[0].device.type == "cpu":
        return [float(v) for v in values]
    return torch.stack([v.detach().reshape(()).float() for v in values]).tolist()  # one transfer, one sync


def _norm_values(norms: Optional[list], count: int) -> list:
    if norms is None:
        return [None] * count
    values = [float(n) for by_optimizer in norms for n in (by_optimizer.values() or [None])]
    return values + [None] * (count - len(values))


def _copy_tensors(value):
    """``value`` (a learning rate or a list of them) with its tensors copied on their device (no sync)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return [_copy_tensors(v) for v in value]
    return value


def _lr_names(optimizers: Sequence) -> List[str]:
    groups = [(o, g) for o, opt in enumerate(optimizers) for g in range(len(opt.param_groups))]
    if len(groups) == 1:
        return ["train/lr"]
    if len(optimizers) == 1:
        return [f"train/lr_group{g}" for _, g in groups]
    return [f"train/lr_opt{o}_group{g}" for o, g in groups]


def _check_loggers(loggers) -> List[ExperimentLogger]:
    loggers = [loggers] if isinstance(loggers, ExperimentLogger) else list(loggers or [])
    if not loggers:
        raise ValueError("LoggerCallback(loggers=...) needs at least one logger, e.g. CSVLogger().")
    for idx, lg in enumerate(loggers):
        if not isinstance(lg, ExperimentLogger):
            raise TypeError(f"loggers[{idx}] is a {type(lg).__name__}; every logger must be an ExperimentLogger "
                            "(CSVLogger, TensorBoardLogger, MLflowLogger, WandBLogger or a subclass).")
    return loggers


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return value


__all__ = ["LoggerCallback", "GuardedLogger", "LOGGER_ORDER"]
