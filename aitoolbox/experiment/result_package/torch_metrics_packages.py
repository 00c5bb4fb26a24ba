"""``TorchMetricsPackage``: a result package over any ``torchmetrics`` metric or collection.

torchmetrics itself is optional (``pip install "aitoolbox[torchmetrics]"``); this module does not
import it - the package only calls the metric object it is given.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from aitoolbox.experiment.result_package.abstract_result_packages import AbstractResultPackage

#: suffix of every result name (as in the original aitoolbox: "PyTorch Lightning metrics")
RESULT_SUFFIX = "_PTLMetrics"


def _to_tensor(values: Any) -> Any:
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, np.ndarray):
        return torch.from_numpy(values)
    if isinstance(values, (list, tuple)):
        if values and all(isinstance(v, torch.Tensor) for v in values):
            return torch.cat([v if v.dim() else v.reshape(1) for v in values])
        return torch.as_tensor(values)
    return values


def _to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value


class TorchMetricsPackage(AbstractResultPackage):
    """Results of a ``torchmetrics`` metric (or ``MetricCollection``) on the predictions.

    The metric is called as ``metric(y_predicted, y_true)`` (numpy arrays and lists become
    tensors first); a single value is named ``<MetricClass>_PTLMetrics``, a dict result's entries
    ``<key>_PTLMetrics``. Tensor results become python numbers.

    Args:
        torch_metrics: a ``torchmetrics.Metric`` or ``torchmetrics.MetricCollection`` (anything
            callable with ``compute()`` / ``reset()`` works).

    Attributes:
        metric: the wrapped metric.
    """

    def __init__(self, torch_metrics: Any):
        if not callable(torch_metrics):
            raise TypeError(f"torch_metrics must be a torchmetrics Metric or MetricCollection, got "
                            f"{type(torch_metrics).__name__}.")
        super().__init__(pkg_name="Torch Metrics", np_array=False)
        self.metric = torch_metrics

    def prepare_results_dict(self) -> Dict[str, Any]:
        result = self.metric(_to_tensor(self.y_predicted), _to_tensor(self.y_true))
        if not isinstance(result, dict):
            result = {type(self.metric).__name__: result}
        return {f"{name}{RESULT_SUFFIX}": _to_python(value) for name, value in result.items()}

    def metric_compute(self) -> Any:
        """``metric.compute()``: the value over everything the metric has accumulated."""
        return self.metric.compute()

    def metric_reset(self) -> None:
        """``metric.reset()``: forget the accumulated state (e.g. at every epoch end)."""
        self.metric.reset()

    def metric_to(self, device: Any) -> None:
        """Move the metric's state to ``device`` (where the predictions are)."""
        if hasattr(self.metric, "to"):
            self.metric.to(device)


__all__ = ["TorchMetricsPackage"]
