"""Helpers of evaluation and prediction: batch sizes, weighted loss sums, metadata, RNG isolation."""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Tuple

import torch

from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.torchtrain.train_loop.components.data_loading import (
    loader_generator_states, set_loader_generator_states)


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: the leading dimension of its first tensor.

    Works for tensors and (nested) lists, tuples and dicts of them; a batch without any tensor
    counts by its length.
    """
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() > 0 else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        if isinstance(item, (torch.Tensor, list, tuple, dict)):
            size = batch_size_of(item)
            if size:
                return size
    return len(batch) if hasattr(batch, "__len__") else 1


def loss_terms(loss, batch: Any) -> Tuple[Any, int, int]:
    """``(loss, multiplier, count)`` of one evaluation batch for :func:`weighted_sum`.

    A mean loss weighs by the batch's number of samples; a ``LossSum`` (``loss_weighting='tokens'``)
    adds its sum as it is and counts its items, so that the result is the mean over all items.
    """
    from aitoolbox.torchtrain.loss_sum import LossSum

    if isinstance(loss, LossSum):
        return loss.loss_sum, 1, int(loss.num_items)
    num_samples = batch_size_of(batch)
    return loss, num_samples, num_samples


def weighted_sum(total, loss, num_samples: int):
    """``total + loss * num_samples`` in float64 (``total`` None at the first batch)."""
    if isinstance(loss, MultiLoss):
        if total is None:
            return loss.map_values(lambda v: v.detach().double() * num_samples)
        return MultiLoss({k: total[k] + loss[k].detach().double() * num_samples for k in loss},
                         loss.loss_optimizer_map)
    weighted = loss.detach().double() * num_samples
    return weighted if total is None else total + weighted


def merge_metadata(collected: Optional[dict], batch_meta: Optional[dict]) -> Optional[dict]:
    """Append one batch's metadata dict to the collected one (lists extended, tensors listed)."""
    if batch_meta is None:
        return collected
    collected = {} if collected is None else collected
    for key, value in batch_meta.items():
        bucket = collected.setdefault(key, [])
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            bucket.extend(value.detach().cpu().unbind(0))
        elif isinstance(value, (list, tuple)):
            bucket.extend(value)
        else:
            bucket.append(value)
    return collected


@contextlib.contextmanager
def rng_fork(loader, device: torch.device):
    """Run the body without disturbing the RNG streams that training draws from.

    Iterating a DataLoader draws a seed from torch's global generator (or the loader's own), so
    without this fork an evaluation would change the training run that follows it.
    """
    devices = [device] if device.type == "cuda" else []
    generator_states = loader_generator_states(loader)
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            set_loader_generator_states(loader, generator_states)
