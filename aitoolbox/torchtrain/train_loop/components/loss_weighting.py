"""Gradient accumulation weighted by what each batch's loss averages over.

``fit(..., loss_weighting=...)`` decides how the batches of one accumulation window (on every
rank) combine into one update:

* ``'batches'`` (default): every batch weighs the same; the window's gradient is the mean of its
  batches' gradients. On a loader with a length this is the loop's plain path (each loss divided
  by the window's size before its backward pass), untouched by this module.
* ``'samples'``: a batch's mean loss weighs by its number of samples ``n_b``; the update is that
  of one batch made of all the window's samples: ``g = sum_b n_b g_b / sum_b n_b``.
* ``'tokens'``: ``get_loss`` returns a :class:`~aitoolbox.torchtrain.loss_sum.LossSum`
  ``(s_b, c_b)``; ``g = sum_b grad(s_b) / sum_b c_b``: the mean over every item of the window.

The sums run over the window's batches on all ranks. No window is looked ahead: each batch's
loss is back-propagated scaled by its own weight and the accumulated gradients are multiplied
once, just before the optimizer step (and before ``on_after_gradient_update``, where gradients
are clipped), by ``prescale * world_size / sum of the weights`` - one scalar all-reduce per step
under DDP (DDP itself averages the gradients over the ``world_size`` ranks).

The same :class:`WindowWeighting` serves a loader without a length with ``'batches'``: each
loss is divided by ``grad_accumulation`` (as a full window of the plain path) and a last,
shorter window is corrected by ``grad_accumulation / its size`` before the step.
"""
from __future__ import annotations

from typing import Any, List

import torch

from aitoolbox.torchtrain.loss_sum import LossSum
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.torchtrain.train_loop.components.evaluation import batch_size_of

#: the values of ``fit(loss_weighting=...)``
LOSS_WEIGHTINGS = ("batches", "samples", "tokens")


def check_loss_weighting(loss_weighting: Any) -> None:
    """Raise a clear error for an unknown ``loss_weighting``."""
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {list(LOSS_WEIGHTINGS)}, got {loss_weighting!r}: "
                         "'batches' weighs every batch the same, 'samples' by its number of samples, "
                         "'tokens' by the item count of the LossSum(loss_sum, num_items) that get_loss returns.")


class WindowWeighting:
    """Scales each batch's loss by its weight and the window's gradients once before the step.

    Args:
        loop: the TrainLoop (its strategy set up: rank and world size known).
        loss_weighting: one of :data:`LOSS_WEIGHTINGS`.
    """

    def __init__(self, loop, loss_weighting: str):
        self.mode = loss_weighting
        self.weighted = loss_weighting != "batches"
        self.grad_accumulation = loop.grad_accumulation
        self.prescale = 1 if self.weighted else loop.grad_accumulation
        self.world_size = loop.strategy.world_size  # of this run's ranks (DDP, FSDP); 1 on one device
        self.strategy = loop.strategy
        seen, self.params = set(), []
        for optimizer in loop.optimizers:
            for group in getattr(optimizer, "param_groups", ()):
                for param in group["params"]:
                    if id(param) not in seen:
                        seen.add(id(param))
                        self.params.append(param)

    def forward_backward(self, loop, batch_data):
        """The loop's ``_forward_backward`` on this path: weighted loss, backward, scale at the step."""
        from aitoolbox.torchtrain.train_loop.components import validation

        if loop._check_empty_batches:
            validation.require_batch_samples(batch_data, "train_loader", loop.iteration, loop.epoch)
        loss = loop._calculate_batch_loss(batch_data)
        to_backward, batch_mean, weight = self.split(loss, batch_data)
        loop.loss_batch_accum.append(batch_mean.detach())
        if self.weighted:
            loop.loss_weight_accum.append(weight)
        for optimizer_idx in loop._optimizer_indices:
            loop._backward_pass(to_backward, optimizer_idx)
        if loop.should_execute_optimizer_update():
            self.close_window(loop)
        return to_backward

    def split(self, loss, batch_data):
        """``(loss to back-propagate, the batch's mean loss, its weight)``."""
        if self.mode == "tokens":
            if not isinstance(loss, LossSum):
                raise TypeError(f"loss_weighting='tokens' needs get_loss to return LossSum(loss_sum, num_items) "
                                f"(aitoolbox.torchtrain.LossSum), got {type(loss).__name__}: return the loss "
                                "summed over the batch's items with their count, or use loss_weighting='samples'.")
            return loss.loss_sum, loss.mean(), loss.num_items
        if isinstance(loss, LossSum):
            raise TypeError(f"get_loss returned a LossSum, which loss_weighting='{self.mode}' does not take: pass "
                            "fit(..., loss_weighting='tokens').")
        if self.mode == "samples":
            num_samples = batch_size_of(batch_data)
            return loss * num_samples, loss, num_samples
        return (loss / self.grad_accumulation if self.grad_accumulation > 1 else loss), loss, 1

    def close_window(self, loop) -> None:
        """Multiply the accumulated gradients by ``prescale * world_size / global window weight``."""
        start = loop.iteration - loop.iteration % self.grad_accumulation
        if self.weighted:
            local = _total(loop.loss_weight_accum[start:loop.iteration + 1])
        else:
            local = loop.iteration + 1 - start
        if self.world_size > 1:
            device = self.params[0].device if self.params else loop.device
            local = torch.as_tensor(local, dtype=torch.float64, device=device)
            total = self.strategy.sum_over_ranks(local)  # one scalar all-reduce
        else:
            total = local
        factor = self.prescale * self.world_size / total
        if isinstance(factor, float) and factor == 1.0:
            return  # a full window of 'batches': the losses were scaled exactly already
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            if isinstance(factor, torch.Tensor):
                factor = factor.to(grads[0].device)
            torch._foreach_mul_(grads, factor)


def _total(weights: List) -> Any:
    """Sum of weights that are ints or scalar tensors (tensors stay on their device)."""
    total = 0
    for weight in weights:
        total = total + (weight.detach() if isinstance(weight, torch.Tensor) else weight)
    return total


def weighted_mean(losses: List, weights: List):
    """``sum_b l_b w_b`` and ``sum_b w_b`` in float64 of batch mean losses (tensors or ``MultiLoss``)."""
    if isinstance(losses[0], MultiLoss):
        parts = {name: weighted_mean([loss[name] for loss in losses], weights) for name in losses[0]}
        return (MultiLoss({n: p[0] for n, p in parts.items()}, losses[0].loss_optimizer_map),
                next(iter(parts.values()))[1])
    device = losses[0].device
    w = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=device).reshape(()) for x in weights])
    return (torch.stack(losses).double().reshape(-1) * w).sum(), w.sum()
