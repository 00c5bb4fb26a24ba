"""Cosine learning-rate schedule with linear warmup, a cooldown floor and k-decay."""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from aitoolbox.torchtrain.schedulers.param_schedulers import StatefulParamGroupScheduler
from aitoolbox.torchtrain.train_loop.components.streams import has_length


class CosineLrScheduler(StatefulParamGroupScheduler):
    """Cosine annealing of the learning rate (without restarts), stepped after every update.

    With ``W`` warmup and ``C`` cooldown epochs of ``S`` optimizer updates each, ``T`` updates in
    all, ``N = T - (W + C) * S`` cosine updates, a group's initial lr ``lr_max`` and ``t``
    updates done, the lr of the next update is:

    * warmup, ``t < W*S``: ``start + t * (lr_max - start) / (W*S)``, rising in equal increments;
    * cosine, ``t' = t - W*S < N``: ``lr_min + (lr_max - lr_min) * (1 + cos(pi * t'^k / N^k)) / 2``;
    * cooldown and after: ``lr_min``.

    ``k = k_decay`` > 1 keeps the lr high for longer, < 1 lowers it sooner. ``T`` and ``S`` come
    from the TrainLoop (``get_num_training_steps()`` and ``ceil(len(train_loader) /
    grad_accumulation)``) unless given.

    Args:
        num_warmup_epochs: epochs of linear warmup.
        warmup_starting_lr: lr at the start of warmup, for every group.
        lr_min: the lr that the cosine decays to and cooldown holds, for every group.
        min_lr_ratio: ``lr_min`` as a fraction of each group's initial lr (overrides ``lr_min``).
        num_cooldown_epochs: epochs at ``lr_min`` at the end.
        k_decay: the k of k-decay (1: plain cosine).
        warmup_starting_lr_ratio: the warmup start as a fraction of each group's initial lr
            (overrides ``warmup_starting_lr``).
        num_training_steps: optimizer updates of the whole run; None: from the TrainLoop.
        num_update_steps_per_epoch: optimizer updates per epoch; None: from the TrainLoop.
        optimizer_idx: which optimizer of a ``MultiOptimizer`` to schedule (None: the first).
        execution_order: callback execution order.

    Raises:
        ValueError: invalid arguments, or warmup and cooldown leaving no update for the cosine.
    """

    def __init__(self, num_warmup_epochs: int = 0, warmup_starting_lr: float = 1e-6, lr_min: float = 1e-6,
                 min_lr_ratio: Optional[float] = None, num_cooldown_epochs: int = 0, k_decay: float = 1.0,
                 warmup_starting_lr_ratio: Optional[float] = None, num_training_steps: Optional[int] = None,
                 num_update_steps_per_epoch: Optional[int] = None, optimizer_idx: Optional[int] = None,
                 execution_order: int = 0):
        super().__init__("lr", optimizer_idx, execution_order)
        if num_warmup_epochs < 0 or num_cooldown_epochs < 0:
            raise ValueError("num_warmup_epochs and num_cooldown_epochs must be >= 0, got "
                             f"{num_warmup_epochs} and {num_cooldown_epochs}.")
        if k_decay <= 0:
            raise ValueError(f"k_decay must be > 0, got {k_decay}.")
        self.num_warmup_epochs, self.num_cooldown_epochs = num_warmup_epochs, num_cooldown_epochs
        self.warmup_starting_lr, self.warmup_starting_lr_ratio = warmup_starting_lr, warmup_starting_lr_ratio
        self.lr_min, self.min_lr_ratio, self.k_decay = lr_min, min_lr_ratio, k_decay
        self.num_training_steps = num_training_steps
        self.num_update_steps_per_epoch = num_update_steps_per_epoch
        self.total_steps = self.steps_per_epoch = None

    def attach(self, optimizer: torch.optim.Optimizer, num_updates: Optional[int] = None):
        self._resolve_steps()
        return super().attach(optimizer, num_updates)

    def _resolve_steps(self) -> None:
        loop = self.train_loop_obj
        if loop is None and None in (self.num_training_steps, self.num_update_steps_per_epoch):
            raise ValueError("CosineLrScheduler outside a TrainLoop needs num_training_steps and "
                             "num_update_steps_per_epoch.")
        self.total_steps = self.num_training_steps or loop.get_num_training_steps()
        if self.num_update_steps_per_epoch is None and not has_length(loop.train_loader):
            raise ValueError("CosineLrScheduler: train_loader has no length (a stream), so the updates per "
                             "epoch are unknown: pass num_update_steps_per_epoch=... (and num_training_steps=...).")
        self.steps_per_epoch = (self.num_update_steps_per_epoch
                                or math.ceil(len(loop.train_loader) / loop.grad_accumulation))
        if self.cosine_steps < 1:
            raise ValueError(f"CosineLrScheduler: {self.num_warmup_epochs} warmup + {self.num_cooldown_epochs} "
                             f"cooldown epochs of {self.steps_per_epoch} updates leave no update for the cosine "
                             f"in a run of {self.total_steps} updates; lower num_warmup_epochs or "
                             "num_cooldown_epochs.")

    @property
    def warmup_steps(self) -> int:
        """Optimizer updates of the warmup."""
        return self.num_warmup_epochs * self.steps_per_epoch

    @property
    def cosine_steps(self) -> int:
        """Optimizer updates of the cosine part."""
        return self.total_steps - (self.num_warmup_epochs + self.num_cooldown_epochs) * self.steps_per_epoch

    def get_updated_values(self, num_updates: int) -> List[float]:
        return [self.lr_at(num_updates, lr_max) for lr_max in self.base_values()]

    def lr_at(self, num_updates: int, lr_max: float) -> float:
        """The lr after ``num_updates`` updates for a group whose initial lr is ``lr_max``."""
        lr_min = self.lr_min if self.min_lr_ratio is None else self.min_lr_ratio * lr_max
        if num_updates < self.warmup_steps:
            start = (self.warmup_starting_lr if self.warmup_starting_lr_ratio is None
                     else self.warmup_starting_lr_ratio * lr_max)
            return start + num_updates * (lr_max - start) / self.warmup_steps
        t = num_updates - self.warmup_steps
        if t < self.cosine_steps:
            k = self.k_decay
            return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t ** k / self.cosine_steps ** k))
        return lr_min

    def get_last_lr(self) -> List[float]:
        """The learning rates set last (as torch's schedulers name it)."""
        return self.get_last_values()
