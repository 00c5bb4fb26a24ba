"""Functions collecting per-batch predictions into one result.

``collate_batch_pred_fn(batch_pred, all_preds)`` is called for every batch;
``pred_transform_fn(all_preds)`` once at the end.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import numpy as np
import torch


def append_predictions(y_batch: Any, predictions: List[Any]) -> List[Any]:
    """Append one batch's predictions to the list of all predictions (the default collate)."""
    predictions.append(y_batch)
    return predictions


def append_concat_predictions(y_batch: Any, predictions: List[Any]) -> List[Any]:
    """Add one batch to the list of all predictions: a list batch is concatenated, anything else appended.

    A list (e.g. of strings or of per-example outputs) extends ``predictions`` item by item; a
    tensor or numpy array batch is appended whole, as :func:`append_predictions` does, so that
    :func:`torch_cat_transf` can concatenate the batches at the end.
    """
    if isinstance(y_batch, list):
        predictions += y_batch
    else:
        predictions.append(y_batch)
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


class PredictionCollector:
    """Collects one data set's batch predictions (or targets) and builds the result.

    With a user-supplied ``collate_fn`` / ``transform_fn`` it is exactly the seed's protocol:
    ``collated = collate_fn(batch, collated)`` per batch, ``transform_fn(collated)`` at the end.

    With the defaults (:func:`append_predictions` + :func:`torch_cat_transf`), plain tensor batches
    are copied into one output tensor allocated after the first batch for ``expected_rows`` rows,
    instead of being listed and concatenated at the end: the peak then holds the result and one
    batch, not the result and a second copy of it in the list. The result equals (``torch.equal``,
    same dtype and device) what the list + ``torch.cat`` would give. Whenever a batch does not fit
    that plan (not a plain strided tensor, another per-row shape, dtype or device, a tensor that
    requires grad, or more rows than expected) the rows copied so far become the first item of the
    list and collection carries on as list + ``torch.cat``; fewer rows than expected are trimmed
    (copied out, so that no unused rows stay allocated behind the result).

    Args:
        collate_fn: ``fn(batch, collated) -> collated``.
        transform_fn: ``fn(collated) -> result``.
        expected_rows: number of rows the data set will give (e.g. its number of samples), or None
            when unknown (no preallocation).
        move_to_cpu: put each batch on the CPU (only plain tensors are moved, as ``Tensor.cpu()``).
    """

    def __init__(self, collate_fn: Callable = append_predictions, transform_fn: Callable = torch_cat_transf,
                 expected_rows: Optional[int] = None, move_to_cpu: bool = False):
        self.collate_fn, self.transform_fn, self.move_to_cpu = collate_fn, transform_fn, move_to_cpu
        self._planned = (collate_fn is append_predictions and transform_fn is torch_cat_transf
                         and expected_rows is not None)
        self._expected_rows = expected_rows
        self._collated: Any = []
        self._out: Optional[torch.Tensor] = None  # the preallocated result while batches fit it
        self._filled = 0

    def add(self, batch: Any, batch_samples: Optional[int] = None) -> None:
        """Collect one batch.

        Args:
            batch: the batch's predictions or targets.
            batch_samples: number of samples in the batch. Preallocation starts only when the first
                batch has one row per sample (else the expected number of rows is not known).
        """
        out = self._out
        if out is not None:
            if self._fits(batch, out):
                end = self._filled + batch.shape[0]
                out[self._filled:end].copy_(batch)
                self._filled = end
                return
            self._collated, self._out = [out[:self._filled]], None  # the plan failed: list + cat
        elif self._planned:
            self._planned = False  # decided at the first batch, once
            if self._can_plan(batch, batch_samples):
                device = torch.device("cpu") if self.move_to_cpu else batch.device
                try:
                    self._out = torch.empty((self._expected_rows, *batch.shape[1:]), dtype=batch.dtype,
                                            device=device)
                except RuntimeError:  # out of memory (e.g. a far too large estimate): list + cat
                    pass
                else:
                    self.add(batch)
                    return
        if self.move_to_cpu and isinstance(batch, torch.Tensor):
            batch = batch.cpu()
        self._collated = self.collate_fn(batch, self._collated)

    def result(self) -> Any:
        """The collected predictions: the filled output tensor, else ``transform_fn(collated)``."""
        out = self._out
        if out is None:
            return self.transform_fn(self._collated)
        return out if self._filled == out.shape[0] else out[:self._filled].clone()

    def _can_plan(self, batch: Any, batch_samples: Optional[int]) -> bool:
        return (_plain_tensor(batch) and batch.dim() > 0 and batch.shape[0] == batch_samples
                and batch.shape[0] <= self._expected_rows
                and batch.is_contiguous())  # torch.cat's result then has the default layout too

    def _fits(self, batch: Any, out: torch.Tensor) -> bool:
        return (_plain_tensor(batch) and batch.dim() == out.dim() and batch.shape[1:] == out.shape[1:]
                and batch.dtype == out.dtype
                and (self.move_to_cpu or batch.device == out.device)
                and self._filled + batch.shape[0] <= out.shape[0])


def _plain_tensor(value: Any) -> bool:
    """A dense ``torch.Tensor`` (no subclass, sparse, nested or quantized one) outside autograd."""
    return (type(value) is torch.Tensor and value.layout == torch.strided and not value.is_nested
            and not value.is_quantized and not value.requires_grad)
