"""Warmup schedules, stepped after every real optimizer update.

The learning rate rises linearly from 0 to its initial value over ``num_warmup_steps`` updates,
then stays constant, decays linearly, or follows a cosine (optionally with hard restarts).
``num_training_steps=None`` takes the run's number of optimizer updates from the TrainLoop.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from aitoolbox.torchtrain.schedulers.basic import GeneralLRSchedulerCallback


class _WarmupScheduler(GeneralLRSchedulerCallback):
    """A ``LambdaLR`` over optimizer updates built from :meth:`lr_factor`."""

    def __init__(self, num_warmup_steps: int, num_training_steps: Optional[int] = None,
                 optimizer_idx: Optional[int] = None, **kwargs):
        super().__init__(torch.optim.lr_scheduler.LambdaLR, optimizer_idx, step_on="batch", **kwargs)
        if num_warmup_steps < 0:
            raise ValueError(f"num_warmup_steps must be >= 0, got {num_warmup_steps}.")
        self.num_warmup_steps, self.num_training_steps = num_warmup_steps, num_training_steps

    def build_scheduler(self):
        if self.num_training_steps is None:
            self.num_training_steps = self.train_loop_obj.get_num_training_steps()
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor, **self.scheduler_args)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the initial learning rate after ``step`` optimizer updates."""
        if step < self.num_warmup_steps:
            return step / max(1, self.num_warmup_steps)
        return self.decay_factor(self.decay_progress(step))

    def decay_progress(self, step: int) -> float:
        """Fraction of the post-warmup updates done, in [0, 1]."""
        return min(1.0, (step - self.num_warmup_steps) / max(1, self.num_training_steps - self.num_warmup_steps))

    def decay_factor(self, progress: float) -> float:
        """Multiplier after warmup, given the progress; constant by default."""
        return 1.0


class ConstantWithWarmupScheduler(_WarmupScheduler):
    """Linear warmup, then the initial learning rate."""


class LinearWithWarmupScheduler(_WarmupScheduler):
    """Linear warmup, then a linear decay to 0 at ``num_training_steps``."""

    def decay_factor(self, progress: float) -> float:
        return max(0.0, 1.0 - progress)


class CosineWithWarmupScheduler(_WarmupScheduler):
    """Linear warmup, then a cosine decay over ``num_cycles`` cycles (0.5: one half-wave to 0)."""

    def __init__(self, num_warmup_steps: int, num_training_steps: Optional[int] = None,
                 num_cycles: float = 0.5, optimizer_idx: Optional[int] = None, **kwargs):
        super().__init__(num_warmup_steps, num_training_steps, optimizer_idx, **kwargs)
        self.num_cycles = num_cycles

    def decay_factor(self, progress: float) -> float:
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * self.num_cycles * progress)))


class HardRestartsCosineWithWarmupScheduler(_WarmupScheduler):
    """Linear warmup, then ``num_cycles`` cosine decays to 0, each restarting at the initial lr."""

    def __init__(self, num_warmup_steps: int, num_training_steps: Optional[int] = None,
                 num_cycles: float = 1.0, optimizer_idx: Optional[int] = None, **kwargs):
        super().__init__(num_warmup_steps, num_training_steps, optimizer_idx, **kwargs)
        self.num_cycles = num_cycles

    def decay_factor(self, progress: float) -> float:
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((self.num_cycles * progress) % 1.0))))
