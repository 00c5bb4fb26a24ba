"""``EvaluationAPI``: the TrainLoop's public evaluation and prediction methods.

The loss and prediction passes over a whole data set (cached in the prediction store until the
weights change) and the recording of losses into the training history. ``TrainLoop`` inherits
them: a subclass overrides any of them on its TrainLoop, and calls them on the loop, as before.
The low-level pieces (batch sizes, weighted sums, metadata, RNG isolation) are in
``components/evaluation.py``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import List, Optional, Union

import torch

from aitoolbox.torchtrain.callbacks.progress import format_value
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.torchtrain.train_loop.components import validation
from aitoolbox.torchtrain.train_loop.components.data_loading import expected_num_samples
from aitoolbox.torchtrain.train_loop.components.evaluation import (
    batch_size_of, loss_terms, merge_metadata, rng_fork, weighted_sum)
from aitoolbox.torchtrain.train_loop.components.loss_values import losses_to_floats, mean_of_floats
from aitoolbox.torchtrain.train_loop.components.pred_collate_fns import PredictionCollector


class EvaluationAPI:
    """Loss evaluation, prediction and loss history of a ``TrainLoop`` (a mixin; no state of its own).

    It works on the attributes ``TrainLoop.__init__`` sets: the loaders, ``feed`` / ``feed_def``,
    ``criterion``, ``device``, ``module``, ``strategy``, ``amp_handler``, ``callbacks_handler``,
    ``prediction_store``, ``weights_version``, ``train_history``, ``logger``,
    ``collate_batch_pred_fn`` / ``pred_transform_fn`` and ``_eval_loaders``, and its
    ``is_main_process()``.
    """

    # ------------------------------------------------------------------ loss values & history
    def _print_save_loss(self, loss_parsed, loss_type_name: str, loss_print_description: str) -> None:
        """Append a loss to the history and log it at DEBUG on the main process.

        A ``MultiLoss`` is stored as its total under ``loss_type_name`` and per loss under
        ``<loss_type_name>_<loss name>``. (The INFO output is the epoch's one summary line.)
        """
        value = self.convert_loss_to_float_dict_format(loss_parsed)
        if isinstance(value, dict):
            self.insert_metric_result_into_history(loss_type_name, sum(value.values()))
        self.insert_metric_result_into_history(loss_type_name, value)
        if self.is_main_process() and self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(f"{loss_print_description} loss ({loss_type_name}): {format_value(value)}")

    def parse_loss(self, loss_record: List):
        """Mean of a list of batch losses (tensors or ``MultiLoss``), in float64, on its device."""
        if isinstance(loss_record[0], MultiLoss):
            return MultiLoss({name: self.parse_loss([loss[name] for loss in loss_record])
                              for name in loss_record[0]}, loss_record[0].loss_optimizer_map)
        if loss_record[0].device.type == "cpu":  # floats: cheaper than stacking 0-d tensors
            return torch.tensor(mean_of_floats(losses_to_floats(loss_record)), dtype=torch.float64)
        return torch.stack(loss_record).double().mean()

    @staticmethod
    def convert_loss_to_float_dict_format(loss) -> Union[float, dict]:
        """A tensor loss as a float, a ``MultiLoss`` as a ``{name: float}`` dict."""
        if isinstance(loss, MultiLoss):
            return loss.item()
        return float(loss)

    def insert_metric_result_into_history(self, metric_name: str, metric_result) -> None:
        """Append a metric result (float, or dict stored as ``<name>_<key>``) to the history."""
        self.train_history.insert_single_result_into_history(metric_name, metric_result)

    # ------------------------------------------------------------------ evaluation & prediction
    def evaluate_loss_on_train_set(self, force_prediction: bool = False, float_dict_format: bool = False):
        """Loss over the whole training set (sample-weighted mean), cached until the weights change.

        Args:
            force_prediction: recompute even when a cached value exists.
            float_dict_format: return a float (``MultiLoss``: a dict) instead of a tensor.

        Returns:
            The loss on the CPU: a tensor / ``MultiLoss``, or a float / dict.
        """
        return self._cached_loss("train", self.train_loader, force_prediction, float_dict_format)

    def evaluate_loss_on_validation_set(self, force_prediction: bool = False,
                                        float_dict_format: bool = False):
        """Loss over the whole validation set; see :meth:`evaluate_loss_on_train_set`."""
        return self._cached_loss("validation", self.validation_loader, force_prediction, float_dict_format)

    def evaluate_loss_on_test_set(self, force_prediction: bool = False, float_dict_format: bool = False):
        """Loss over the whole test set; see :meth:`evaluate_loss_on_train_set`."""
        return self._cached_loss("test", self.test_loader, force_prediction, float_dict_format)

    def _cached_loss(self, dataset: str, loader, force: bool, float_dict_format: bool):
        loss = self._cached(dataset, "loss", loader, force, lambda: self.evaluate_loss_with_model(loader, dataset))
        return self.convert_loss_to_float_dict_format(loss) if float_dict_format else loss

    def _cached(self, dataset: str, kind: str, loader, force: bool, compute):
        """The ``kind`` result of ``dataset`` for the current weights: from the store, else ``compute()`` stored."""
        validation.require_loader(loader, dataset)
        value = None if force else self.prediction_store.get(dataset, kind, self.weights_version)
        if value is None:
            value = compute()
            self.prediction_store.put(dataset, kind, self.weights_version, value)
        return value

    def evaluate_loss_with_model(self, data_loader, dataset: str):
        """Uncached :meth:`evaluate_model_loss` on CPU, tagged with the dataset type."""
        return _to_cpu(self.evaluate_model_loss(data_loader, dataset_info={"type": dataset}))

    def evaluate_model_loss(self, data_loader, move_to_cpu: bool = False,
                            dataset_info: Optional[dict] = None):
        """Loss of the model over a data set: the sample-weighted mean of the batch losses.

        A model whose loss is a ``LossSum`` (``loss_weighting='tokens'``) gets the mean over all items.

        The data set is read in order and whole (shuffling and ``drop_last`` are not applied);
        under DDP every sample is counted exactly once across the ranks. Evaluation does not
        draw from the training run's random number generators.

        Args:
            data_loader: the data.
            move_to_cpu: return the loss on the CPU.
            dataset_info: description of the data set, e.g. ``{'type': 'validation'}``.

        Returns:
            A float64 tensor, or a ``MultiLoss`` of them.
        """
        loader = self._eval_loader(data_loader)
        loss_sum, num_samples = None, 0
        with self._evaluation_mode(loader), torch.inference_mode():
            for batch_idx, batch_data in enumerate(loader):
                validation.require_batch_samples(batch_data, _loader_name(dataset_info), batch_idx)
                with self.amp_handler.autocast():
                    try:
                        loss = self.feed.get_loss_eval(batch_data, self.criterion, self.device)
                    except Exception as error:
                        validation.explain_batch_error(self.feed_def, batch_data, error)
                        raise
                loss, multiplier, count = loss_terms(loss, batch_data)  # a LossSum: its sum and item count
                loss_sum, num_samples = weighted_sum(loss_sum, loss, multiplier), num_samples + count
        validation.require_samples(num_samples, dataset_info)
        loss_sum, num_samples = self.strategy.reduce_eval(loss_sum, num_samples)
        loss = loss_sum / num_samples
        return _to_cpu(loss) if move_to_cpu else loss

    def predict_on_train_set(self, force_prediction: bool = False, execute_callbacks: bool = False):
        """Predictions on the training set (in data-set order), cached until the weights change.

        Args:
            force_prediction: recompute even when cached predictions exist.
            execute_callbacks: call ``on_after_batch_prediction`` for every batch.

        Returns:
            ``(y_pred, y_true, metadata)``, on the CPU.
        """
        return self._cached_predictions("train", self.train_loader, force_prediction, execute_callbacks)

    def predict_on_validation_set(self, force_prediction: bool = False, execute_callbacks: bool = False):
        """Predictions on the validation set; see :meth:`predict_on_train_set`."""
        return self._cached_predictions("validation", self.validation_loader, force_prediction,
                                        execute_callbacks)

    def predict_on_test_set(self, force_prediction: bool = False, execute_callbacks: bool = False):
        """Predictions on the test set; see :meth:`predict_on_train_set`."""
        return self._cached_predictions("test", self.test_loader, force_prediction, execute_callbacks)

    def _cached_predictions(self, dataset: str, loader, force: bool, execute_callbacks: bool):
        return self._cached(dataset, "predictions", loader, force, lambda: self.predict_with_model(
            loader, execute_callbacks, move_to_cpu=True, dataset_info={"type": dataset}))

    def predict_with_model(self, data_loader, execute_callbacks: bool = False, move_to_cpu: bool = False,
                           dataset_info: Optional[dict] = None):
        """Run a data set through the model and collect the predictions, in data-set order.

        Args:
            data_loader: the data.
            execute_callbacks: call ``on_after_batch_prediction`` for every batch.
            move_to_cpu: move each batch's predictions to the CPU as they are made.
            dataset_info: description of the data set, passed to the callbacks.

        Returns:
            ``(y_pred, y_true, metadata)``: the collected predictions, targets and metadata.
        """
        loader = self._eval_loader(data_loader)
        # With the default collate / transform the collectors fill preallocated tensors: the peak
        # holds the result and one batch, not a second copy of the outputs (see PredictionCollector).
        num_samples = expected_num_samples(loader)
        y_pred, y_true = (PredictionCollector(self.collate_batch_pred_fn, self.pred_transform_fn,
                                              num_samples, move_to_cpu) for _ in range(2))
        metadata = None
        # no_grad, not inference_mode: what is returned (and handed to callbacks) stays an ordinary
        # tensor, and get_predictions may use autograd itself (torch.enable_grad()).
        with self._evaluation_mode(loader), torch.no_grad():
            for batch_data in loader:
                with self.amp_handler.autocast():
                    pred, true, meta = self.feed.get_predictions(batch_data, self.device)
                if execute_callbacks:
                    if move_to_cpu:
                        pred, true = _to_cpu(pred), _to_cpu(true)
                    self.callbacks_handler.execute("on_after_batch_prediction", pred, true, meta,
                                                   dataset_info)
                batch_samples = batch_size_of(batch_data)
                y_pred.add(pred, batch_samples)
                y_true.add(true, batch_samples)
                metadata = merge_metadata(metadata, meta)
                del pred, true, meta  # copied: free them before the next batch is computed
        y_pred, y_true = y_pred.result(), y_true.result()
        dataset = getattr(loader, "dataset", None)
        dataset_len = len(dataset) if hasattr(dataset, "__len__") else None
        return self.strategy.gather_predictions(y_pred, y_true, metadata, dataset_len)

    def _eval_loader(self, loader):
        key = id(loader)
        if key not in self._eval_loaders:
            self._eval_loaders[key] = (loader, self.strategy.prepare_eval_loader(loader))
        return self._eval_loaders[key][1]

    @contextlib.contextmanager
    def _evaluation_mode(self, loader):
        was_training = self.module.training
        self.module.eval()
        try:
            with rng_fork(loader, self.device):
                yield
        finally:
            self.module.train(was_training)


def _loader_name(dataset_info: Optional[dict]) -> str:
    dataset = (dataset_info or {}).get("type")
    return f"{dataset}_loader" if dataset in ("train", "validation", "test") else "the data loader"


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, MultiLoss):
        return value.map_values(lambda v: v.cpu())
    return value
