"""Checkpoints written by the original aitoolbox 1.8: recognising and loading them into a TrainLoop.

Such a file holds the weights, the optimizer state(s), the epoch and optionally the AMP scaler and
the scheduler states; no RNG state, training history or callback state (a continued run is not
bit-exact). ``checkpointing.load_loop_state_dict`` hands these files here.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from aitoolbox.torchtrain.multi_loss_optim import MultiOptimizer

logger = logging.getLogger("aitoolbox")


#: keys of a checkpoint written by aitoolbox 1.8's savers (``model_<exp>_<ts>_E<n>.pth``)
ORIGINAL_REQUIRED_KEYS = ("model_state_dict", "optimizer_state_dict", "epoch")


def is_original_checkpoint(state: Any) -> bool:
    """Whether ``state`` is a checkpoint dict of aitoolbox 1.8 (no ``format_version``)."""
    return (isinstance(state, dict) and "format_version" not in state
            and all(key in state for key in ORIGINAL_REQUIRED_KEYS))


def unknown_checkpoint_message(state: Any) -> str:
    """The error message for a loaded object that is no checkpoint this aitoolbox reads."""
    if isinstance(state, dict) and state and all(isinstance(value, torch.Tensor) for value in state.values()):
        return ("Not an aitoolbox checkpoint: the file holds a model state dict only, with no optimizer state or position to continue training from. "
                "To predict with it: model.load_state_dict(torch.load(path, weights_only=True)). To continue "
                "training, load a checkpoint of checkpoint_model/ (ModelLoadContinueTraining's default "
                "saved_model_dir='checkpoint_model', or TrainLoop.load_checkpoint(path)).")
    what = f"a dict with the keys {sorted(map(str, state))[:12]}" if isinstance(state, dict) \
        else f"a {type(state).__name__}"
    return (f"Not an aitoolbox checkpoint: the file holds {what}. Expected a checkpoint written by "
            f"TrainLoop.save_checkpoint / ModelCheckpoint (with 'format_version'), or one written by "
            f"aitoolbox 1.8 (with {list(ORIGINAL_REQUIRED_KEYS)}). A bare model state dict loads with "
            "model.load_state_dict(torch.load(path, weights_only=True)).")


def strip_data_parallel_prefix(model_state: dict) -> dict:
    """``model_state`` without the ``module.`` prefix that ``nn.DataParallel`` / DDP added."""
    if model_state and all(str(key).startswith("module.") for key in model_state):
        return type(model_state)((key[len("module."):], value) for key, value in model_state.items())
    return model_state


def load_original_state_dict(loop, state: dict) -> None:
    """Load an aitoolbox 1.8 checkpoint dict into ``loop``; the next ``fit`` continues after it.

    Taken from it: the weights (a DataParallel ``module.`` prefix is removed), the optimizer
    state (a list for a ``MultiOptimizer``), the AMP scaler (``amp``), the position (the epoch
    after ``epoch``, ``iteration_idx + 1`` batches done), and the scheduler states
    (``schedulers_state_dict``), which go to the scheduler callbacks of the next ``fit``. Such a
    file holds no RNG state, no training history and no callback state: the continued run is
    not bit-exact, which is logged.

    Raises:
        ValueError, RuntimeError: the weights or optimizer state do not fit the loop's.
    """
    from aitoolbox.torchtrain.train_loop.components.checkpointing import plain_module  # imports this module

    plain_module(loop.module).load_state_dict(strip_data_parallel_prefix(state["model_state_dict"]))
    if state["optimizer_state_dict"] is not None:
        _load_original_optimizer(loop.optimizer, state["optimizer_state_dict"])
    if state.get("amp"):
        if loop.amp_handler.scaler is not None:
            loop.amp_handler.load_state_dict(state["amp"])
        else:
            logger.info("The checkpoint holds an AMP GradScaler state; this TrainLoop uses no AMP, so it is ignored.")
    set_original_position(loop, state)
    reset_run_state(loop)
    loop._pending_scheduler_states = PendingSchedulerStates(list(state.get("schedulers_state_dict") or []))
    logger.warning("Loaded an aitoolbox 1.8 checkpoint (training continues at epoch %d): that format holds no "
                   "RNG state, so the continued run is not exactly the uninterrupted one.", loop.epoch)


def reset_run_state(loop) -> None:
    """Forget the state of a run in progress after new weights were loaded from an aitoolbox 1.8 file."""
    loop._pending_callback_state = None
    loop.epoch_start_rng = None
    loop.loss_batch_accum = []
    loop._pending_grads = None
    loop.weights_version += 1
    loop.prediction_store.clear()


def _load_original_optimizer(optimizer, optimizer_state) -> None:
    if isinstance(optimizer_state, list) and not isinstance(optimizer, MultiOptimizer):
        if len(optimizer_state) != 1:
            raise ValueError(f"The checkpoint holds the states of {len(optimizer_state)} optimizers (a "
                             "MultiOptimizer); give the TrainLoop a MultiOptimizer of as many optimizers.")
        optimizer_state = optimizer_state[0]
    elif isinstance(optimizer, MultiOptimizer) and not isinstance(optimizer_state, list):
        raise ValueError("The TrainLoop has a MultiOptimizer but the checkpoint holds one optimizer's state; "
                         "give the TrainLoop the single optimizer it was trained with.")
    optimizer.load_state_dict(optimizer_state)


def set_original_position(loop, state: dict) -> None:
    """Put ``loop`` at the start of the epoch after the one an aitoolbox 1.8 checkpoint ended.

    aitoolbox 1.8 stored the 0-based index of the finished epoch and the 0-based index of the
    last batch (``iteration_idx``); this loop counts epochs and batches done.
    """
    loop.epoch, loop.iteration = int(state["epoch"]) + 1, 0
    iteration_idx = state.get("iteration_idx")
    if iteration_idx is not None:
        loop.total_iteration_idx = int(iteration_idx) + 1
    else:
        try:
            loop.total_iteration_idx = loop.epoch * len(loop.train_loader)
        except TypeError:  # no train loader, or one without len()
            loop.total_iteration_idx = 0
    # Not saved by aitoolbox 1.8: one optimizer step per batch is assumed (no gradient accumulation).
    loop.num_optimizer_steps = loop.total_iteration_idx


class PendingSchedulerStates:
    """Scheduler states of an aitoolbox 1.8 checkpoint, waiting for the scheduler callbacks of ``fit``.

    Args:
        states: ``schedulers_state_dict``: one state per scheduler, in registration order.
        ignore_saved: with states but no schedulers: True ignores them, False raises, None warns.
        ignore_missing_saved: with schedulers but no states: True ignores, False raises, None warns.
    """

    def __init__(self, states: list, ignore_saved: Optional[bool] = None,
                 ignore_missing_saved: Optional[bool] = None):
        self.states = states
        self.ignore_saved = ignore_saved
        self.ignore_missing_saved = ignore_missing_saved

    def apply(self, schedulers: list) -> None:
        """Load the states into ``schedulers`` (the registered scheduler callbacks).

        Raises:
            ValueError, KeyError: the counts do not match (unless told to ignore it).
        """
        if not self.states and schedulers:
            self._mismatch(self.ignore_missing_saved, KeyError(
                "The checkpoint holds no scheduler states but schedulers were given to the TrainLoop; "
                "pass ignore_missing_saved_schedulers=True to ModelLoadContinueTraining to start them afresh."))
            return
        if self.states and not schedulers:
            self._mismatch(self.ignore_saved, ValueError(
                f"The checkpoint holds {len(self.states)} scheduler state(s) but no schedulers were given to the "
                "TrainLoop; pass them to fit(callbacks=...), or ignore_saved_schedulers=True to "
                "ModelLoadContinueTraining."))
            return
        if len(self.states) != len(schedulers):
            raise ValueError(f"The checkpoint holds {len(self.states)} scheduler state(s) but {len(schedulers)} "
                             "schedulers were given to the TrainLoop; give the same schedulers, in the same order.")
        for scheduler, state in zip(schedulers, self.states):
            load_original_scheduler_state(scheduler, state)

    @staticmethod
    def _mismatch(ignore: Optional[bool], error: Exception) -> None:
        if ignore is False:
            raise error
        if ignore is None:
            logger.warning("%s", error.args[0])


def load_original_scheduler_state(scheduler_callback, state: dict) -> None:
    """Load one scheduler state of an aitoolbox 1.8 checkpoint (a torch scheduler's ``state_dict``).

    The learning rates the scheduler had set are put back into the optimizer as well.

    Raises:
        TypeError: ``scheduler_callback`` is no scheduler callback with a torch scheduler.
    """
    scheduler = getattr(scheduler_callback, "scheduler", None)
    if scheduler is None or not callable(getattr(scheduler, "load_state_dict", None)):
        raise TypeError(f"{type(scheduler_callback).__name__} has no torch scheduler to load the saved state into.")
    if isinstance(state, dict) and set(state) == {"scheduler", "lrs"}:
        scheduler_callback.load_state_dict(state)  # this aitoolbox's own callback state
        return
    scheduler.load_state_dict(state)
    optimizer = getattr(scheduler, "optimizer", None)
    last_lrs = state.get("_last_lr") if isinstance(state, dict) else None
    if optimizer is not None and last_lrs and len(last_lrs) == len(optimizer.param_groups):
        for group, lr in zip(optimizer.param_groups, last_lrs):
            group["lr"] = lr


def apply_pending_scheduler_states(loop) -> None:
    """At the start of ``fit``: hand the scheduler states of a loaded aitoolbox 1.8 checkpoint over."""
    pending = getattr(loop, "_pending_scheduler_states", None)
    if pending is not None:
        loop._pending_scheduler_states = None
        pending.apply(loop.get_schedulers())
