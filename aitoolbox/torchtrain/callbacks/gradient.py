"""Gradient callbacks: clipping by value or by norm, and gradient statistics.

They act in ``on_after_gradient_update(optimizer_idx)``, which the TrainLoop calls once per
optimizer of a ``MultiOptimizer`` before that optimizer steps. Under AMP the gradients are
unscaled first (``amp_handler.unscale_``; a second unscale in the same step is a no-op), so that
thresholds apply to the true gradients. Under DDP the gradients are already averaged over the
ranks at that point, so every rank clips identically without any communication.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.utils.log import get_logger


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    """The parameters of every param group of ``optimizer``, in order, without duplicates."""
    seen, params = set(), []
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


def unscaled_parameters(train_loop_obj, optimizer_idx: int) -> List[torch.Tensor]:
    """Unscale the gradients of optimizer ``optimizer_idx`` (under AMP) and return its parameters."""
    optimizer = train_loop_obj.optimizers[optimizer_idx]
    train_loop_obj.amp_handler.unscale_(optimizer)
    return optimizer_parameters(optimizer)


class GradValueClip(AbstractCallback):
    """Clip every gradient element to ``[-max_grad_value, max_grad_value]`` before each step.

    Args:
        max_grad_value: the clipping bound.
        execution_order: callback execution order.
    """

    def __init__(self, max_grad_value: float, execution_order: int = 0):
        super().__init__("GradValueClip", execution_order=execution_order)
        if max_grad_value <= 0:
            raise ValueError(f"max_grad_value must be > 0, got {max_grad_value}.")
        self.max_grad_value = float(max_grad_value)

    def on_after_gradient_update(self, optimizer_idx: int):
        params = unscaled_parameters(self.train_loop_obj, optimizer_idx)
        nn.utils.clip_grad_value_(params, self.max_grad_value)


class GradNormClip(AbstractCallback):
    """Rescale the gradients of each optimizer so that their total norm is at most ``max_grad_norm``.

    The same as calling ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm)`` on each
    optimizer's parameters between ``backward()`` and ``step()``.

    Args:
        max_grad_norm: the largest total gradient norm allowed.
        norm_type: the p of the p-norm (``float('inf')`` for the max norm).
        error_if_nonfinite: raise when the total norm is NaN or infinite.
        foreach: passed to ``clip_grad_norm_``.
        execution_order: callback execution order.

    Attributes:
        total_norms: optimizer index -> total gradient norm (before clipping) of the last step,
            a tensor on the device (reading it forces a sync).
    """

    def __init__(self, max_grad_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                 foreach: Optional[bool] = None, execution_order: int = 0):
        super().__init__("GradNormClip", execution_order=execution_order)
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}.")
        self.max_grad_norm, self.norm_type = float(max_grad_norm), float(norm_type)
        self.error_if_nonfinite, self.foreach = error_if_nonfinite, foreach
        self.total_norms: Dict[int, torch.Tensor] = {}

    def on_after_gradient_update(self, optimizer_idx: int):
        params = unscaled_parameters(self.train_loop_obj, optimizer_idx)
        self.total_norms[optimizer_idx] = nn.utils.clip_grad_norm_(
            params, self.max_grad_norm, norm_type=self.norm_type,
            error_if_nonfinite=self.error_if_nonfinite, foreach=self.foreach)


class GradientStatsPrint(AbstractCallback):
    """Log gradient statistics (mean, std, largest absolute value, L2 norm) per layer.

    Computed from the true (unscaled) gradients just before the optimizer steps: at the last
    update of every epoch, or at every update. Runs on the main process only.

    Args:
        model_layers_extract_def: ``fn(model) -> iterable of nn.Module`` choosing the layers to
            report; None reports every parameter of the model separately.
        on_every_grad_update: report at every optimizer update instead of once per epoch.
        execution_order: callback execution order (below the clippers' to see unclipped values).

    Attributes:
        last_stats: layer name -> ``{'mean', 'std', 'abs_max', 'norm'}`` of the last report.
    """

    STATS = ("mean", "std", "abs_max", "norm")

    def __init__(self, model_layers_extract_def: Optional[Callable[[nn.Module], Iterable[nn.Module]]] = None,
                 on_every_grad_update: bool = False, execution_order: int = 0):
        super().__init__("GradientStatsPrint", execution_order=execution_order, device_idx_execution=0)
        self.model_layers_extract_def = model_layers_extract_def
        self.on_every_grad_update = on_every_grad_update
        self.last_stats: Dict[str, Dict[str, float]] = {}

    def on_after_gradient_update(self, optimizer_idx: int):
        # Gradients of every optimizer exist only before the first one steps and zeroes them.
        if optimizer_idx != 0 or not (self.on_every_grad_update or self._last_update_of_epoch()):
            return
        for optimizer in self.train_loop_obj.optimizers:
            self.train_loop_obj.amp_handler.unscale_(optimizer)
        self.last_stats = self.gradient_stats()
        lines = [f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in stats.items())
                 for name, stats in self.last_stats.items()]
        get_logger().info(f"Gradient stats, epoch {self.train_loop_obj.epoch + 1}, batch "
                          f"{self.train_loop_obj.iteration + 1}:\n" + "\n".join(lines))

    def _last_update_of_epoch(self) -> bool:
        loop = self.train_loop_obj
        if loop.num_iterations and loop.total_iteration_idx + 1 >= loop.num_iterations:
            return True
        return loop.iteration + 1 >= len(loop.train_loader)

    def gradient_stats(self) -> Dict[str, Dict[str, float]]:
        """Statistics of the current gradients of the selected layers (those without any skipped)."""
        stats = {}
        for name, grads in self._named_gradients():
            if grads:
                flat = torch.cat([g.detach().flatten().float() for g in grads])
                values = torch.stack([flat.mean(), flat.std(correction=0), flat.abs().max(),
                                      torch.linalg.vector_norm(flat)]).tolist()
                stats[name] = dict(zip(self.STATS, values))
        return stats

    def _named_gradients(self) -> Iterable[Tuple[str, List[torch.Tensor]]]:
        model = self.train_loop_obj.unwrapped_model()
        if self.model_layers_extract_def is None:
            return [(name, [p.grad]) for name, p in model.named_parameters() if p.grad is not None]
        layers = self.model_layers_extract_def(model)
        return [(f"{idx}:{type(layer).__name__}", [p.grad for p in layer.parameters() if p.grad is not None])
                for idx, layer in enumerate(layers)]
