"""Progress messages and metric logging through ``logging``, on the main process only."""
from __future__ import annotations

import numbers
from typing import Dict

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.utils.log import get_logger


class PrintProgress(AbstractCallback):
    """Log a message when training starts and ends and when each epoch starts.

    Args:
        execution_order: callback execution order.
    """

    def __init__(self, execution_order: int = 0):
        super().__init__("PrintProgress", execution_order=execution_order, device_idx_execution=0)

    def on_train_begin(self):
        loop = self.train_loop_obj
        length = f"{loop.num_iterations} iterations" if loop.num_iterations else f"{loop.num_epochs} epochs"
        get_logger().info(f"Starting training run: {length}, {loop.get_num_training_steps()} optimizer steps.")

    def on_epoch_begin(self):
        loop = self.train_loop_obj
        total = f"/{loop.num_epochs}" if loop.num_epochs else ""
        get_logger().info(f"Starting epoch {loop.epoch + 1}{total}")

    def on_train_end(self):
        get_logger().info(f"Finishing training run after {self.train_loop_obj.num_optimizer_steps} "
                          "optimizer steps.")


class LogMetrics(AbstractCallback):
    """Log, at the end of every epoch, the latest value of each history metric updated in it.

    Subclass and override :meth:`log_metrics` to send the metrics somewhere else.

    Args:
        execution_order: keep it above the callbacks that write metrics into the history.
    """

    def __init__(self, execution_order: int = 50):
        super().__init__("LogMetrics", execution_order=execution_order, device_idx_execution=0)
        self.num_seen: Dict[str, int] = {}

    def on_epoch_end(self):
        updated = {}
        for name, values in self.train_loop_obj.train_history.items():
            if len(values) > self.num_seen.get(name, 0):
                self.num_seen[name] = len(values)
                updated[name] = values[-1]
        if updated:
            self.log_metrics(updated)

    def log_metrics(self, metrics: Dict[str, object]) -> None:
        """Report the metrics updated in this epoch.

        Args:
            metrics: history key -> latest value.
        """
        parts = [f"{k}: {v:.6g}" if isinstance(v, numbers.Real) else f"{k}: {v}" for k, v in metrics.items()]
        get_logger().info(f"Epoch {self.train_loop_obj.epoch + 1} - " + ", ".join(parts))

    def state_dict(self) -> dict:
        return {"num_seen": dict(self.num_seen)}

    def load_state_dict(self, state: dict) -> None:
        self.num_seen = dict(state["num_seen"])
