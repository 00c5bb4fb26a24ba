"""The epoch's batch losses as Python floats, each converted once.

The loop records every batch loss as a 0-d tensor in ``loop.loss_batch_accum`` (a CUDA run never
synchronises for it). Two readers need their values: the progress display (a running mean at
each of its updates) and the end of the epoch (the mean training loss, ``accumulated_loss``).
:class:`LossValues` converts the losses that arrived since its last call and keeps the floats,
so each loss is converted once per epoch whoever asks: on the CPU one ``float()`` per loss
(cheaper than stacking tensors), on a device one stacked device-to-host copy per call.

The mean is :func:`math.fsum` over the float64 values divided by their number: the correctly
rounded mean of the float32 losses, whatever their order.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch


def losses_to_floats(losses) -> List[float]:
    """Python floats of a list of 0-d loss tensors (one copy for a device's)."""
    if not losses:
        return []
    if losses[0].device.type == "cpu":
        return list(map(float, losses))
    return torch.stack(losses).double().tolist()


def mean_of_floats(values: List[float]) -> float:
    """The correctly rounded mean of ``values``."""
    return math.fsum(values) / len(values)


class LossValues:
    """Floats of a list of 0-d loss tensors that only grows (``loop.loss_batch_accum``).

    A different list object (a new epoch, a loaded checkpoint), or one that got shorter, starts
    the conversion again from its first loss.
    """

    def __init__(self):
        self._source: Optional[list] = None
        self.values: List[float] = []

    def update(self, losses: list) -> List[float]:
        """The floats of every loss in ``losses`` (converting only the new ones)."""
        if losses is not self._source or len(losses) < len(self.values):
            self._source, self.values = losses, []
        if len(losses) > len(self.values):
            self.values.extend(losses_to_floats(losses[len(self.values):]))
        return self.values

    def mean(self, losses: list) -> Optional[float]:
        """Mean of ``losses`` (None when empty)."""
        values = self.update(losses)
        return mean_of_floats(values) if values else None
