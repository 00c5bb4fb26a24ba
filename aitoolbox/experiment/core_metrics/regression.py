"""Regression metrics computed with numpy only."""

import logging
from typing import Tuple

import numpy as np

from aitoolbox.experiment.core_metrics.abstract_metric import AbstractBaseMetric, ArrayLike

logger = logging.getLogger(__name__)


def _aligned(y_true: np.ndarray, y_predicted: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Drop a trailing size-1 dimension and check that the shapes match.

    Raises:
        ValueError: If the shapes still differ.
    """
    y_true = y_true[:, 0] if y_true.ndim == 2 and y_true.shape[1] == 1 else y_true
    if y_predicted.ndim == 2 and y_predicted.shape[1] == 1:
        y_predicted = y_predicted[:, 0]
    if y_true.shape != y_predicted.shape:
        raise ValueError(
            f"y_true and y_predicted shapes differ: {y_true.shape} vs {y_predicted.shape}"
        )
    return y_true.astype(np.float64), y_predicted.astype(np.float64)


class MeanSquaredErrorMetric(AbstractBaseMetric):
    """Mean squared error, averaged over all examples and outputs.

    Args:
        y_true: Target values, shape (N,) or (N, D).
        y_predicted: Predicted values of the same shape; (N, 1) and (N,) mix.

    Raises:
        ValueError: If the inputs are empty or their shapes differ.
    """

    def __init__(self, y_true: ArrayLike, y_predicted: ArrayLike) -> None:
        super().__init__(y_true, y_predicted, metric_name="Mean_squared_error")

    def calculate_metric(self) -> float:
        """Compute the mean squared error.

        Returns:
            The mean squared error.
        """
        y_true, y_pred = _aligned(self.y_true, self.y_predicted)
        return float(np.mean((y_true - y_pred) ** 2))


class MeanAbsoluteErrorMetric(AbstractBaseMetric):
    """Mean absolute error, averaged over all examples and outputs.

    Args:
        y_true: Target values, shape (N,) or (N, D).
        y_predicted: Predicted values of the same shape; (N, 1) and (N,) mix.

    Raises:
        ValueError: If the inputs are empty or their shapes differ.
    """

    def __init__(self, y_true: ArrayLike, y_predicted: ArrayLike) -> None:
        super().__init__(y_true, y_predicted, metric_name="Mean_absolute_error")

    def calculate_metric(self) -> float:
        """Compute the mean absolute error.

        Returns:
            The mean absolute error.
        """
        y_true, y_pred = _aligned(self.y_true, self.y_predicted)
        return float(np.mean(np.abs(y_true - y_pred)))
