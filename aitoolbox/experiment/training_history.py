"""The training history: metric name -> list of values, one per evaluation."""
from __future__ import annotations

from typing import Dict, Iterator, List, Union


class TrainingHistory:
    """Dict-like record of every loss and metric over the training run.

    Starts with the keys ``loss``, ``accumulated_loss``, ``val_loss`` and ``train_end_test_loss``.
    A dict-valued result ``{'a': 1., 'b': 2.}`` under ``name`` is stored as ``name_a``, ``name_b``.

    Args:
        has_validation: include the ``val_loss`` key from the start.
        has_test: include the ``train_end_test_loss`` key from the start.
    """

    def __init__(self, has_validation: bool = True, has_test: bool = True):
        self.train_history: Dict[str, List] = {"loss": [], "accumulated_loss": []}
        if has_validation:
            self.train_history["val_loss"] = []
        if has_test:
            self.train_history["train_end_test_loss"] = []

    def insert_single_result_into_history(self, metric_name: str,
                                          metric_result: Union[float, dict]) -> None:
        """Append a result; a dict result is stored under ``<metric_name>_<key>`` per key."""
        if isinstance(metric_result, dict):
            for key, value in metric_result.items():
                self.insert_single_result_into_history(f"{metric_name}_{key}", value)
            return
        self.train_history.setdefault(metric_name, []).append(_to_python(metric_result))

    def get_train_history(self) -> Dict[str, List]:
        """The history as a plain dict (the live object: do not mutate)."""
        return self.train_history

    def get_train_history_dict(self, flatten_dict: bool = False) -> Dict[str, List]:
        """A copy of the history; ``flatten_dict`` drops the keys with no values."""
        return {k: list(v) for k, v in self.train_history.items() if v or not flatten_dict}

    def get_last(self, metric_name: str, default=None):
        """The latest value of ``metric_name``, or ``default``."""
        values = self.train_history.get(metric_name)
        return values[-1] if values else default

    def wrap_pre_prepared_history(self, history: Dict[str, List]) -> "TrainingHistory":
        """Replace the content with an existing ``{name: [values]}`` dict."""
        self.train_history = {k: list(v) for k, v in history.items()}
        return self

    def state_dict(self) -> Dict[str, List]:
        """The history, for checkpoints."""
        return self.get_train_history_dict()

    def load_state_dict(self, state: Dict[str, List]) -> None:
        """Restore the history saved by :meth:`state_dict`."""
        self.wrap_pre_prepared_history(state)

    def __getitem__(self, metric_name: str) -> List:
        return self.train_history[metric_name]

    def __setitem__(self, metric_name: str, values: List) -> None:
        self.train_history[metric_name] = list(values)

    def __contains__(self, metric_name: str) -> bool:
        return metric_name in self.train_history

    def __iter__(self) -> Iterator[str]:
        return iter(self.train_history)

    def __len__(self) -> int:
        return len(self.train_history)

    def keys(self):
        return self.train_history.keys()

    def items(self):
        return self.train_history.items()

    def values(self):
        return self.train_history.values()

    def __str__(self) -> str:
        return str(self.train_history)

    def __repr__(self) -> str:
        return f"TrainingHistory({self.train_history!r})"


def _to_python(value):
    """Tensors and numpy scalars become plain floats/ints so that the history is JSON-friendly."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value
