"""Automatic mixed precision: the only module that touches ``torch.amp``.

``use_amp`` names what to run (see :func:`resolve_precision`):

* ``True`` (or a dict of ``torch.amp.GradScaler`` arguments): the device's usual choice,
  float16 with a ``GradScaler`` on CUDA, bfloat16 on CPU;
* ``'bf16'`` / ``'bfloat16'`` / ``torch.bfloat16``: bfloat16 autocast without loss scaling, on
  CUDA and CPU (bfloat16 has float32's exponent range: gradients do not underflow);
* ``'fp16'`` / ``'float16'`` / ``torch.float16``: float16 autocast with a ``GradScaler``, CUDA only;
* a dict may name the dtype too: ``{'dtype': 'fp16', 'init_scale': 1024.0}``.

With AMP off every method is a thin pass-through.
"""
from __future__ import annotations

import contextlib
import inspect
import operator
from typing import Any, ContextManager, Dict, Optional, Tuple, Union

import torch
from torch import nn

_SCALER_KEYS = tuple(p for p in inspect.signature(torch.amp.GradScaler.__init__).parameters
                     if p not in ("self", "device"))

#: the names ``use_amp`` (or its dict's ``'dtype'`` entry) accepts for each autocast dtype
DTYPE_NAMES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                                       "fp16": torch.float16, "float16": torch.float16}
_VALID = "False, True, 'bf16', 'bfloat16', 'fp16', 'float16', torch.bfloat16, torch.float16"

#: autocast's dtype when none is named (also what a fresh thread starts with: the setting is thread-local)
_DEVICE_DEFAULT = {"cuda": torch.float16, "cpu": torch.bfloat16}

#: one shared no-op context (reusable): no allocation per batch when AMP is off
_NULL_CONTEXT = contextlib.nullcontext()

UseAmp = Union[bool, str, torch.dtype, dict]


def validate_use_amp(use_amp: Any) -> None:
    """Raise a clear error for a ``use_amp`` value that names no precision we run.

    Checks what does not depend on the device; see :func:`check_amp_device` for the rest.

    Raises:
        TypeError: ``use_amp`` is not a bool, a dtype name, a torch dtype or a dict.
        ValueError: an unknown dtype name, or a dict key that ``torch.amp.GradScaler`` does not take.
    """
    resolve_precision(use_amp)


def resolve_precision(use_amp: Any) -> Tuple[bool, Optional[torch.dtype], dict]:
    """What ``use_amp`` asks for, independent of the device.

    Returns:
        ``(enabled, dtype, scaler_args)``: dtype None means the device's usual one (float16 on
        CUDA, bfloat16 on CPU); ``scaler_args`` are the ``GradScaler`` arguments.

    Raises:
        TypeError, ValueError: as :func:`validate_use_amp`.
    """
    if isinstance(use_amp, bool):
        return use_amp, None, {}
    if isinstance(use_amp, (str, torch.dtype)):
        return True, _parse_dtype(use_amp, "use_amp"), {}
    if not isinstance(use_amp, dict):
        raise TypeError(f"use_amp must be True/False, a dtype name ('bf16' or 'fp16'), a torch dtype or a "
                        f"dict of torch.amp.GradScaler arguments, got {type(use_amp).__name__}. "
                        f"Valid values: {_VALID}.")
    scaler_args = {k: v for k, v in use_amp.items() if k != "dtype"}
    unknown = sorted(set(scaler_args) - set(_SCALER_KEYS), key=str)
    if unknown:
        raise ValueError(f"use_amp has unknown GradScaler argument(s) {unknown}; valid keys are "
                         f"{list(_SCALER_KEYS)} and 'dtype'.")
    dtype = _parse_dtype(use_amp["dtype"], "use_amp['dtype']") if "dtype" in use_amp else None
    if dtype == torch.bfloat16 and scaler_args:
        raise ValueError(f"use_amp asks for bfloat16, which runs without a GradScaler, and also gives "
                         f"GradScaler arguments {sorted(scaler_args)}: drop them (use_amp='bf16'), or ask "
                         "for float16 with the scaler (use_amp={'dtype': 'fp16', ...}, CUDA only).")
    return True, dtype, scaler_args


def _parse_dtype(value: Any, arg_name: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        if value in (torch.bfloat16, torch.float16):
            return value
    elif isinstance(value, str) and value.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[value.lower()]
    raise ValueError(f"{arg_name}={value!r} names no precision we run; valid values of use_amp: {_VALID}, or a "
                     "dict of GradScaler arguments with an optional 'dtype' entry. 'bf16' runs bfloat16 "
                     "(CUDA and CPU), 'fp16' float16 with a GradScaler (CUDA only); False trains in float32.")


def requests_float16(use_amp: Any) -> bool:
    """Whether ``use_amp`` names float16 explicitly (``True`` picks it only on CUDA)."""
    return resolve_precision(use_amp)[1] == torch.float16


def check_amp_device(use_amp: Any, device_type: str, where: str = "") -> None:
    """Raise when ``use_amp`` cannot run on ``device_type`` (float16 asked for on the CPU).

    Args:
        use_amp: the TrainLoop's ``use_amp``.
        device_type: ``'cpu'`` or ``'cuda'``: where the model trains.
        where: what puts training there, for the message (e.g. ``"gpu_mode='ddp' with on_gpu=False"``).

    Raises:
        ValueError: float16 requested on the CPU, naming ``use_amp`` and the fix.
    """
    if device_type != "cuda" and requests_float16(use_amp):
        raise ValueError(_float16_on_cpu_message(use_amp, where))


def _float16_on_cpu_message(use_amp: Any, where: str) -> str:
    place = where or "the CPU (no CUDA device is visible)"
    return (f"use_amp={use_amp!r} asks for float16 autocast with a GradScaler, which needs CUDA, but training "
            f"runs on {place}. On the CPU use use_amp='bf16' (or True, which picks bfloat16 there), or "
            "use_amp=False for float32.")


def scaler_arguments(use_amp: Any) -> dict:
    """The ``torch.amp.GradScaler`` arguments in ``use_amp`` (its dict without ``'dtype'``)."""
    return dict(resolve_precision(use_amp)[2])


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
        use_amp: False, True, a dtype name (``'bf16'``, ``'fp16'``, ...), a torch dtype, or a dict
            of ``torch.amp.GradScaler`` arguments with an optional ``'dtype'`` entry.
        device: the device the model trains on; decides the autocast dtype when ``use_amp`` names
            none, and whether there is a scaler (float16 on CUDA only).

    Attributes:
        enabled: whether autocast runs.
        dtype: the autocast dtype.
        scaler: the ``torch.amp.GradScaler`` (float16 on CUDA), else None.
        grad_scaler: what user overrides of ``MultiLoss.backward`` / ``MultiOptimizer.step`` get
            as ``amp_grad_scaler``: the scaler, or a :class:`PassThroughScaler`.

    Raises:
        TypeError, ValueError: an invalid ``use_amp``; bfloat16 on a GPU without bfloat16 support.

    A float16 request on the CPU is refused up front by the TrainLoop (:func:`check_amp_device`);
    a handler built that way (the CPU-side parent of DDP ranks that train on GPUs) raises that
    error when its autocast is entered.
    """

    def __init__(self, use_amp: UseAmp, device: torch.device):
        self.enabled, requested, scaler_args = resolve_precision(use_amp)
        self.device_type = torch.device(device).type
        self.dtype = (requested if requested is not None
                      else _DEVICE_DEFAULT.get(self.device_type, torch.bfloat16))
        if self.enabled and self.device_type == "cuda" and self.dtype == torch.bfloat16:
            _check_cuda_bfloat16(use_amp)
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(self.device_type, **scaler_args)
            if self.enabled and self.device_type == "cuda" and self.dtype == torch.float16 else None)
        # what user overrides of MultiLoss.backward / MultiOptimizer.step get as amp_grad_scaler
        self.grad_scaler = self.scaler if self.scaler is not None else PassThroughScaler()
        self._unscaled = set()
        self.step_skipped = False  # did the last update find inf/NaN gradients and skip the step
        self._device_error = (_float16_on_cpu_message(use_amp, f"the {self.device_type.upper()}")
                              if self.enabled and self.device_type != "cuda" and self.dtype == torch.float16
                              else None)
        if self.scaler is None:
            # Nothing to scale: step is the optimizer's own call, bound once, so that the
            # per-batch path runs no frame of ours in between (same signature as the method).
            self.step = operator.methodcaller("step")

    def autocast(self) -> ContextManager:
        """The autocast context for the forward pass and the loss (a no-op when AMP is off)."""
        if not self.enabled:
            return _NULL_CONTEXT
        if self._device_error is not None:
            raise ValueError(self._device_error)
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def follow_into_threads(self, module: nn.Module) -> None:
        """Make ``module``'s forward run in this handler's dtype in threads that torch starts.

        ``nn.DataParallel`` runs each GPU's replica in a thread of its own and enters autocast
        there without a dtype; autocast's dtype is per thread, so the replicas would fall back to
        the device's default (float16 on CUDA) under ``use_amp='bf16'``. A forward pre-hook on
        the replicated module sets the dtype in the thread that runs it. Registered only when
        the dtype is not the device's default, so other runs keep a hook-free forward.

        Args:
            module: the module DataParallel replicates (or the DataParallel wrapper itself).
        """
        if not self.enabled or self.dtype == _DEVICE_DEFAULT.get(self.device_type):
            return
        target = module.module if isinstance(module, nn.DataParallel) else module
        if not any(isinstance(h, AutocastDtypeHook) for h in target._forward_pre_hooks.values()):
            target.register_forward_pre_hook(AutocastDtypeHook(self.device_type, self.dtype))

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


class AutocastDtypeHook:
    """Forward pre-hook: inside an autocast region of ``device_type``, set its dtype to ``dtype``.

    Picklable (a model saved whole keeps working), and a no-op outside autocast.
    """

    def __init__(self, device_type: str, dtype: torch.dtype):
        self.device_type, self.dtype = device_type, dtype

    def __call__(self, module: nn.Module, args) -> None:
        if torch.is_autocast_enabled(self.device_type):
            # The autocast region that torch's worker entered restores the previous dtype on exit.
            torch.set_autocast_dtype(self.device_type, self.dtype)


def _check_cuda_bfloat16(use_amp: Any) -> None:
    if not torch.cuda.is_bf16_supported():
        raise ValueError(f"use_amp={use_amp!r} asks for bfloat16 autocast, which this GPU "
                         f"({torch.cuda.get_device_name()}) does not support: use use_amp='fp16' (float16 "
                         "with a GradScaler, or True, which picks it on CUDA), or use_amp=False.")
