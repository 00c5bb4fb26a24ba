"""Base classes of schedulers for any field of an optimizer's param groups.

A param-group scheduler sets ``param_group[param_group_field]`` (``'lr'``, ``'weight_decay'``,
``'momentum'``, ...) of every param group from the number of optimizer updates done so far. It
is a TrainLoop callback that steps after every real optimizer update (never on an update that
AMP's GradScaler skipped), and it can also be used in a hand-written loop: ``attach`` it to an
optimizer and call ``step()`` (stateful) or ``step_update(num_updates)`` (stateless) after each
``optimizer.step()``.

Each group's value before scheduling is kept in the group as ``initial_<field>`` (like
``initial_lr`` of torch's schedulers), so it is saved with the optimizer's state.

To write a scheduler, subclass one of the bases and implement ``get_updated_values``.
"""
from __future__ import annotations

from numbers import Number
from typing import Iterable, List, Optional, Union

import torch

from aitoolbox.torchtrain.schedulers.basic import AbstractScheduler

UpdatedValues = Union[None, Number, Iterable[Number]]


class ParamGroupScheduler(AbstractScheduler):
    """Stateless param-group scheduler: the value is a function of the number of updates.

    In a TrainLoop the number of updates is the loop's count of optimizer steps
    (``train_loop_obj.num_optimizer_steps``), so the scheduler itself holds no state.

    Args:
        param_group_field: the param-group key to schedule.
        optimizer_idx: which optimizer of a ``MultiOptimizer`` to schedule (None: the first).
        execution_order: callback execution order.
    """

    def __init__(self, param_group_field: str = "lr", optimizer_idx: Optional[int] = None,
                 execution_order: int = 0):
        super().__init__(type(self).__name__, execution_order=execution_order)
        self.param_group_field = param_group_field
        self.optimizer_idx = optimizer_idx
        self.optimizer: Optional[torch.optim.Optimizer] = None

    @property
    def initial_field(self) -> str:
        """The param-group key holding each group's unscheduled value."""
        return f"initial_{self.param_group_field}"

    def get_updated_values(self, num_updates: int) -> UpdatedValues:
        """The field's values after ``num_updates`` optimizer updates.

        Args:
            num_updates: optimizer updates done so far.

        Returns:
            One value for every param group, a list with a value per group, or None to leave the
            groups unchanged.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement get_updated_values(num_updates).")

    def attach(self, optimizer: torch.optim.Optimizer, num_updates: int = 0) -> "ParamGroupScheduler":
        """Schedule ``optimizer``: remember the initial values and set those for ``num_updates``.

        Returns:
            self.

        Raises:
            KeyError: a param group has no ``param_group_field``.
        """
        for idx, group in enumerate(optimizer.param_groups):
            if self.param_group_field not in group:
                raise KeyError(f"param group {idx} of {type(optimizer).__name__} has no "
                               f"{self.param_group_field!r} field to schedule.")
            group.setdefault(self.initial_field, group[self.param_group_field])
        self.optimizer = optimizer
        self.step_update(num_updates)
        return self

    def base_values(self) -> List[float]:
        """Each param group's initial (unscheduled) value."""
        return [group[self.initial_field] for group in self.optimizer.param_groups]

    def step_update(self, num_updates: int) -> None:
        """Set the field of every param group to its value after ``num_updates`` updates."""
        values = self.get_updated_values(num_updates)
        if values is None:
            return
        groups = self.optimizer.param_groups
        values = [values] * len(groups) if isinstance(values, Number) else list(values)
        if len(values) != len(groups):
            raise ValueError(f"{type(self).__name__}.get_updated_values returned {len(values)} values for "
                             f"{len(groups)} param groups.")
        for group, value in zip(groups, values):
            group[self.param_group_field] = value

    def get_last_values(self) -> List[float]:
        """The field's current value in every param group."""
        return [group[self.param_group_field] for group in self.optimizer.param_groups]

    def loop_optimizer(self) -> torch.optim.Optimizer:
        """The TrainLoop's optimizer that this scheduler schedules."""
        optimizers = self.train_loop_obj.optimizers
        idx = self.optimizer_idx or 0
        if idx >= len(optimizers):
            raise ValueError(f"optimizer_idx={idx} but the TrainLoop has {len(optimizers)} optimizer(s).")
        return optimizers[idx]

    def on_train_loop_registration(self):
        self.attach(self.loop_optimizer(), self.train_loop_obj.num_optimizer_steps)

    def on_after_optimizer_step(self):
        if not self.train_loop_obj.optimizer_step_skipped:
            self.step_update(self.train_loop_obj.num_optimizer_steps)


class StatefulParamGroupScheduler(ParamGroupScheduler):
    """Param-group scheduler that counts the updates itself: call :meth:`step` after each one.

    The count is the scheduler's state (saved in checkpoints); on loading it the values are set
    again, so a resumed run continues the schedule exactly.

    Args:
        param_group_field: the param-group key to schedule.
        optimizer_idx: which optimizer of a ``MultiOptimizer`` to schedule (None: the first).
        execution_order: callback execution order.

    Attributes:
        num_updates: optimizer updates counted so far.
    """

    def __init__(self, param_group_field: str = "lr", optimizer_idx: Optional[int] = None,
                 execution_order: int = 0):
        super().__init__(param_group_field, optimizer_idx, execution_order)
        self.num_updates = 0

    def attach(self, optimizer: torch.optim.Optimizer, num_updates: Optional[int] = None):
        """Schedule ``optimizer`` from the scheduler's own count (``num_updates`` overrides it)."""
        if num_updates is not None:
            self.num_updates = num_updates
        return super().attach(optimizer, self.num_updates)

    def step(self) -> None:
        """Count one more update and set the values for it."""
        self.num_updates += 1
        self.step_update(self.num_updates)

    def on_train_loop_registration(self):
        self.attach(self.loop_optimizer())

    def on_after_optimizer_step(self):
        if not self.train_loop_obj.optimizer_step_skipped:
            self.step()

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = state["num_updates"]
        if self.optimizer is not None:
            self.step_update(self.num_updates)
