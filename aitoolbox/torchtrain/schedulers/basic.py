"""Learning-rate schedulers as callbacks, around any ``torch.optim.lr_scheduler`` class.

A scheduler callback builds its torch scheduler when registered with the TrainLoop, steps it at
the end of every epoch or after every real optimizer update (never on an update that AMP's
GradScaler skipped), and saves its state with the checkpoints.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import torch

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

STEP_ON = ("epoch", "batch")


class AbstractScheduler(AbstractCallback):
    """Marker base of scheduler callbacks: ``TrainLoop.get_schedulers()`` returns these."""


class GeneralLRSchedulerCallback(AbstractScheduler):
    """Any ``torch.optim.lr_scheduler`` class as a TrainLoop callback.

    Args:
        scheduler_class: e.g. ``torch.optim.lr_scheduler.StepLR``.
        optimizer_idx: which optimizer of a ``MultiOptimizer`` to schedule (None: the first).
        step_on: ``'epoch'`` (at every epoch end) or ``'batch'`` (after every real optimizer
            update, i.e. once per accumulation window).
        execution_order: callback execution order.
        **scheduler_args: arguments of ``scheduler_class`` besides the optimizer.
    """

    def __init__(self, scheduler_class: type, optimizer_idx: Optional[int] = None, step_on: str = "epoch",
                 execution_order: int = 0, **scheduler_args: Any):
        super().__init__(f"{scheduler_class.__name__} scheduler", execution_order=execution_order)
        if step_on not in STEP_ON:
            raise ValueError(f"step_on must be one of {STEP_ON}, got {step_on!r}.")
        self.scheduler_class, self.scheduler_args = scheduler_class, scheduler_args
        self.optimizer_idx, self.step_on = optimizer_idx, step_on
        self.scheduler = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The scheduled optimizer."""
        optimizers = self.train_loop_obj.optimizers
        idx = self.optimizer_idx or 0
        if idx >= len(optimizers):
            raise ValueError(f"optimizer_idx={idx} but the TrainLoop has {len(optimizers)} optimizer(s).")
        return optimizers[idx]

    def build_scheduler(self):
        """Create the torch scheduler (override to build it differently)."""
        return self.scheduler_class(self.optimizer, **self.scheduler_args)

    def on_train_loop_registration(self):
        if self.scheduler is None:
            self.scheduler = self.build_scheduler()

    def on_epoch_end(self):
        if self.step_on == "epoch":
            self.step()

    def on_after_optimizer_step(self):
        if self.step_on == "batch" and not self.train_loop_obj.optimizer_step_skipped:
            self.step()

    def step(self) -> None:
        """Advance the schedule by one step."""
        self.scheduler.step()

    def get_last_lr(self) -> List[float]:
        """The learning rates the scheduler set last."""
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict:
        """The torch scheduler's state and the learning rates it had set."""
        return {"scheduler": self.scheduler.state_dict(),
                "lrs": [group["lr"] for group in self.optimizer.param_groups]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the schedule, and the learning rates (building a scheduler resets them)."""
        self.scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, state["lrs"]):
            group["lr"] = lr


class StepLRScheduler(GeneralLRSchedulerCallback):
    """``StepLR``: multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int, gamma: float = 0.1, optimizer_idx: Optional[int] = None, **kwargs):
        super().__init__(torch.optim.lr_scheduler.StepLR, optimizer_idx, step_size=step_size, gamma=gamma,
                         **kwargs)


class MultiStepLRScheduler(GeneralLRSchedulerCallback):
    """``MultiStepLR``: multiply the learning rate by ``gamma`` at each milestone epoch."""

    def __init__(self, milestones_list: Sequence[int], gamma: float = 0.1,
                 optimizer_idx: Optional[int] = None, **kwargs):
        super().__init__(torch.optim.lr_scheduler.MultiStepLR, optimizer_idx,
                         milestones=list(milestones_list), gamma=gamma, **kwargs)


class LambdaLRScheduler(GeneralLRSchedulerCallback):
    """``LambdaLR``: learning rate = initial lr x ``lr_lambda(step)``.

    Args:
        lr_lambda_list: a function of the step count, or one per param group.
        execute_epoch_end: step at every epoch end.
        execute_batch_end: step after every real optimizer update instead.
        optimizer_idx: which optimizer of a ``MultiOptimizer`` to schedule.
    """

    def __init__(self, lr_lambda_list: Union[Callable, List[Callable]], execute_epoch_end: bool = True,
                 execute_batch_end: bool = False, optimizer_idx: Optional[int] = None, **kwargs):
        if execute_epoch_end == execute_batch_end:
            raise ValueError("Set exactly one of execute_epoch_end and execute_batch_end to True.")
        super().__init__(torch.optim.lr_scheduler.LambdaLR, optimizer_idx,
                         step_on="batch" if execute_batch_end else "epoch", lr_lambda=lr_lambda_list, **kwargs)


class ReduceLROnPlateauScheduler(GeneralLRSchedulerCallback):
    """``ReduceLROnPlateau`` on the validation loss, stepped at every epoch end.

    The validation loss comes from the TrainLoop's prediction cache, so it is computed once per
    epoch whoever asks for it.
    """

    def __init__(self, optimizer_idx: Optional[int] = None, **kwargs):
        super().__init__(torch.optim.lr_scheduler.ReduceLROnPlateau, optimizer_idx, **kwargs)

    def on_train_loop_registration(self):
        if self.train_loop_obj.validation_loader is None:
            raise ValueError("ReduceLROnPlateauScheduler needs validation_loader: pass one to the "
                             "TrainLoop, or use ReduceLROnPlateauMetricScheduler on another metric.")
        super().on_train_loop_registration()

    def step(self) -> None:
        val_loss = self.train_loop_obj.evaluate_loss_on_validation_set(float_dict_format=True)
        self.scheduler.step(sum(val_loss.values()) if isinstance(val_loss, dict) else val_loss)


class ReduceLROnPlateauMetricScheduler(GeneralLRSchedulerCallback):
    """``ReduceLROnPlateau`` on the latest value of a training-history metric.

    Args:
        metric_name: history key, e.g. ``'val_Accuracy'`` (set ``mode='max'`` for such metrics).
        optimizer_idx: which optimizer of a ``MultiOptimizer`` to schedule.
        execution_order: keep it above the callback that writes the metric.
    """

    def __init__(self, metric_name: str, optimizer_idx: Optional[int] = None, execution_order: int = 10,
                 **kwargs):
        super().__init__(torch.optim.lr_scheduler.ReduceLROnPlateau, optimizer_idx,
                         execution_order=execution_order, **kwargs)
        if not isinstance(metric_name, str) or not metric_name:
            raise TypeError(f"metric_name must be the name of a training-history metric, got {metric_name!r}.")
        self.metric_name = metric_name

    def monitored_history_metrics(self):
        return [("metric_name", self.metric_name, True)]

    def step(self) -> None:
        history = self.train_loop_obj.train_history
        if self.metric_name not in history or not history[self.metric_name]:
            raise ValueError(f"ReduceLROnPlateauMetricScheduler: metric {self.metric_name!r} is not in the "
                             f"training history (keys: {list(history.keys())}). Add the callback that "
                             "computes it with a lower execution_order.")
        self.scheduler.step(history[self.metric_name][-1])
