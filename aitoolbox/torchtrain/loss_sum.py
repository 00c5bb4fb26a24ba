"""``LossSum``: a batch loss reported as a sum and the number of items it sums over.

Returned by a model's ``get_loss`` for ``fit(..., loss_weighting='tokens')``: the loop then
back-propagates the sums and divides the accumulated gradients once, before the optimizer step,
by the number of items of the whole window (over every rank), so that the update is the one of
a single batch holding all of them, whatever the number of items in each batch (padding,
variable sequence lengths).
"""
from __future__ import annotations

from typing import NamedTuple, Union

import torch

from aitoolbox.torchtrain.multi_loss_optim import MultiLoss


class LossSum(NamedTuple):
    """A batch loss as ``(loss_sum, num_items)``."""

    #: the loss summed over the batch's items (e.g. ``cross_entropy(..., reduction='sum',
    #: ignore_index=pad)``): a scalar tensor, or a ``MultiLoss`` of sums over the same items
    loss_sum: Union[torch.Tensor, MultiLoss]
    #: how many items ``loss_sum`` adds up (e.g. the non-padding tokens): an int or a scalar
    #: tensor (kept on its device: no synchronisation per batch)
    num_items: Union[int, torch.Tensor]

    def mean(self) -> Union[torch.Tensor, MultiLoss]:
        """The batch's mean loss per item (what the training history records per batch)."""
        return self.loss_sum / self.num_items
