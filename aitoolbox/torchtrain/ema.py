"""Exponential moving average (EMA) of a model's weights."""
from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, Optional, Union

import torch
from torch import nn


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside a DataParallel / DistributedDataParallel wrapper (or ``model`` itself)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model


class ModelEma:
    """A moving average of everything in a model's ``state_dict``: parameters and buffers.

    After each optimizer step, :meth:`update` sets every floating-point entry to
    ``decay * ema + (1 - decay) * current`` and copies the other entries (e.g. the batch
    counters of BatchNorm). The average lives in :attr:`module`, a frozen copy of the model in
    eval mode that can be used for inference directly.

    Create it before converting BatchNorm layers to SyncBatchNorm; a DataParallel / DDP wrapper
    is looked through.

    Args:
        model: the model being trained.
        decay: weight of the old average in each update, in [0, 1].
        device: where to keep the average (e.g. ``'cpu'`` to save accelerator memory); None keeps
            it on the model's device.

    Attributes:
        module: the averaged model.
        num_updates: number of :meth:`update` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999,
                 device: Optional[Union[str, torch.device]] = None):
        if not 0. <= decay <= 1.:
            raise ValueError(f"decay must be in [0, 1], got {decay}.")
        self.decay = float(decay)
        self.device = None if device is None else torch.device(device)
        self.module = copy.deepcopy(unwrap_parallel(model))
        if getattr(self.module, "_compiled_call_impl", None) is not None:
            # A module compiled in place would still call the original's compiled forward.
            self.module._compiled_call_impl = None
        self.module.eval().requires_grad_(False)
        if self.device is not None:
            self.module.to(self.device)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        current = unwrap_parallel(model).state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if self.device is not None:
                value = value.to(self.device)
            if average.is_floating_point():
                average.mul_(self.decay).add_(value, alpha=1. - self.decay)
            else:
                average.copy_(value)
        self.num_updates += 1

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context in which ``model`` holds the averaged weights; its own are restored afterwards.

        The weights are copied in place, so optimizers and wrappers around ``model`` stay valid.
        """
        model = unwrap_parallel(model)
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            model.load_state_dict(self.module.state_dict())
            yield model
        finally:
            model.load_state_dict(backup)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The averaged weights: a ``state_dict`` that the model itself can load."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Restore averaged weights saved by :meth:`state_dict`."""
        self.module.load_state_dict(state_dict)
