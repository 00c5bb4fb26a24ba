"""Automatic mixed precision: the only module that touches ``torch.amp``.

On CUDA, autocast runs in float16 with a ``GradScaler``; on CPU in bfloat16, which needs no
scaling. With AMP off every method is a thin pass-through.
"""
from __future__ import annotations

import contextlib
import inspect
import operator
from typing import ContextManager, Optional, Union

import torch

_SCALER_KEYS = tuple(p for p in inspect.signature(torch.amp.GradScaler.__init__).parameters
                     if p not in ("self", "device"))


#: one shared no-op context (reusable): no allocation per batch when AMP is off
_NULL_CONTEXT = contextlib.nullcontext()


def validate_use_amp(use_amp: Union[bool, dict]) -> None:
    """Raise a clear error for a ``use_amp`` value that is not a bool or a dict of scaler args.

    Raises:
        TypeError: ``use_amp`` is neither a bool nor a dict.
        ValueError: the dict holds a key that ``torch.amp.GradScaler`` does not take.
    """
    if isinstance(use_amp, bool):
        return
    if not isinstance(use_amp, dict):
        raise TypeError(f"use_amp must be True/False or a dict of torch.amp.GradScaler arguments, "
                        f"got {type(use_amp).__name__}.")
    unknown = sorted(set(use_amp) - set(_SCALER_KEYS))
    if unknown:
        raise ValueError(f"use_amp has unknown GradScaler argument(s) {unknown}; valid keys are "
                         f"{list(_SCALER_KEYS)}.")


class PassThroughScaler:
    """Stands in for a ``torch.amp.GradScaler`` when no loss scaling is in use.

    User overrides of ``MultiLoss.backward`` / ``MultiOptimizer.step`` get it as
    ``amp_grad_scaler`` (as aitoolbox 1.8 passed a disabled GradScaler): ``scale`` returns the
    loss unchanged, ``step`` calls ``optimizer.step()``.
    """

    @staticmethod
    def scale(outputs):
        """``outputs`` unchanged."""
        return outputs

    @staticmethod
    def step(optimizer, *args, **kwargs):
        """``optimizer.step(*args, **kwargs)``."""
        return optimizer.step(*args, **kwargs)

    @staticmethod
    def unscale_(optimizer) -> None:
        """Nothing to unscale."""

    @staticmethod
    def update(new_scale=None) -> None:
        """No scale to update."""

    @staticmethod
    def is_enabled() -> bool:
        """False: no scaling."""
        return False

    @staticmethod
    def get_scale() -> float:
        """1.0: no scaling."""
        return 1.0


class AmpHandler:
    """Autocast, loss scaling, unscaling and scaled optimizer steps.

    Args:
        use_amp: False, True, or a dict of ``torch.amp.GradScaler`` arguments.
        device: the device the model trains on; decides the autocast dtype and the scaler.
    """

    def __init__(self, use_amp: Union[bool, dict], device: torch.device):
        validate_use_amp(use_amp)
        self.enabled = use_amp is not False
        self.device_type = torch.device(device).type
        self.dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16
        scaler_args = use_amp if isinstance(use_amp, dict) else {}
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(self.device_type, **scaler_args)
            if self.enabled and self.device_type == "cuda" else None)
        #: what user overrides of MultiLoss.backward / MultiOptimizer.step get as amp_grad_scaler
        self.grad_scaler = self.scaler if self.scaler is not None else PassThroughScaler()
        self._unscaled = set()
        self.step_skipped = False  # did the last update find inf/NaN gradients and skip the step
        if self.scaler is None:
            # Nothing to scale: step is the optimizer's own call, bound once, so that the
            # per-batch path runs no frame of ours in between (same signature as the method).
            self.step = operator.methodcaller("step")

    def autocast(self) -> ContextManager:
        """The autocast context for the forward pass and the loss (a no-op when AMP is off)."""
        if not self.enabled:
            return _NULL_CONTEXT
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Back-propagate ``loss``, scaled when a GradScaler is in use."""
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        if retain_graph:
            loss.backward(retain_graph=True)
        else:
            loss.backward()   # also a user's loss-like object whose backward() takes no argument

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale ``optimizer``'s gradients in place (once per step; later calls are no-ops).

        Call this before reading or clipping gradients under AMP.
        """
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``, through the scaler (which skips steps with inf/NaN gradients)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def update(self) -> None:
        """Update the loss scale once per real optimizer step; sets :attr:`step_skipped`."""
        if self.scaler is None:
            return
        scale_before = self.scaler.get_scale()
        self.scaler.update()
        # The scale only shrinks when inf/NaN gradients were found, i.e. the step was skipped.
        self.step_skipped = self.scaler.get_scale() < scale_before
        self._unscaled.clear()

    def state_dict(self) -> dict:
        """The scaler's state (empty without a scaler)."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the scaler's state."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
