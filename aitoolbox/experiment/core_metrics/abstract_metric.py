"""Base class for metrics and helpers that turn inputs into numpy arrays."""

import logging
from abc import ABC, abstractmethod
from typing import Any, Dict, Sequence, Union

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
