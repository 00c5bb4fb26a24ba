"""Several losses and several optimizers in one training step.

``MultiLoss`` is a dict of named loss tensors; ``MultiOptimizer`` a list of optimizers. By
default the i-th loss is back-propagated for the i-th optimizer; a ``loss_optimizer_map`` maps
loss names to optimizer indices explicitly.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, List, Mapping, Optional

import torch


class MultiLoss(dict):
    """Named losses of one batch, mapped to the optimizers that they train.

    Args:
        loss_dict: loss name -> scalar loss tensor.
        loss_optimizer_map: loss name -> index of the optimizer the loss is back-propagated for.
            ``None`` maps the i-th loss to the i-th optimizer.
        retain_graph_until_last: keep the autograd graph alive until the last backward pass, so
            that losses sharing parts of the graph can be back-propagated one after another.
    """

    def __init__(self, loss_dict: Mapping[str, torch.Tensor],
                 loss_optimizer_map: Optional[Mapping[str, int]] = None,
                 retain_graph_until_last: bool = True):
        super().__init__(loss_dict)
        if loss_optimizer_map is None:
            loss_optimizer_map = {name: idx for idx, name in enumerate(self.keys())}
        unknown = set(loss_optimizer_map) - set(self.keys())
        if unknown:
            raise ValueError(f"loss_optimizer_map names losses {sorted(unknown)} that are not in the "
                             f"MultiLoss (losses: {list(self.keys())}).")
        self.loss_optimizer_map = dict(loss_optimizer_map)
        self.retain_graph_until_last = retain_graph_until_last

    def losses_for_optimizer(self, optimizer_idx: int) -> List[str]:
        """Names of the losses back-propagated for the optimizer ``optimizer_idx``."""
        return [name for name in self if self.loss_optimizer_map.get(name) == optimizer_idx]

    def check_optimizers(self, num_optimizers: int) -> None:
        """Raise a clear error when a loss maps to an optimizer that does not exist.

        Raises:
            ValueError: the MultiLoss has more losses than optimizers (or a map index out of range).
        """
        bad = {n: i for n, i in self.loss_optimizer_map.items() if not 0 <= i < num_optimizers}
        if bad:
            raise ValueError(
                f"MultiLoss maps losses to optimizers {bad} but only {num_optimizers} optimizer(s) "
                "are given. Pass a MultiOptimizer with one optimizer per loss, or a "
                "loss_optimizer_map that maps every loss to an existing optimizer index.")

    @property
    def loss_dict(self) -> "MultiLoss":
        """The losses by name (the MultiLoss itself: it is a dict), as in aitoolbox 1.8."""
        return self

    @property
    def optimizer_loss_map(self) -> Dict[int, str]:
        """Optimizer index -> name of (the last) loss back-propagated for it (aitoolbox 1.8)."""
        return {idx: name for name, idx in self.loss_optimizer_map.items()}

    def get_loss_dict(self) -> Dict[str, torch.Tensor]:
        """The losses as a plain ``{name: loss}`` dict."""
        return dict(self)

    def backward(self, optimizer_idx: int, iteration: Optional[int] = None, amp_grad_scaler=None) -> None:
        """Back-propagate the losses mapped to ``optimizer_idx``.

        The TrainLoop calls this once per optimizer and batch. Override it in a subclass for a
        custom backward: the TrainLoop then calls the override with aitoolbox 1.8's arguments.

        Args:
            optimizer_idx: which optimizer's losses to back-propagate.
            iteration: index of the batch within the epoch (for custom logic; unused here).
            amp_grad_scaler: object whose ``scale(loss)`` scales the loss for AMP (a
                ``torch.amp.GradScaler``, or the AMP handler's pass-through when none is in use);
                None: no scaling.
        """
        scale = amp_grad_scaler.scale if amp_grad_scaler is not None else None
        self.backward_with(optimizer_idx, None if scale is None else
                           (lambda loss, retain_graph: scale(loss).backward(retain_graph=retain_graph)))

    def backward_with(self, optimizer_idx: int, backward_fn=None) -> None:
        """Back-propagate the losses mapped to ``optimizer_idx`` with ``backward_fn``.

        Args:
            optimizer_idx: which optimizer's losses to back-propagate.
            backward_fn: ``fn(loss, retain_graph=...)`` doing the backward pass (the AMP handler's);
                defaults to ``loss.backward(retain_graph=...)``.
        """
        # Losses are back-propagated optimizer by optimizer: the last one frees the graph.
        names = list(self.keys())
        last = max(names, key=lambda n: (self.loss_optimizer_map.get(n, -1), names.index(n)))
        for name in self.losses_for_optimizer(optimizer_idx):
            retain = self.retain_graph_until_last and name != last
            if backward_fn is None:
                self[name].backward(retain_graph=retain)
            else:
                backward_fn(self[name], retain_graph=retain)
            self.loss_backward_remaining -= 1

    @property
    def loss_backward_remaining(self) -> int:
        """Losses not back-propagated yet in this batch (aitoolbox 1.8's counter)."""
        return self.__dict__.get("_loss_backward_remaining", len(self))

    @loss_backward_remaining.setter
    def loss_backward_remaining(self, value: int) -> None:
        self.__dict__["_loss_backward_remaining"] = value

    def map_values(self, fn) -> "MultiLoss":
        """A copy (of the same class, with the same attributes) with ``fn`` applied to every loss."""
        new = copy.copy(self)
        dict.update(new, {k: fn(v) for k, v in self.items()})
        return new

    def __truediv__(self, divisor) -> "MultiLoss":
        return self.map_values(lambda v: v / divisor)

    def __mul__(self, factor) -> "MultiLoss":
        return self.map_values(lambda v: v * factor)

    __rmul__ = __mul__

    def detach(self) -> "MultiLoss":
        """A MultiLoss of detached losses."""
        return self.map_values(lambda v: v.detach())

    def item(self) -> Dict[str, float]:
        """The losses as a plain ``{name: number}`` dict (each loss's ``.item()``)."""
        return {k: v.item() for k, v in self.items()}

    def total(self) -> torch.Tensor:
        """Sum of all the losses."""
        return sum(self.values())


#: what an optimizer that does not subclass ``torch.optim.Optimizer`` must provide
_OPTIMIZER_METHODS = ("step", "zero_grad")


def check_optimizer_like(optimizer: Any, what: str) -> None:
    """Accept a ``torch.optim.Optimizer`` or an object with its ``step`` and ``zero_grad`` methods
    (an optimizer wrapper that does not subclass it, as aitoolbox 1.8 did).

    Raises:
        TypeError: naming ``what`` and the missing methods.
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        return
    missing = [name for name in _OPTIMIZER_METHODS if not callable(getattr(optimizer, name, None))]
    if missing:
        raise TypeError(f"{what} must be a torch.optim.Optimizer, a MultiOptimizer or an optimizer-like object "
                        f"with step() and zero_grad(); got a {type(optimizer).__name__} (it has no "
                        f"{', '.join(missing)} method).")


class MultiOptimizer:
    """A list of optimizers stepped, zeroed and checkpointed together or one at a time.

    Args:
        optimizer_list: the optimizers, in the order that ``MultiLoss`` indices refer to: each a
            ``torch.optim.Optimizer`` or an object with the optimizer methods ``step`` and
            ``zero_grad`` (an optimizer wrapper that does not subclass it; checkpoints also need
            its ``state_dict``).

    Raises:
        ValueError: ``optimizer_list`` is empty.
        TypeError: an element is not an optimizer.
    """

    def __init__(self, optimizer_list: Iterable[torch.optim.Optimizer]):
        self.optimizer_lst = list(optimizer_list)
        if not self.optimizer_lst:
            raise ValueError("MultiOptimizer needs at least one optimizer in optimizer_list.")
        for idx, opt in enumerate(self.optimizer_lst):
            check_optimizer_like(opt, f"optimizer_list[{idx}]")

    @property
    def optimizer_list(self) -> List[torch.optim.Optimizer]:
        """The optimizers (aitoolbox 1.8's name)."""
        return self.optimizer_lst

    def step(self, optimizer_idx: Optional[int] = None, iteration: Optional[int] = None,
             amp_grad_scaler=None) -> None:
        """Step one optimizer, or all of them when ``optimizer_idx`` is None.

        Override it in a subclass for a custom step: the TrainLoop then calls the override with
        aitoolbox 1.8's arguments ``(optimizer_idx, iteration, amp_grad_scaler)``.

        Args:
            optimizer_idx: the optimizer to step; None: all.
            iteration: index of the batch within the epoch (for custom logic; unused here).
            amp_grad_scaler: steps through ``amp_grad_scaler.step(optimizer)`` when given (a
                ``torch.amp.GradScaler`` or the AMP handler's pass-through).
        """
        for opt in self._select(optimizer_idx):
            if amp_grad_scaler is None:
                opt.step()
            else:
                amp_grad_scaler.step(opt)

    def zero_grad(self, optimizer_idx: Optional[int] = None, iteration: Optional[int] = None,
                  set_to_none: bool = True) -> None:
        """Zero the gradients of one optimizer, or of all when ``optimizer_idx`` is None.

        Override it in a subclass for custom logic: the TrainLoop then calls the override with
        aitoolbox 1.8's arguments ``(optimizer_idx, iteration)``.
        """
        for opt in self._select(optimizer_idx):
            if set_to_none:  # torch's default: also works for wrappers whose zero_grad takes no argument
                opt.zero_grad()
            else:
                opt.zero_grad(set_to_none=False)

    def _select(self, optimizer_idx: Optional[int]) -> List[torch.optim.Optimizer]:
        return self.optimizer_lst if optimizer_idx is None else [self.optimizer_lst[optimizer_idx]]

    def state_dict(self) -> List[dict]:
        """State of every optimizer, in order."""
        return [opt.state_dict() for opt in self.optimizer_lst]

    def load_state_dict(self, state_dict_lst: List[dict]) -> None:
        """Load the states returned by :meth:`state_dict`."""
        if len(state_dict_lst) != len(self.optimizer_lst):
            raise ValueError(f"state has {len(state_dict_lst)} optimizer states but the "
                             f"MultiOptimizer holds {len(self.optimizer_lst)} optimizers.")
        for opt, state in zip(self.optimizer_lst, state_dict_lst):
            opt.load_state_dict(state)

    @property
    def param_groups(self) -> List[dict]:
        """Every optimizer's param groups, concatenated."""
        return [group for opt in self.optimizer_lst for group in opt.param_groups]

    def __len__(self) -> int:
        return len(self.optimizer_lst)

    def __getitem__(self, idx: int) -> torch.optim.Optimizer:
        return self.optimizer_lst[idx]

    def __iter__(self):
        return iter(self.optimizer_lst)
