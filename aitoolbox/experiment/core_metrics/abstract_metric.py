"""Base class for metrics and helpers that turn inputs into numpy arrays."""

import logging
from abc import ABC, abstractmethod
from typing import Any, Dict, Sequence, Tuple, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]
MetricResult = Union[float, Dict[str, float]]


def to_numpy(data: ArrayLike) -> np.ndarray:
    """Convert a torch tensor, list or numpy array into a numpy array.

    Args:
        data: Tensor (on any device), nested list / tuple or numpy array.

    Returns:
        The data as a numpy array. Half and bfloat16 tensors become float32.
    """
    if isinstance(data, torch.Tensor):
        tensor = data.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(data)


def check_prediction_inputs(y_true: np.ndarray, y_predicted: np.ndarray) -> None:
    """Check that ground truth and predictions are non-empty and aligned.

    Args:
        y_true: Ground truth array.
        y_predicted: Predictions array; its first dimension must match ``y_true``.

    Raises:
        ValueError: If either array is a scalar or empty, or if their lengths differ.
    """
    for name, array in (("y_true", y_true), ("y_predicted", y_predicted)):
        if array.ndim == 0:
            raise ValueError(f"{name} must be an array, got a scalar: {array!r}")
        if array.size == 0:
            raise ValueError(f"{name} is empty: at least one example is needed")
    if len(y_true) != len(y_predicted):
        raise ValueError(
            f"y_true and y_predicted have different lengths: "
            f"{len(y_true)} vs {len(y_predicted)}"
        )


class AbstractBaseMetric(ABC):
    """Base class of all metrics: computes the metric once, on construction.

    Subclasses implement :meth:`calculate_metric`, reading ``self.y_true`` and
    ``self.y_predicted``.

    A metric behaves like its one-entry result dict: ``name in metric`` and
    ``metric[name]`` (also the keys of a dict-valued result), ``len(metric)``;
    a scalar metric compares (``<``, ``<=``, ``>``, ``>=``) with another scalar
    metric or a number; ``metric_a + metric_b`` (or ``+ dict``) gives the merged
    ``{metric_name: value}`` dict.

    Args:
        y_true: Ground truth values.
        y_predicted: Predicted values (labels, scores or probabilities).
        metric_name: Name under which the result is reported.
        np_array: If True, convert both inputs to numpy arrays and check them.

    Raises:
        ValueError: If ``np_array`` is True and the inputs are empty or of
            different lengths, or if the subclass rejects the inputs.
    """

    def __init__(
        self,
        y_true: ArrayLike,
        y_predicted: ArrayLike,
        metric_name: str,
        np_array: bool = True,
    ) -> None:
        if np_array:
            y_true = to_numpy(y_true)
            y_predicted = to_numpy(y_predicted)
            check_prediction_inputs(y_true, y_predicted)
        self.y_true = y_true
        self.y_predicted = y_predicted
        self.metric_name = metric_name
        self.metric_result: MetricResult = self.calculate_metric()
        logger.debug("Calculated %s = %s", metric_name, self.metric_result)

    @abstractmethod
    def calculate_metric(self) -> MetricResult:
        """Compute the metric from ``self.y_true`` and ``self.y_predicted``.

        Returns:
            The metric value as a python float, or a dict of python floats.
        """

    def get_metric(self) -> MetricResult:
        """Return the computed metric value.

        Returns:
            The metric value as a python float, or a dict of python floats.
        """
        return self.metric_result

    def get_metric_dict(self) -> Dict[str, MetricResult]:
        """Return the metric value keyed by the metric name.

        Returns:
            A one-entry dict ``{metric_name: metric_result}``.
        """
        return {self.metric_name: self.metric_result}

    def __str__(self) -> str:
        """Return a readable ``name: value`` line.

        Returns:
            The metric name and its value.
        """
        return f"{self.metric_name}: {self.metric_result}"

    def __len__(self) -> int:
        """Return the size of the result: 1 for a number, the length of a list or dict, 0 if None.

        Raises:
            TypeError: If the result is of any other type.
        """
        result = self.metric_result
        if isinstance(result, (list, dict)):
            return len(result)
        if _is_scalar(result):
            return 1
        if result is None:
            return 0
        raise TypeError(
            f"len() needs a metric result that is a number, list or dict; "
            f"{self.metric_name} is a {type(result).__name__}"
        )

    def _scalar_pair(self, other: Any) -> Tuple[Any, Any]:
        """Return (own value, other value) for a comparison of two scalars.

        Raises:
            ValueError: If either side is not a scalar metric or a number.
        """
        if _is_scalar(self.metric_result):
            if isinstance(other, AbstractBaseMetric) and _is_scalar(other.metric_result):
                return self.metric_result, other.metric_result
            if _is_scalar(other):
                return self.metric_result, other
        raise ValueError(
            f"Metrics compare only when both results are numbers: {self.metric_name} "
            f"is {self.metric_result!r}, the other side is {other!r}"
        )

    def __lt__(self, other: Any) -> bool:
        mine, theirs = self._scalar_pair(other)
        return mine < theirs

    def __le__(self, other: Any) -> bool:
        mine, theirs = self._scalar_pair(other)
        return mine <= theirs

    def __gt__(self, other: Any) -> bool:
        mine, theirs = self._scalar_pair(other)
        return mine > theirs

    def __ge__(self, other: Any) -> bool:
        mine, theirs = self._scalar_pair(other)
        return mine >= theirs

    def __contains__(self, item: Any) -> bool:
        """True for the metric name, and for the keys of a dict-valued result."""
        if item == self.metric_name:
            return True
        return isinstance(self.metric_result, dict) and item in self.metric_result

    def __getitem__(self, item: Any) -> Any:
        """The result under the metric name, or under a key of a dict-valued result.

        Raises:
            KeyError: If ``item`` is neither.
        """
        if item == self.metric_name:
            return self.metric_result
        if isinstance(self.metric_result, dict) and item in self.metric_result:
            return self.metric_result[item]
        raise KeyError(f"{item!r} is neither the metric name {self.metric_name!r} nor a key of its result")

    def __add__(self, other: Any) -> Dict[str, Any]:
        """Merge with another metric or a results dict.

        Returns:
            A new ``{metric_name: result, ...}`` dict; ``other``'s entries win on a clash.
        """
        return self.concat_metric(other)

    def __radd__(self, other: Any) -> Dict[str, Any]:
        return self.concat_metric(other)

    def concat_metric(self, other: Any) -> Dict[str, Any]:
        """Merge this metric's result dict with another metric's or with a dict.

        Args:
            other: An :class:`AbstractBaseMetric` or a ``{name: result}`` dict.

        Returns:
            A new dict holding both.

        Raises:
            TypeError: If ``other`` is neither a metric nor a dict.
        """
        if isinstance(other, AbstractBaseMetric):
            other = other.get_metric_dict()
        elif not isinstance(other, dict):
            raise TypeError(f"A metric adds to a metric or a dict, not to a {type(other).__name__}")
        return {**self.get_metric_dict(), **other}


def _is_scalar(value: Any) -> bool:
    """True for python and numpy numbers (not bools)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
