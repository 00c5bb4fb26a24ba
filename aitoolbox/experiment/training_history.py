"""The training history: metric name -> list of values, one per evaluation."""
from __future__ import annotations

import copy
import logging
from typing import Dict, Iterator, List, Union

logger = logging.getLogger(__name__)


class TrainingHistory:
    """Dict-like record of every loss and metric over the training run.

    Starts with the keys ``loss`` and ``accumulated_loss`` (and ``val_loss`` with validation);
    other keys, e.g. ``train_end_test_loss``, appear when first written.
    A dict-valued result ``{'a': 1., 'b': 2.}`` under ``name`` is stored as ``name_a``, ``name_b``.

    ``history[name] = value`` appends ``value`` to ``name``'s list; ``history + {name: value}``
    returns a copy with the values appended, ``history += {name: value}`` appends in place.

    Args:
        has_validation: include the ``val_loss`` key from the start.
        strict_content_check: problems (an empty history asked for, records of different
            lengths) raise ValueError instead of logging a warning.
        has_test: accepted for backward compatibility; ``train_end_test_loss`` always appears
            only when written.
    """

    def __init__(self, has_validation: bool = True, strict_content_check: bool = False,
                 has_test: bool = False):
        self.train_history: Dict[str, List] = {"loss": [], "accumulated_loss": []}
        if has_validation:
            self.train_history["val_loss"] = []
        self.strict_content_check = strict_content_check
        self.empty_train_history = {k: [] for k in self.train_history}

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
        """A copy of the history; ``flatten_dict`` drops the keys with no values.

        Raises:
            ValueError: If the history is still empty and ``strict_content_check`` is True
                (otherwise a warning is logged).
        """
        if self.strict_content_check and not any(self.train_history.values()):
            self.warn_about_result_data_problem("Train History dict is empty")
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

    def __setitem__(self, metric_name: str, metric_result) -> None:
        """Append ``metric_result`` to ``metric_name`` (as ``insert_single_result_into_history``)."""
        self.insert_single_result_into_history(metric_name, metric_result)

    def add_history_dict(self, other: Dict[str, Union[float, dict]]) -> None:
        """Append each ``{name: value}`` of ``other`` to the history.

        Raises:
            TypeError: If ``other`` is not a dict.
        """
        if not isinstance(other, dict):
            raise TypeError(f"Only a {{metric_name: value}} dict adds to a TrainingHistory, "
                            f"got {type(other).__name__}")
        for name, value in other.items():
            self.insert_single_result_into_history(name, value)

    def __add__(self, other: Dict[str, Union[float, dict]]) -> "TrainingHistory":
        combined = copy.deepcopy(self)
        combined.add_history_dict(other)
        return combined

    __radd__ = __add__

    def __iadd__(self, other: Dict[str, Union[float, dict]]) -> "TrainingHistory":
        self.add_history_dict(other)
        return self

    def qa_check_history_records(self) -> None:
        """Warn (or raise, if strict) when the records are not all of the same length.

        Raises:
            ValueError: On a mismatch, if ``strict_content_check`` is True.
        """
        lengths = {name: len(values) for name, values in self.train_history.items()}
        if len(set(lengths.values())) > 1:
            self.warn_about_result_data_problem(f"Train history records differ in length: {lengths}")

    def warn_about_result_data_problem(self, msg: str) -> None:
        """Log ``msg`` as a warning, or raise it if ``strict_content_check`` is True.

        Raises:
            ValueError: If ``strict_content_check`` is True.
        """
        if self.strict_content_check:
            raise ValueError(msg)
        logger.warning(msg)

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
