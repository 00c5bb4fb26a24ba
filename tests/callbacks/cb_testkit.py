"""Small models, data and loops shared by the callback, scheduler and fine-tuning tests."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop import TrainLoop

NUM_FEATURES = 4


def regression_dataset(num_samples: int = 48, seed: int = 0) -> TensorDataset:
    """A noisy linear regression problem."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, NUM_FEATURES, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(num_samples, 1, generator=gen)
    return TensorDataset(x, y)


def mlp(seed: int = 0, hidden: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def make_loop(model: Optional[nn.Module] = None, lr: float = 0.05, num_train: int = 48,
              batch_size: int = 8, validation: bool = True, test: bool = False,
              optimizer: Optional[torch.optim.Optimizer] = None, **loop_kwargs) -> TrainLoop:
    """A TrainLoop on CPU over the regression data, SGD by default, no progress bar."""
    model = mlp() if model is None else model
    train = DataLoader(regression_dataset(num_train, seed=0), batch_size=batch_size)
    val = DataLoader(regression_dataset(24, seed=1), batch_size=batch_size) if validation else None
    tst = DataLoader(regression_dataset(16, seed=2), batch_size=batch_size) if test else None
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    loop_kwargs.setdefault("show_progress", False)
    return TrainLoop(model, train, val, tst, optimizer, nn.MSELoss(), **loop_kwargs)


class HistoryFeeder(AbstractCallback):
    """Appends the next value of a fixed sequence to a history metric at every epoch end."""

    def __init__(self, metric_name: str, values: Sequence[float], execution_order: int = -1):
        super().__init__("HistoryFeeder", execution_order=execution_order)
        self.metric_name, self.values = metric_name, list(values)

    def on_epoch_end(self):
        epoch = len(self.train_loop_obj.train_history[self.metric_name]) \
            if self.metric_name in self.train_loop_obj.train_history else 0
        self.train_loop_obj.insert_metric_result_into_history(self.metric_name, self.values[epoch])


class Recorder(AbstractCallback):
    """Calls ``fn(train_loop_obj)`` at one hook and keeps what it returns."""

    def __init__(self, hook: str, fn: Callable, execution_order: int = 100):
        super().__init__("Recorder", execution_order=execution_order)
        self.hook, self.fn = hook, fn
        self.records: List = []
        setattr(self, hook, lambda *args: self.records.append(self.fn(self.train_loop_obj)))

    def implemented_hooks(self):
        return frozenset([self.hook])


class LogCapture:
    """Collects the messages of the ``aitoolbox`` logger (whatever its propagation setting)."""

    def __init__(self):
        import logging
        self.messages: List[str] = []
        self._logger = logging.getLogger("aitoolbox")
        self._handler = logging.Handler(level=logging.DEBUG)
        self._handler.emit = lambda record: self.messages.append(record.getMessage())

    def __enter__(self) -> "LogCapture":
        import logging
        from aitoolbox.utils.log import get_logger
        get_logger()
        self._old_level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self._handler)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._old_level)
        return False

    def text(self) -> str:
        return "\n".join(self.messages)
