"""Keep the weights of the best epoch by any history metric, and load them when training ends."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.metric_watch import MetricWatcher
from aitoolbox.utils.io import atomic_torch_save
from aitoolbox.utils.log import get_logger


class SaveBestModel(AbstractCallback):
    """Keep a CPU copy of the model weights of the best epoch and load them at the end.

    At the end of every epoch in which ``monitor`` got a new value that improves on the best so
    far, the model's ``state_dict`` (parameters and buffers) is copied to the CPU. At the end of
    training these weights are loaded back into the model, so the TrainLoop ends with the best
    model (the cached predictions are invalidated). The copy is part of the callback's state, so
    a run resumed from a checkpoint still ends with the best weights of the whole run.

    Args:
        monitor: training-history key, e.g. ``'val_loss'`` or ``'val_Accuracy'``.
        greater_is_better: direction; None: loss-like names are minimised, others maximised.
        load_at_end: load the best weights into the model when training ends.
        min_delta: minimal absolute change that counts as an improvement.
        save_path: also write the best weights to this file (main process only, atomically).
        execution_order: keep it above the callbacks that compute ``monitor`` and below the
            callbacks that save the final model.

    Attributes:
        best_state_dict: the best weights (CPU tensors), or None before the first evaluation.
        best_epoch: index of the epoch that produced them.
    """

    def __init__(self, monitor: str = "val_loss", greater_is_better: Optional[bool] = None,
                 load_at_end: bool = True, min_delta: float = 0., save_path: Optional[str] = None,
                 execution_order: int = 10):
        super().__init__("SaveBestModel", execution_order=execution_order)
        self.watcher = MetricWatcher(monitor, greater_is_better, min_delta)
        self.load_at_end, self.save_path = load_at_end, save_path
        self.best_state_dict: Optional[Dict[str, torch.Tensor]] = None
        self.best_epoch: Optional[int] = None

    @property
    def best_value(self) -> Optional[float]:
        """The best value of the monitored metric so far."""
        return self.watcher.best

    def monitored_history_metrics(self):
        return [("monitor", self.watcher.monitor, True)]

    def on_epoch_end(self):
        value = self.watcher.new_value(self.train_loop_obj.train_history)
        if value is None or not self.watcher.is_improvement(value):
            return
        loop = self.train_loop_obj
        self.watcher.best, self.best_epoch = value, loop.epoch
        self.best_state_dict = {k: v.detach().to("cpu", copy=True)
                                for k, v in loop.unwrapped_model().state_dict().items()}
        if self.save_path is not None and loop.is_main_process():
            atomic_torch_save(self.best_state_dict, self.save_path)

    def on_train_end(self):
        if self.best_state_dict is None:
            get_logger().warning(f"SaveBestModel: metric {self.watcher.monitor!r} never got a value; no "
                                 "weights were kept.")
        elif self.load_at_end:
            self.load_best_model()

    def load_best_model(self) -> None:
        """Load the best weights into the TrainLoop's model (invalidates the prediction cache)."""
        loop = self.train_loop_obj
        loop.unwrapped_model().load_state_dict(self.best_state_dict)
        loop.weights_version += 1
        if loop.is_main_process():
            get_logger().info(f"SaveBestModel: loaded the weights of epoch {self.best_epoch + 1} "
                              f"({self.watcher.monitor}={self.watcher.best}).")

    def state_dict(self) -> dict:
        return {"watcher": self.watcher.state_dict(), "best_epoch": self.best_epoch,
                "best_state_dict": self.best_state_dict}

    def load_state_dict(self, state: dict) -> None:
        self.watcher.load_state_dict(state["watcher"])
        self.best_epoch, self.best_state_dict = state["best_epoch"], state["best_state_dict"]
