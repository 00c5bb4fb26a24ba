"""How a batch is fed into a plain ``nn.Module``: the feed definition of ``ModelWrap``."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional, Tuple

import torch
from torch import nn


def move_to_device(data: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in a (nested) batch structure to ``device``.

    Args:
        data: a tensor, or a list / tuple / dict holding tensors (nested any depth). Any other
            object with a ``to`` method (a ``PackedSequence``, a tokenizer's ``BatchEncoding``,
            a user's batch class) is moved with ``data.to(device)``; anything else is kept as it is.
        device: the target device.
        non_blocking: passed to ``Tensor.to`` (useful with pinned memory).

    Returns:
        The same structure with the tensors on ``device``.
    """
    if isinstance(data, torch.Tensor):
        # Per batch, Tensor.to costs a few times more than a device comparison (and more still
        # with a keyword), even when it has nothing to do and returns the tensor itself.
        if data.device == device:
            return data
        return data.to(device, non_blocking=True) if non_blocking else data.to(device)
    if isinstance(data, (list, tuple)):
        moved = [move_to_device(d, device, non_blocking) for d in data]
        return moved if type(data) is list else type(data)(moved)
    if isinstance(data, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in data.items()}
    to = getattr(data, "to", None)
    if callable(to) and not isinstance(data, (str, bytes, type)):
        return to(device)
    return data


class AbstractModelFeedDefinition(ABC):
    """Feeds batches into a plain ``nn.Module`` for ``ModelWrap``.

    Implement :meth:`get_loss` and :meth:`get_predictions`; :meth:`get_loss_eval` defaults to
    :meth:`get_loss`. ``model`` is the module as the TrainLoop runs it (possibly wrapped in
    DataParallel / DistributedDataParallel), so call ``model(...)`` for the forward pass.
    """

    @abstractmethod
    def get_loss(self, model: nn.Module, batch_data: Any, criterion: Any, device: torch.device):
        """Loss of one training batch: a scalar tensor or a ``MultiLoss``."""

    def get_loss_eval(self, model: nn.Module, batch_data: Any, criterion: Any, device: torch.device):
        """Loss of one evaluation batch; defaults to :meth:`get_loss`."""
        return self.get_loss(model, batch_data, criterion, device)

    @abstractmethod
    def get_predictions(self, model: nn.Module, batch_data: Any,
                        device: torch.device) -> Tuple[Any, Any, Optional[dict]]:
        """``(y_pred, y_true, metadata)`` of one batch; metadata is a dict or None."""


class BasicModelFeedDefinition(AbstractModelFeedDefinition):
    """Feed for batches shaped ``(*inputs, target)``: ``criterion(model(*inputs), target)``."""

    def get_loss(self, model, batch_data, criterion, device):
        if len(batch_data) == 2:  # (input, target): the common case, without a list per batch
            x, target = batch_data
            output = model(x if isinstance(x, torch.Tensor) and x.device == device
                           else move_to_device(x, device))
        else:
            *inputs, target = batch_data
            output = model(*[move_to_device(x, device) for x in inputs])
        return criterion(output, target if target.device == device else target.to(device))

    def get_predictions(self, model, batch_data, device):
        *inputs, target = batch_data
        return model(*[move_to_device(item, device) for item in inputs]), target, None
