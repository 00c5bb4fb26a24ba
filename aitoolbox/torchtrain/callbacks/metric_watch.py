"""Watching one training-history metric: its direction, its best value, new values as they come.

Shared by the callbacks that decide on a metric (early stopping, save-best). A metric whose name
looks like a loss or an error is minimised; every other metric is maximised, unless the caller
says otherwise with ``greater_is_better``.
"""
from __future__ import annotations

import math
from typing import Optional

#: name fragments of metrics that are better when smaller
LOSS_LIKE_NAMES = ("loss", "error", "mse", "mae", "rmse", "perplexity", "nll")


def infer_greater_is_better(metric_name: str) -> bool:
    """Whether a larger value of ``metric_name`` is better: False for loss-like names.

    Args:
        metric_name: a training-history key, e.g. ``'val_loss'`` or ``'val_Accuracy'``.

    Returns:
        False when the name contains a loss-like fragment (:data:`LOSS_LIKE_NAMES`), else True.
    """
    name = metric_name.lower()
    return not any(fragment in name for fragment in LOSS_LIKE_NAMES)


class MetricWatcher:
    """Follows one history metric: picks up new values and tells improvements apart.

    Args:
        monitor: the training-history key to watch.
        greater_is_better: direction; None infers it from the name (:func:`infer_greater_is_better`).
        min_delta: a value improves on the best only when better by more than this (absolute).
    """

    def __init__(self, monitor: str, greater_is_better: Optional[bool] = None, min_delta: float = 0.):
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}.")
        self.monitor = monitor
        self.greater_is_better = (infer_greater_is_better(monitor) if greater_is_better is None
                                  else bool(greater_is_better))
        self.min_delta = float(min_delta)
        self.best: Optional[float] = None
        self.num_seen = 0  # values of the metric already looked at

    def new_value(self, history) -> Optional[float]:
        """The metric's latest value when one was added since the last call, else None."""
        values = history[self.monitor] if self.monitor in history else []
        if len(values) <= self.num_seen:
            return None
        self.num_seen = len(values)
        return float(values[-1])

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta`` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.greater_is_better:
            return value - self.min_delta > self.best
        return value + self.min_delta < self.best

    def beats(self, value: float, reference: float) -> bool:
        """Whether ``value`` is strictly better than ``reference`` in the watched direction."""
        return value > reference if self.greater_is_better else value < reference

    def state_dict(self) -> dict:
        """The best value and how many values were seen."""
        return {"best": self.best, "num_seen": self.num_seen}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.best, self.num_seen = state["best"], state["num_seen"]
