"""Functions collecting per-batch predictions into one result.

``collate_batch_pred_fn(batch_pred, all_preds)`` is called for every batch;
``pred_transform_fn(all_preds)`` once at the end.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np
import torch


def append_predictions(y_batch: Any, predictions: List[Any]) -> List[Any]:
    """Append one batch's predictions to the list of all predictions (the default collate)."""
    predictions.append(y_batch)
    return predictions


def append_concat_predictions(y_batch: Any, predictions: List[Any]) -> List[Any]:
    """Extend the list of all predictions with one batch given as a list."""
    predictions.extend(y_batch if isinstance(y_batch, list) else list(y_batch))
    return predictions


def torch_cat_transf(predictions: List[Any]) -> Any:
    """Concatenate the list of batch tensors along dim 0 (the default transform).

    A list whose items are not tensors (e.g. lists of strings) is flattened instead.
    """
    if predictions and isinstance(predictions[0], torch.Tensor):
        return torch.cat(predictions)
    if predictions and isinstance(predictions[0], np.ndarray):
        return np.concatenate(predictions)
    if predictions and isinstance(predictions[0], (list, tuple)):
        return [item for batch in predictions for item in batch]
    return predictions


def keep_list_transf(predictions: List[Any]) -> List[Any]:
    """Return the list of per-batch predictions unchanged."""
    return predictions
