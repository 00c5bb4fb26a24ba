"""The model contract: how the TrainLoop gets a loss and predictions out of a model.

* :class:`TTModel` - an ``nn.Module`` that also implements ``get_loss`` and ``get_predictions``.
* :class:`TTBasicModel` - a ``TTModel`` with both ready-made for ``(*inputs, target)`` batches.
* :class:`TTBasicMultiGPUModel` / :class:`MultiGPUModelWrap` - the loss computed inside ``forward``,
  so that under DataParallel each GPU computes its share of it.
* :class:`ModelWrap` - a plain ``nn.Module`` plus an
  :class:`~aitoolbox.torchtrain.data.batch_model_feed_defs.AbstractModelFeedDefinition`.
* A plain ``nn.Module`` is accepted too and fed like ``TTBasicModel``.
"""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from aitoolbox.torchtrain.data.batch_model_feed_defs import (
    AbstractModelFeedDefinition, BasicModelFeedDefinition, move_to_device)


class TTModel(nn.Module, ABC):
    """``nn.Module`` that knows how to compute its own loss and predictions from a batch.

    Implement ``forward``, :meth:`get_loss` and :meth:`get_predictions` (both abstract: a subclass
    lacking one cannot be instantiated, as in aitoolbox 1.8). Inside them call ``self(...)`` for
    the forward pass: under DataParallel / DistributedDataParallel the call goes through the
    wrapper, so that batches are scattered and gradients synchronised.
    """

    def __init__(self):
        super().__init__()
        #: aitoolbox 1.8's list of attributes to copy onto a DP / DDP wrapper. Kept for scripts
        #: that fill it in; not needed here: the wrappers read every attribute of the model live.
        self.transfer_model_attributes: List[str] = []

    @abstractmethod
    def get_loss(self, batch_data: Any, criterion: Any, device: torch.device):
        """Loss of one training batch.

        Args:
            batch_data: one batch as the train loader yields it.
            criterion: the TrainLoop's criterion.
            device: the device the model is on.

        Returns:
            A scalar loss tensor or a ``MultiLoss``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement get_loss(batch_data, "
                                  "criterion, device), or subclass TTBasicModel.")

    def get_loss_eval(self, batch_data: Any, criterion: Any, device: torch.device):
        """Loss of one evaluation batch; defaults to :meth:`get_loss`."""
        return self.get_loss(batch_data, criterion, device)

    @abstractmethod
    def get_predictions(self, batch_data: Any, device: torch.device) -> Tuple[Any, Any, Optional[dict]]:
        """Predictions of one batch.

        Args:
            batch_data: one batch as the loader yields it.
            device: the device the model is on.

        Returns:
            ``(y_pred, y_true, metadata)``; metadata is a dict (of lists or tensors) or None.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement get_predictions(batch_data, "
                                  "device), or subclass TTBasicModel.")


class TTBasicModel(TTModel):
    """``TTModel`` with ``get_loss`` / ``get_predictions`` for batches shaped ``(*inputs, target)``.

    ``get_loss`` moves the inputs and the target to ``device`` and returns
    ``criterion(self(*inputs), target)``; ``get_predictions`` moves only the inputs and returns
    ``(self(*inputs), target, {})``. Batch elements that are not tensors (or lists / tuples / dicts
    of them) are moved with their own ``.to(device)`` when they have one.
    """

    _feed = BasicModelFeedDefinition()

    def get_loss(self, batch_data, criterion, device):
        return self._feed.get_loss(self, batch_data, criterion, device)

    def get_predictions(self, batch_data, device):
        y_pred, y_true, _ = self._feed.get_predictions(self, batch_data, device)
        return y_pred, y_true, {}  # aitoolbox 1.8's TTBasicModel: an empty metadata dict, not None


class ModelWrap:
    """A plain ``nn.Module`` together with the definition of how batches are fed into it.

    Args:
        model: the network.
        batch_model_feed_def: computes the loss and the predictions from a batch.
    """

    def __init__(self, model: nn.Module, batch_model_feed_def: AbstractModelFeedDefinition):
        if not isinstance(model, nn.Module):
            raise TypeError(f"ModelWrap model must be a torch.nn.Module, got {type(model).__name__}.")
        if not isinstance(batch_model_feed_def, AbstractModelFeedDefinition):
            raise TypeError("ModelWrap batch_model_feed_def must be an AbstractModelFeedDefinition "
                            f"instance, got {type(batch_model_feed_def).__name__}.")
        self.model = model
        self.batch_model_feed_def = batch_model_feed_def


class TTBasicMultiGPUModel(TTBasicModel):
    """``TTBasicModel`` whose loss is computed inside ``forward``, on every GPU (the original's class).

    ``get_loss`` calls ``self(*inputs, targets=targets, criterion=criterion)``: under
    ``gpu_mode='dp'`` DataParallel scatters the inputs *and the targets*, and each replica returns
    its loss, so that only the losses (not the outputs) are gathered on the first GPU. The
    per-replica losses are combined into the batch's loss, each weighted by its share of the batch.
    ``get_predictions`` is ``TTBasicModel``'s (``forward`` without a criterion). ``forward`` must
    follow this signature::

        def forward(self, *inputs, targets=None, criterion=None):
            predictions = ...
            return criterion(predictions, targets) if criterion is not None else predictions
    """

    def get_loss(self, batch_data, criterion, device):
        *inputs, targets = [move_to_device(data, device) for data in batch_data]
        loss = self(*inputs, targets=targets, criterion=criterion)
        return combine_replica_losses(loss, targets)


def combine_replica_losses(loss, targets):
    """One loss from the per-replica losses that DataParallel gathered into a vector.

    Replica ``i`` saw the ``i``-th chunk of the batch (``targets.chunk(n)``); its loss is weighted
    by the chunk's size. A scalar loss (one device) is returned as it is.
    """
    if not isinstance(loss, torch.Tensor) or loss.dim() != 1 or not isinstance(targets, torch.Tensor):
        return loss
    sizes = [len(chunk) for chunk in targets.chunk(len(loss))]
    if len(sizes) != len(loss):
        return loss.mean()
    weights = torch.tensor(sizes, dtype=loss.dtype, device=loss.device)
    return (loss * weights).sum() / weights.sum()


class MultiGPUModelWrap(TTBasicMultiGPUModel):
    """Any ``nn.Module`` made a :class:`TTBasicMultiGPUModel`: the loss is computed on the GPUs.

    Args:
        model: a module whose ``forward`` returns predictions (batches ``(*inputs, target)``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"MultiGPUModelWrap model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model

    def forward(self, *input_data, targets=None, criterion=None):
        """The wrapped model's predictions, or ``criterion(predictions, targets)`` when given a criterion."""
        predictions = self.model(*input_data)
        if criterion is not None:
            return criterion(predictions, targets)
        return predictions


class ModelFeed:
    """Uniform ``get_loss`` / ``get_loss_eval`` / ``get_predictions`` over every model kind.

    The TrainLoop talks to this object only. ``module`` is what runs the forward pass: the
    user's module, or its DataParallel / DDP wrapper.

    Args:
        module: the (possibly wrapped) module that runs the forward pass.
        feed_def: how batches are fed; ``None`` when ``module`` is itself a ``TTModel`` (or a
            wrapper exposing the TTModel methods).
    """

    def __init__(self, module: nn.Module, feed_def: Optional[AbstractModelFeedDefinition] = None):
        self.module = module
        if feed_def is None:
            self.get_loss = module.get_loss
            self.get_loss_eval = module.get_loss_eval
            self.get_predictions = module.get_predictions
        else:
            # partial, not a lambda: one Python frame less per batch on the hot path
            self.get_loss = functools.partial(feed_def.get_loss, module)
            self.get_loss_eval = functools.partial(feed_def.get_loss_eval, module)
            self.get_predictions = functools.partial(feed_def.get_predictions, module)


def split_model(model) -> Tuple[nn.Module, Optional[AbstractModelFeedDefinition]]:
    """The ``nn.Module`` and the feed definition (None for a TTModel) of any accepted model.

    Raises:
        TypeError: the model is neither a TTModel, a ModelWrap nor an nn.Module.
    """
    if isinstance(model, ModelWrap):
        return model.model, model.batch_model_feed_def
    if isinstance(model, TTModel):
        return model, None  # get_loss / get_predictions are abstract: the model implements them
    if isinstance(model, nn.Module):
        if hasattr(model, "module") and isinstance(getattr(model, "module"), TTModel):
            return model, None  # a TTDataParallel / TTDistributedDataParallel built by the user
        return model, BasicModelFeedDefinition()
    raise TypeError(f"model must be a TTModel, a ModelWrap or a torch.nn.Module, got "
                    f"{type(model).__name__}.")
