"""Training monitor: learning rate, gradient norm and memory use, per optimizer step."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.utils.log import get_logger

_MB = 2 ** 20


def process_rss_bytes() -> int:
    """Resident memory of this process in bytes (peak RSS where the current one is unknown)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def memory_usage_mb(device: torch.device) -> Dict[str, float]:
    """Memory in use, in MiB: CUDA allocated and peak allocated on a GPU, process RSS otherwise."""
    if device.type == "cuda":
        return {"cuda_allocated_mb": torch.cuda.memory_allocated(device) / _MB,
                "cuda_max_allocated_mb": torch.cuda.max_memory_allocated(device) / _MB}
    return {"rss_mb": process_rss_bytes() / _MB}


def total_grad_norm(params: List[torch.Tensor]) -> Optional[torch.Tensor]:
    """L2 norm of all the gradients of ``params`` together (None when none has a gradient)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None


class TrainingMonitor(AbstractCallback):
    """Record the learning rate, the gradient norm and memory use every ``every_n_steps`` updates.

    History keys (with ``write_history``): ``monitor_step`` (optimizer steps done),
    ``monitor_lr`` (``monitor_lr_<k>`` for the k-th param group when there are several, over all
    optimizers), ``monitor_grad_norm`` (total L2 norm of the unscaled gradients of all optimizers
    before the step; with the default ``execution_order`` below the clippers', before clipping)
    and ``monitor_rss_mb`` on CPU or ``monitor_cuda_allocated_mb`` /
    ``monitor_cuda_max_allocated_mb`` on a GPU. Reading the gradient norm syncs with the device,
    so only on recorded steps. Runs on the main process only.

    Args:
        learning_rate: record the learning rate(s).
        grad_norm: record the gradient norm.
        memory: record memory use.
        every_n_steps: record every this many optimizer steps.
        write_history: append the records to the training history.
        log: also log every record.
        execution_order: callback execution order.
    """

    def __init__(self, learning_rate: bool = True, grad_norm: bool = True, memory: bool = True,
                 every_n_steps: int = 1, write_history: bool = True, log: bool = False,
                 execution_order: int = -10):
        super().__init__("TrainingMonitor", execution_order=execution_order, device_idx_execution=0)
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an int >= 1, got {every_n_steps!r}.")
        self.learning_rate, self.grad_norm, self.memory = learning_rate, grad_norm, memory
        self.every_n_steps, self.write_history, self.log = every_n_steps, write_history, log
        self.last_record: Dict[str, float] = {}
        self._grad_norm: Optional[torch.Tensor] = None

    def produced_history_metrics(self):
        return ["monitor_*"] if self.write_history else []

    def on_after_gradient_update(self, optimizer_idx: int):
        loop = self.train_loop_obj
        # The step counter is incremented after the update: this update is step count + 1.
        if not self.grad_norm or optimizer_idx != 0 or (loop.num_optimizer_steps + 1) % self.every_n_steps:
            return
        params = []
        for optimizer in loop.optimizers:  # every optimizer's gradients exist only before the first steps
            loop.amp_handler.unscale_(optimizer)
            params.extend(p for group in optimizer.param_groups for p in group["params"])
        self._grad_norm = total_grad_norm(params)

    def on_after_optimizer_step(self):
        loop = self.train_loop_obj
        if loop.num_optimizer_steps % self.every_n_steps:
            return
        record = {"monitor_step": loop.num_optimizer_steps}
        if self.learning_rate:
            record.update(self._learning_rates())
        if self.grad_norm and self._grad_norm is not None:
            record["monitor_grad_norm"] = float(self._grad_norm)
            self._grad_norm = None
        if self.memory:
            record.update({f"monitor_{k}": v for k, v in memory_usage_mb(loop.device).items()})
        self.last_record = record
        if self.write_history:
            for name, value in record.items():
                loop.insert_metric_result_into_history(name, value)
        if self.log:
            get_logger().info(", ".join(f"{k}={v:.6g}" for k, v in record.items()))

    def _learning_rates(self) -> Dict[str, float]:
        lrs = [group["lr"] for opt in self.train_loop_obj.optimizers for group in opt.param_groups]
        if len(lrs) == 1:
            return {"monitor_lr": float(lrs[0])}
        return {f"monitor_lr_{k}": float(lr) for k, lr in enumerate(lrs)}
