"""Base class of every TrainLoop callback.

A callback overrides any of the hooks below; it is subscribed to exactly the hooks its class
overrides. Hooks, in the order the TrainLoop calls them::

    on_train_loop_registration()           when registered (by register_train_loop_object)
    on_multiprocess_start()                in each DDP process, before training
    on_train_begin()
    for each epoch:
        on_epoch_begin()
        for each batch:
            on_batch_begin()
            (loss, backward)
            when the optimizer steps:
                on_after_gradient_update(optimizer_idx)   per optimizer, before its step
                on_after_optimizer_step()
            on_batch_end()
        (end-of-epoch loss evaluation)
        on_epoch_end()
    on_train_end()
    on_train_crash(exception)              only when training raised (then re-raised)

``on_after_batch_prediction(y_pred, y_true, metadata, dataset_info)`` is called for each batch of a
prediction run started with ``execute_callbacks=True``.
"""
from __future__ import annotations

from typing import FrozenSet, List, Optional, Sequence, Tuple

from aitoolbox.torchtrain.train_loop.components.callback_handler import HOOKS


class AbstractCallback:
    """Base of TrainLoop callbacks.

    Args:
        callback_name: readable name of the callback.
        execution_order: callbacks run in ascending order of this number (ties: registration
            order). State-changing callbacks should run before observers, savers last.
        device_idx_execution: under DDP, run only on the process of this rank (e.g. 0 for the
            main process); None runs everywhere.

    Attributes:
        train_loop_obj: the TrainLoop, set at registration.
        message_service: the TrainLoop's message service, set at registration.
    """

    def __init__(self, callback_name: str, execution_order: int = 0,
                 device_idx_execution: Optional[int] = None):
        self.callback_name = callback_name
        self.execution_order = execution_order
        self.device_idx_execution = device_idx_execution
        self.train_loop_obj = None
        self.message_service = None

    def register_train_loop_object(self, train_loop_obj) -> "AbstractCallback":
        """Attach the callback to a TrainLoop and call :meth:`on_train_loop_registration`.

        Called by the TrainLoop's callbacks handler.

        Returns:
            self.
        """
        self.train_loop_obj = train_loop_obj
        self.message_service = train_loop_obj.message_service
        self.on_train_loop_registration()
        return self

    @classmethod
    def implemented_hooks(cls) -> FrozenSet[str]:
        """The hooks this callback's class overrides."""
        cached = cls.__dict__.get("_implemented_hooks")
        if cached is None:
            cached = frozenset(h for h in HOOKS if getattr(cls, h) is not getattr(AbstractCallback, h))
            cls._implemented_hooks = cached
        return cached

    def produced_history_metrics(self) -> Optional[List[str]]:
        """The training-history keys this callback writes (checked against the watched ones at ``fit``).

        Names, or ``'prefix*'`` patterns for keys known only at run time (e.g. ``'val_*'`` for a
        result package's metrics). Override it in a callback that writes history keys, so that a
        callback watching a misspelt key fails at ``fit``. The default: none for aitoolbox's
        callbacks; None (may write any key) for every other class, which turns a missing key
        into a warning after the first epoch instead.
        """
        from aitoolbox.torchtrain.callbacks.metric_watch import produced_by_default
        return produced_by_default(self)

    def monitored_history_metrics(self) -> Sequence[Tuple[str, str, bool]]:
        """The training-history keys this callback reads: ``(argument name, key, during_epochs)``.

        ``fit`` raises when no callback nor the TrainLoop writes one of them (see
        :meth:`produced_history_metrics`). ``during_epochs`` False: read only at the end of
        training. Default: none.
        """
        return ()

    def state_dict(self) -> Optional[dict]:
        """State saved with checkpoints; None for a stateless callback."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore the state returned by :meth:`state_dict`."""

    def on_train_loop_registration(self):
        """Called once when the callback is registered with the TrainLoop."""

    def on_multiprocess_start(self):
        """Called in each DDP process before training starts (e.g. to load data there)."""

    def on_train_begin(self):
        """Called at the start of training."""

    def on_epoch_begin(self):
        """Called at the start of every epoch."""

    def on_batch_begin(self):
        """Called before each training batch."""

    def on_after_gradient_update(self, optimizer_idx: int):
        """Called when gradients are ready, before the optimizer ``optimizer_idx`` steps.

        Called whenever a callback implements it (setting ``train_loop_obj.grad_cb_used = True``,
        as aitoolbox 1.8 required, is allowed and not needed). With gradient accumulation it runs
        once per optimizer step, on the accumulated gradients.
        """

    def on_after_optimizer_step(self):
        """Called after every real optimizer step (all optimizers stepped, scaler updated)."""

    def on_batch_end(self):
        """Called after each training batch."""

    def on_after_batch_prediction(self, y_pred_batch, y_test_batch, metadata_batch, dataset_info):
        """Called after each batch of a prediction run started with ``execute_callbacks=True``."""

    def on_epoch_end(self):
        """Called at the end of every epoch, after the end-of-epoch evaluation."""

    def on_train_end(self):
        """Called at the end of training."""

    def on_train_crash(self, exception: BaseException):
        """Called when training raised ``exception`` (also KeyboardInterrupt), before it propagates.

        Use it to save what must not be lost (e.g. an emergency checkpoint). It must not raise.
        """


def __getattr__(name: str):
    # AbstractExperimentCallback lives in experiment_base (which imports this module): re-exported
    # lazily here, at the original aitoolbox's path.
    if name == "AbstractExperimentCallback":
        from aitoolbox.torchtrain.callbacks.experiment_base import AbstractExperimentCallback
        return AbstractExperimentCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
