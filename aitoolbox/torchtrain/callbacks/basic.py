"""General-purpose callbacks: stopping rules, sanity checks, data subsets, SyncBatchNorm.

Every callback here works on one device and under DDP. Callbacks that stop training set
``train_loop_obj.early_stop = True``; the TrainLoop combines the flag over the ranks at the end of
the epoch. Callbacks that only report log on the main process.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Dict, Optional

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.metric_watch import MetricWatcher
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.torchtrain.train_loop.components.data_loading import loader_batch_size, loader_kwargs
from aitoolbox.utils.log import get_logger


class _MetricStopper(AbstractCallback):
    """Base of the stopping rules on a history metric: new value -> verdict -> maybe stop.

    Args:
        callback_name: readable name.
        monitor: training-history key to watch.
        greater_is_better: direction; None infers it from the name.
        min_delta: minimal change that counts as an improvement.
        patience: bad evaluations in a row that are tolerated: training stops at the
            ``patience + 1``-th one (``patience=0`` stops at the first), as in aitoolbox 1.8.
        execution_order: keep it above the callbacks that write ``monitor``.
    """

    def __init__(self, callback_name: str, monitor: str, greater_is_better: Optional[bool],
                 min_delta: float, patience: int, execution_order: int):
        super().__init__(callback_name, execution_order=execution_order)
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}.")
        self.watcher = MetricWatcher(monitor, greater_is_better, min_delta)
        self.patience = patience
        self.wait = 0  # consecutive bad evaluations so far
        self.stopped_epoch: Optional[int] = None
        self.best_epoch = 0  # epoch of the best value so far
        self._warned_missing = False

    @property
    def monitor(self) -> str:
        """The watched history key."""
        return self.watcher.monitor

    @property
    def min_delta(self) -> float:
        """Minimal change that counts as an improvement."""
        return self.watcher.min_delta

    @property
    def patience_count(self) -> int:
        """Bad evaluations still tolerated (aitoolbox 1.8's counter): below 0 once stopped."""
        return self.patience - self.wait

    @property
    def best_performance(self) -> Optional[float]:
        """The best value of ``monitor`` so far (None before the first one)."""
        return self.watcher.best

    def monitored_history_metrics(self):
        return [("monitor", self.monitor, True)]

    def is_good(self, value: float) -> bool:
        """Whether ``value`` resets the patience counter (implemented by subclasses)."""
        raise NotImplementedError

    def on_epoch_end(self):
        value = self.watcher.new_value(self.train_loop_obj.train_history)
        if value is None:
            self._warn_if_missing()
            return
        if self.is_good(value):
            self.wait = 0
            return
        self.wait += 1
        if self.wait > self.patience:
            self._stop(value)

    def _stop(self, value: float) -> None:
        loop = self.train_loop_obj
        loop.early_stop = True
        self.stopped_epoch = loop.epoch
        if loop.is_main_process():
            get_logger().info(f"{self.callback_name}: stopping after epoch {loop.epoch + 1}; "
                              f"{self.monitor}={value} (best {self.watcher.best}), "
                              f"{self.wait} bad evaluation(s) in a row.")

    def _warn_if_missing(self) -> None:
        if self.monitor not in self.train_loop_obj.train_history and not self._warned_missing:
            self._warned_missing = True
            get_logger().warning(f"{self.callback_name}: metric {self.monitor!r} is not in the training "
                                 f"history (keys: {list(self.train_loop_obj.train_history.keys())}).")

    def state_dict(self) -> dict:
        return {"watcher": self.watcher.state_dict(), "wait": self.wait, "stopped_epoch": self.stopped_epoch,
                "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.watcher.load_state_dict(state["watcher"])
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.best_epoch = state.get("best_epoch", 0)


class EarlyStopping(_MetricStopper):
    """Stop training when a history metric has stopped improving.

    At the end of every epoch in which ``monitor`` got a new value, the value is compared with
    the best so far. ``patience`` values in a row without an improvement of more than
    ``min_delta`` are tolerated; the next one stops training (``patience=0`` stops at the first
    value that does not improve, ``patience=2`` at the third in a row), as in aitoolbox 1.8.

    Args:
        monitor: training-history key, e.g. ``'val_loss'`` or ``'val_accuracy'``.
        min_delta: minimal absolute change that counts as an improvement.
        patience: epochs without improvement that are tolerated before training stops.
        greater_is_better: direction; None: loss-like names are minimised, others maximised.
        execution_order: keep it above the callbacks that compute ``monitor``.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0., patience: int = 0,
                 greater_is_better: Optional[bool] = None, execution_order: int = 10):
        super().__init__("EarlyStopping", monitor, greater_is_better, min_delta, patience, execution_order)

    def is_good(self, value: float) -> bool:
        if self.watcher.is_improvement(value):
            self.watcher.best = value
            self.best_epoch = self.train_loop_obj.epoch
            return True
        return False


class ThresholdEarlyStopping(_MetricStopper):
    """Stop training when a history metric is not better than a threshold.

    Guards against runs that go nowhere or diverge: every new value of ``monitor`` that is worse
    than ``threshold`` (above it for losses, below it otherwise) counts as bad; a value equal to
    the threshold is not. ``patience`` bad values in a row are tolerated, the next one stops
    training (``patience=0`` stops at the first), as in aitoolbox 1.8.

    Args:
        monitor: training-history key.
        threshold: the value that the metric must reach.
        patience: bad epochs in a row that are tolerated before training stops.
        greater_is_better: direction; None: loss-like names are minimised, others maximised.
        execution_order: keep it above the callbacks that compute ``monitor``.
    """

    def __init__(self, monitor: str = "val_loss", threshold: float = 0., patience: int = 0,
                 greater_is_better: Optional[bool] = None, execution_order: int = 10):
        super().__init__("ThresholdEarlyStopping", monitor, greater_is_better, 0., patience, execution_order)
        self.threshold = float(threshold)

    def is_good(self, value: float) -> bool:
        if self.watcher.is_improvement(value):
            self.watcher.best = value
        return not math.isnan(value) and not self.watcher.beats(self.threshold, value)


class TerminateOnNaN(AbstractCallback):
    """Stop training when the loss becomes NaN or infinite.

    With ``check_every_n_batches=1`` (the default on the CPU) the loss and the gradients are
    checked before every optimizer step: a non-finite one never reaches the weights - the step's
    gradients are dropped (the optimizer skips parameters without a gradient), so the weights
    left are those after the previous step, and training stops. With a larger value (the default
    on an accelerator: 50, no host sync per step) the non-finite flag of the batch losses is
    accumulated on the device and read every ``check_every_n_batches`` batches and at the end of
    the epoch; the stop then comes after the updates of those batches. At the end of every epoch the latest value of the
    history metric ``monitor`` is checked too. Under DDP the verdict is combined over the ranks
    at the same batches on every rank, so all ranks stop together.

    Args:
        monitor: training-history key checked at the end of every epoch.
        check_every_n_batches: how often the accumulated flag is read; None: every batch on
            CPU, every 50 batches on an accelerator.
        execution_order: callback execution order.
    """

    def __init__(self, monitor: str = "loss", check_every_n_batches: Optional[int] = None,
                 execution_order: int = 0):
        super().__init__("TerminateOnNaN", execution_order=execution_order)
        if check_every_n_batches is not None and check_every_n_batches < 1:
            raise ValueError(f"check_every_n_batches must be >= 1 or None, got {check_every_n_batches}.")
        self.monitor = monitor
        self.check_every_n_batches = check_every_n_batches
        self._check_every = 1
        self._flag: Optional[torch.Tensor] = None
        self._num_batches = 0  # batches seen over the run: checks happen at the same ones on every rank
        self._stopped_before_update = False
        self._num_seen = 0  # values of the history metric already checked

    def on_train_begin(self):
        self._check_every = self.check_every_n_batches
        if self._check_every is None:
            self._check_every = 1 if self.train_loop_obj.device.type == "cpu" else 50
        self._flag = None
        self._stopped_before_update = False

    def on_after_gradient_update(self, optimizer_idx: int):
        """Checked every batch: before the optimizer steps, so that a non-finite loss or gradient
        never reaches the weights (their gradients are dropped and training stops)."""
        if self._check_every != 1 or optimizer_idx != 0:
            return
        loop = self.train_loop_obj
        bad, self._flag = update_is_nonfinite(loop, self._flag), None
        if bad:
            drop_gradients(loop)
            self._stopped_before_update = True
            self._terminate("batch loss or gradient (the update was skipped)")

    def on_batch_end(self):
        if self._stopped_before_update:
            return
        bad = self._batch_loss_bad()
        self._flag = bad if self._flag is None else self._flag | bad
        self._num_batches += 1
        if self._check_every != 1 and self._num_batches % self._check_every == 0:
            self._check_flag("batch loss")

    def _batch_loss_bad(self) -> torch.Tensor:
        return batch_loss_nonfinite(self.train_loop_obj)

    def on_epoch_end(self):
        if not self._stopped_before_update:
            self._check_flag("batch loss")
        history = self.train_loop_obj.train_history
        values = history[self.monitor] if self.monitor in history else []
        if len(values) > self._num_seen:
            self._num_seen = len(values)
            if not math.isfinite(float(values[-1])):
                self._terminate(f"history metric {self.monitor!r}={values[-1]}")

    def _check_flag(self, what: str) -> None:
        if self._flag is None:
            return
        local_bad, self._flag = bool(self._flag), None
        if self.train_loop_obj.strategy.any_rank(local_bad):
            self._terminate(what)

    def _terminate(self, what: str) -> None:
        loop = self.train_loop_obj
        loop.early_stop = True
        if loop.is_main_process():
            get_logger().error(f"TerminateOnNaN: non-finite {what} in epoch {loop.epoch + 1}, batch "
                               f"{loop.iteration + 1}; stopping training.")

    def state_dict(self) -> dict:
        return {"num_batches": self._num_batches, "num_seen": self._num_seen}

    def load_state_dict(self, state: dict) -> None:
        self._num_batches, self._num_seen = state["num_batches"], state["num_seen"]


def batch_loss_nonfinite(loop) -> torch.Tensor:
    """A device flag: whether the loss of the batch just computed holds a NaN or an infinity."""
    loss = loop.loss_batch_accum[-1]
    values = torch.stack(list(loss.values())) if isinstance(loss, MultiLoss) else loss
    return ~torch.isfinite(values).all()


def update_is_nonfinite(loop, earlier: Optional[torch.Tensor] = None) -> bool:
    """Whether the coming optimizer update would carry a non-finite value, decided on every rank.

    Looks at the batch loss, ``earlier`` (the flag of the window's earlier batches) and, without
    a loss scaler, every gradient (a sharded one by its local shard); the verdict is combined over
    the ranks, so that all of them skip or stop together. One host sync.
    """
    bad = batch_loss_nonfinite(loop)
    if earlier is not None:
        bad = bad | earlier
    if loop.amp_handler.scaler is None:  # AMP's scaler handles (and skips) scaled inf gradients itself
        grads = [p.grad for optimizer in loop.optimizers for group in optimizer.param_groups
                 for p in group["params"] if p.grad is not None]
        if grads:
            bad = bad | ~torch.stack([torch.isfinite(g).all() for g in grads]).all()
    return loop.strategy.any_rank(bool(bad))


def drop_gradients(loop) -> None:
    """Set every gradient to None: torch optimizers skip parameters without one, so the step is void."""
    for optimizer in loop.optimizers:
        optimizer.zero_grad(set_to_none=True)


class SkipNonFinite(AbstractCallback):
    """Skip the optimizer update of a window whose loss or gradients are not finite, and train on.

    Checked before every optimizer step (one host sync per step): when the batch loss, the loss
    of an earlier batch of the accumulation window or a gradient holds a NaN or an infinity, the
    window's gradients are dropped, so the weights and the optimizer state stay those of the
    previous update (torch optimizers skip parameters without a gradient). Under DDP / FSDP the
    verdict is combined over the ranks. Under CUDA float16 AMP the GradScaler already skips
    steps with inf/NaN gradients; this callback then checks the losses only. Use
    :class:`TerminateOnNaN` to stop instead.

    Args:
        max_consecutive: stop training after this many skipped updates in a row; None: never.
        execution_order: callback execution order (keep it before gradient clipping callbacks).

    Attributes:
        skipped_iterations: ``total_iteration_idx`` of each batch whose update was skipped.
    """

    def __init__(self, max_consecutive: Optional[int] = None, execution_order: int = -100):
        super().__init__("SkipNonFinite", execution_order=execution_order)
        if max_consecutive is not None and (isinstance(max_consecutive, bool) or
                                            not isinstance(max_consecutive, int) or max_consecutive < 1):
            raise ValueError(f"max_consecutive must be an int >= 1 or None, got {max_consecutive!r}.")
        self.max_consecutive = max_consecutive
        self.skipped_iterations: list = []
        self._consecutive = 0
        self._flag: Optional[torch.Tensor] = None  # non-finite losses of the window's earlier batches
        self._checked = False  # this batch closed its window (its update was checked)

    def on_train_begin(self):
        self._flag, self._checked = None, False

    def on_after_gradient_update(self, optimizer_idx: int):
        if optimizer_idx != 0:
            return
        loop = self.train_loop_obj
        bad, self._flag, self._checked = update_is_nonfinite(loop, self._flag), None, True
        if not bad:
            self._consecutive = 0
            return
        drop_gradients(loop)
        self.skipped_iterations.append(loop.total_iteration_idx)
        self._consecutive += 1
        if loop.is_main_process():
            get_logger().warning(f"SkipNonFinite: non-finite batch loss or gradient in epoch {loop.epoch + 1}, "
                                 f"batch {loop.iteration + 1}: the update was skipped "
                                 f"({len(self.skipped_iterations)} skipped so far).")
        if self.max_consecutive is not None and self._consecutive >= self.max_consecutive:
            loop.early_stop = True
            if loop.is_main_process():
                get_logger().error(f"SkipNonFinite: {self._consecutive} updates in a row skipped; stopping training.")

    def on_batch_end(self):
        if self._checked:  # the window closed: the next one starts clean
            self._checked = False
            return
        bad = batch_loss_nonfinite(self.train_loop_obj)
        self._flag = bad if self._flag is None else self._flag | bad

    def state_dict(self) -> dict:
        return {"skipped_iterations": list(self.skipped_iterations), "consecutive": self._consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_iterations = list(state["skipped_iterations"])
        self._consecutive = state["consecutive"]


class AllPredictionsSame(AbstractCallback):
    """Warn (and optionally stop) when every prediction on a data set is one and the same value.

    A model that predicts only one value (e.g. always class 0) has usually collapsed. Checked at
    the end of every epoch on the cached predictions of the data set, so that it costs no extra
    pass when other callbacks predict on the same set.

    Args:
        value: the value to look for; None: any single value shared by all predictions.
        stop_training: stop training when it happens.
        dataset: ``'train'``, ``'validation'`` or ``'test'``.
        execution_order: callback execution order.
    """

    _PREDICT = {"train": "predict_on_train_set", "validation": "predict_on_validation_set",
                "test": "predict_on_test_set"}

    def __init__(self, value: Optional[float] = 0., stop_training: bool = False,
                 dataset: str = "validation", execution_order: int = 0):
        super().__init__("AllPredictionsSame", execution_order=execution_order)
        if dataset not in self._PREDICT:
            raise ValueError(f"dataset must be one of {list(self._PREDICT)}, got {dataset!r}.")
        self.value, self.stop_training, self.dataset = value, stop_training, dataset
        self.triggered_epochs = []

    def on_epoch_end(self):
        y_pred, _, _ = getattr(self.train_loop_obj, self._PREDICT[self.dataset])()
        y_pred = torch.as_tensor(y_pred)
        if y_pred.numel() == 0:
            return
        reference = y_pred.flatten()[0] if self.value is None else self.value
        if bool(torch.all(y_pred == reference)):
            self._report(float(reference))

    def _report(self, value: float) -> None:
        loop = self.train_loop_obj
        self.triggered_epochs.append(loop.epoch)
        if loop.is_main_process():
            get_logger().warning(f"AllPredictionsSame: every {self.dataset} prediction is {value} in epoch "
                                 f"{loop.epoch + 1}.")
        if self.stop_training:
            loop.early_stop = True


class ListRegisteredCallbacks(AbstractCallback):
    """Log the registered callbacks, in execution order with their hooks, when training starts."""

    def __init__(self, execution_order: int = 0):
        super().__init__("ListRegisteredCallbacks", execution_order=execution_order, device_idx_execution=0)

    def on_train_begin(self):
        self.train_loop_obj.callbacks_handler.print_registered_callbacks()


class FunctionOnTrainLoop(AbstractCallback):
    """Call ``fn_to_execute(train_loop_obj)`` at the chosen points of training.

    Only the selected hooks are subscribed, so an unselected batch hook costs nothing. With no
    point selected the function runs only when :meth:`execute_callback` is called.

    Args:
        fn_to_execute: function of the TrainLoop.
        tl_registration: call when registered with the TrainLoop.
        epoch_begin: call at the start of every epoch.
        epoch_end: call at the end of every epoch.
        train_begin: call at the start of training.
        train_end: call at the end of training.
        batch_begin: call before every batch.
        batch_end: call after every batch.
        after_gradient_update: call when the gradients are ready, before each optimizer steps.
        after_optimizer_step: call after every real optimizer step.
        execution_order: callback execution order.
        device_idx_execution: under DDP, run only on this rank; None runs everywhere.
    """

    _FLAGS = {"tl_registration": "on_train_loop_registration", "epoch_begin": "on_epoch_begin",
              "epoch_end": "on_epoch_end", "train_begin": "on_train_begin", "train_end": "on_train_end",
              "batch_begin": "on_batch_begin", "batch_end": "on_batch_end",
              "after_gradient_update": "on_after_gradient_update",
              "after_optimizer_step": "on_after_optimizer_step"}

    def __init__(self, fn_to_execute: Callable, tl_registration: bool = False, epoch_begin: bool = False,
                 epoch_end: bool = False, train_begin: bool = False, train_end: bool = False,
                 batch_begin: bool = False, batch_end: bool = False, after_gradient_update: bool = False,
                 after_optimizer_step: bool = False, execution_order: int = 0,
                 device_idx_execution: Optional[int] = None):
        super().__init__("FunctionOnTrainLoop", execution_order, device_idx_execution)
        if not callable(fn_to_execute):
            raise TypeError(f"FunctionOnTrainLoop: fn_to_execute must be callable, got "
                            f"{type(fn_to_execute).__name__}.")
        self.fn_to_execute = fn_to_execute
        self.tl_registration, self.epoch_begin, self.epoch_end = tl_registration, epoch_begin, epoch_end
        self.train_begin, self.train_end = train_begin, train_end
        self.batch_begin, self.batch_end = batch_begin, batch_end
        self.after_gradient_update, self.after_optimizer_step = after_gradient_update, after_optimizer_step

    def implemented_hooks(self):  # per instance: subscribe to the selected hooks only
        """The hooks selected at construction."""
        return frozenset(hook for flag, hook in self._FLAGS.items() if getattr(self, flag))

    def produced_history_metrics(self):
        return None  # the user's function may write any history key

    def execute_callback(self) -> None:
        """Call the function with the TrainLoop."""
        self.fn_to_execute(self.train_loop_obj)

    def on_train_loop_registration(self):
        if self.after_gradient_update or self.after_optimizer_step:
            self.train_loop_obj.grad_cb_used = True
        if self.tl_registration:
            self.execute_callback()

    def on_after_gradient_update(self, optimizer_idx: int):
        self.execute_callback()

    def _call(self):
        self.execute_callback()

    on_train_begin = on_epoch_begin = on_batch_begin = _call
    on_after_optimizer_step = on_batch_end = on_epoch_end = on_train_end = _call


class DataSubsetTestRun(AbstractCallback):
    """Train and evaluate on the first batches of each data set only: a quick test run.

    The loaders are replaced, when the callback is registered, by loaders over the samples of
    their first ``num_*_batches`` batches (per process under DDP) that keep every other setting
    (batch size, shuffling - within the subset -, workers, collate function, ...). Put it first
    in the callbacks list so that callbacks registered after it (e.g. schedulers counting the
    training steps) see the smaller loaders.

    Args:
        num_train_batches: training batches to keep; 0 keeps them all.
        num_val_batches: validation batches to keep; 0 keeps them all.
        num_test_batches: test batches to keep; 0 keeps them all.

    Raises:
        ValueError: a negative count; at registration, a count for a loader the TrainLoop lacks.
    """

    def __init__(self, num_train_batches: int = 1, num_val_batches: int = 0, num_test_batches: int = 0):
        super().__init__("DataSubsetTestRun", execution_order=-100)
        for name, value in (("num_train_batches", num_train_batches), ("num_val_batches", num_val_batches),
                            ("num_test_batches", num_test_batches)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (0 keeps all the batches), got {value!r}.")
        self.num_train_batches = num_train_batches
        self.num_val_batches = num_val_batches
        self.num_test_batches = num_test_batches

    def on_train_loop_registration(self):
        loop = self.train_loop_obj
        counts = {"train_loader": self.num_train_batches, "validation_loader": self.num_val_batches,
                  "test_loader": self.num_test_batches}
        for attr, num in counts.items():
            loader = getattr(loop, attr)
            if num and loader is None:
                raise ValueError(f"DataSubsetTestRun: {attr} was not given to the TrainLoop, so it cannot be "
                                 f"subset; leave its number of batches at 0.")
        world_size = getattr(loop.strategy, "world_size", 1)
        for attr, num in counts.items():
            loader = getattr(loop, attr)
            if not num:
                continue
            if not isinstance(loader, DataLoader):  # e.g. a list of batches: keep its first ones
                setattr(loop, attr, list(itertools.islice(loader, num)))
                continue
            subset = subset_loader(loader, num * (loader_batch_size(loader) or 1) * world_size)
            setattr(loop, attr, loop.strategy.prepare_train_loader(subset) if attr == "train_loader" else subset)


def subset_loader(loader: DataLoader, num_insts: int) -> DataLoader:
    """A copy of ``loader`` over the first ``num_insts`` samples of its data set.

    Args:
        loader: the original loader (its sampler may be a ``DistributedSampler``).
        num_insts: number of samples to keep.

    Returns:
        A new DataLoader with the original batch size, shuffling, drop_last and settings.
    """
    dataset = loader.dataset
    subset = Subset(dataset, range(min(num_insts, len(dataset))))
    shuffle = isinstance(loader.sampler, RandomSampler) or bool(getattr(loader.sampler, "shuffle", False))
    return DataLoader(subset, batch_size=loader_batch_size(loader), shuffle=shuffle,
                      drop_last=loader.drop_last, **loader_kwargs(loader))


class ConvertSyncBatchNorm(AbstractCallback):
    """Convert every BatchNorm layer of the model to ``torch.nn.SyncBatchNorm``, in place.

    Under DDP the batch statistics are then computed over the whole global batch. Conversion
    happens when the callback is registered; the parameters and buffers are the same tensors, so
    the optimizer and a DDP wrapper built earlier keep working. SyncBatchNorm needs an
    accelerator once a process group exists: on CPU-only distributed runs (gloo) the model is
    left unchanged, with a warning.
    """

    def __init__(self):
        super().__init__("ConvertSyncBatchNorm", execution_order=-100)

    def on_train_loop_registration(self):
        loop = self.train_loop_obj
        if loop.device.type == "cpu" and torch.distributed.is_available() and torch.distributed.is_initialized():
            get_logger().warning("ConvertSyncBatchNorm: SyncBatchNorm does not run on CPU in a distributed "
                                 "run; keeping BatchNorm layers.")
            return
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(loop.module)
        if converted is not loop.module:
            raise ValueError("ConvertSyncBatchNorm: the model itself is a BatchNorm layer; wrap it in a "
                             "module so that it can be converted in place.")
from aitoolbox.torchtrain.callbacks.notification import EmailNotification, LogUpload  # noqa: E402,F401
