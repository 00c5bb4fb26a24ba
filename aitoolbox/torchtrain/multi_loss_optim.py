"""Several losses and several optimizers in one training step.

``MultiLoss`` is a dict of named loss tensors; ``MultiOptimizer`` a list of optimizers. By
default the i-th loss is back-propagated for the i-th optimizer; a ``loss_optimizer_map`` maps
loss names to optimizer indices explicitly.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

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

    def backward(self, optimizer_idx: int, backward_fn=None) -> None:
        """Back-propagate the losses mapped to ``optimizer_idx``.

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

    def map_values(self, fn) -> "MultiLoss":
        """A new MultiLoss with ``fn`` applied to every loss and the same optimizer map."""
        return MultiLoss({k: fn(v) for k, v in self.items()}, self.loss_optimizer_map,
                         self.retain_graph_until_last)

    def __truediv__(self, divisor) -> "MultiLoss":
        return self.map_values(lambda v: v / divisor)

    def __mul__(self, factor) -> "MultiLoss":
        return self.map_values(lambda v: v * factor)

    __rmul__ = __mul__

    def detach(self) -> "MultiLoss":
        """A MultiLoss of detached losses."""
        return self.map_values(lambda v: v.detach())

    def item(self) -> Dict[str, float]:
        """The losses as a plain ``{name: float}`` dict."""
        return {k: float(v.detach()) for k, v in self.items()}

    def total(self) -> torch.Tensor:
        """Sum of all the losses."""
        return sum(self.values())


class MultiOptimizer:
    """A list of optimizers stepped, zeroed and checkpointed together or one at a time.

    Args:
        optimizer_list: the optimizers, in the order that ``MultiLoss`` indices refer to.
    """

    def __init__(self, optimizer_list: Iterable[torch.optim.Optimizer]):
        self.optimizer_lst = list(optimizer_list)
        if not self.optimizer_lst:
            raise ValueError("MultiOptimizer needs at least one optimizer in optimizer_list.")
        for idx, opt in enumerate(self.optimizer_lst):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"optimizer_list[{idx}] is a {type(opt).__name__}, not a "
                                "torch.optim.Optimizer.")

    def step(self, optimizer_idx: Optional[int] = None) -> None:
        """Step one optimizer, or all of them when ``optimizer_idx`` is None."""
        for opt in self._select(optimizer_idx):
            opt.step()

    def zero_grad(self, optimizer_idx: Optional[int] = None, set_to_none: bool = True) -> None:
        """Zero the gradients of one optimizer, or of all when ``optimizer_idx`` is None."""
        for opt in self._select(optimizer_idx):
            opt.zero_grad(set_to_none=set_to_none)

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
