"""``PyTorchModelPredictor``: predict with and evaluate a trained model over one loader.

Built on a prediction-only :class:`~aitoolbox.torchtrain.train_loop.train_loop.TrainLoop` (no
training set, no optimizer), whose *test* set is the given loader: predictions come back in
data-set order, batch predictions are collected like the TrainLoop's, and they are cached until
the weights change (predicting twice runs the model once). ``gpu_mode='dp'`` splits every batch
over the visible GPUs.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from aitoolbox.torchtrain.train_loop.train_loop import TrainLoop
from aitoolbox.torchtrain.train_loop.components.amp_handler import UseAmp
from aitoolbox.torchtrain.train_loop.components.pred_collate_fns import append_predictions, torch_cat_transf

_GPU_MODES = ("single", "dp")


class PyTorchModelPredictor:
    """Predictions, loss and metrics of a model over a data loader (the original aitoolbox's API).

    Args:
        model: a ``TTModel``, a ``ModelWrap`` or a plain ``nn.Module``.
        data_loader: the data to predict on (a ``DataLoader`` or any iterable of batches).
        callbacks: callbacks registered with the underlying TrainLoop (their
            ``on_after_batch_prediction`` runs with ``execute_callbacks=True``).
        gpu_mode: ``'single'`` (CPU or one GPU) or ``'dp'`` (DataParallel over the visible GPUs).
        cuda_device_idx: the CUDA device in ``'single'`` mode; None: the default one.
        use_amp: predict under autocast (as the TrainLoop's ``use_amp``).
        collate_batch_pred_fn: ``fn(batch_pred, all_preds)`` collecting batch predictions.
        pred_transform_fn: ``fn(all_preds)`` applied once to the collected predictions.

    Attributes:
        train_loop: the prediction-only TrainLoop doing the work.

    Raises:
        ValueError: ``gpu_mode='ddp'`` (prediction runs in one process; use a TrainLoop in DDP).
    """

    def __init__(self, model, data_loader, callbacks: Optional[Sequence] = None, gpu_mode: str = "single",
                 cuda_device_idx: Optional[int] = None, use_amp: UseAmp = False,
                 collate_batch_pred_fn: Callable = append_predictions,
                 pred_transform_fn: Callable = torch_cat_transf):
        if gpu_mode not in _GPU_MODES:
            raise ValueError(f"PyTorchModelPredictor gpu_mode must be one of {_GPU_MODES}, got {gpu_mode!r}. "
                             "Multi-process (DDP) evaluation runs inside TrainLoop.fit(gpu_mode='ddp').")
        self.model = model
        self.data_loader = data_loader
        self.train_loop = TrainLoop(model, None, None, data_loader, None, None,
                                    collate_batch_pred_fn=collate_batch_pred_fn,
                                    pred_transform_fn=pred_transform_fn, gpu_mode=gpu_mode,
                                    cuda_device_idx=cuda_device_idx, use_amp=use_amp, show_progress=False)
        self.train_loop.callbacks_handler.register_callbacks(callbacks)
        self._loss_criterion = None

    @property
    def device(self):
        """The device the model predicts on."""
        return self.train_loop.device

    def model_predict(self, force_prediction: bool = False, execute_callbacks: bool = False):
        """The model's predictions over the loader, in data-set order (cached).

        Args:
            force_prediction: recompute even when cached.
            execute_callbacks: call the callbacks' ``on_after_batch_prediction`` for every batch.

        Returns:
            ``(y_pred, y_true, metadata)`` on the CPU.
        """
        return self.train_loop.predict_on_test_set(force_prediction=force_prediction,
                                                   execute_callbacks=execute_callbacks)

    def model_get_loss(self, loss_criterion, float_dict_format: bool = False):
        """The model's loss over the loader (sample-weighted mean of the batch losses).

        Args:
            loss_criterion: the criterion handed to the model's ``get_loss_eval``.
            float_dict_format: return a float (a dict for a ``MultiLoss``) instead of a tensor.

        Returns:
            The loss on the CPU; cached for the same criterion.
        """
        changed = loss_criterion is not self._loss_criterion
        self.train_loop.criterion = self._loss_criterion = loss_criterion
        return self.train_loop.evaluate_loss_on_test_set(force_prediction=changed,
                                                         float_dict_format=float_dict_format)

    def evaluate_result_package(self, result_package, return_result_package: bool = True):
        """Prepare ``result_package`` with the model's predictions.

        Args:
            result_package: an ``AbstractResultPackage``.
            return_result_package: return the package (else its results dict).

        Returns:
            The prepared package, or ``result_package.get_results()``.
        """
        y_pred, y_true, metadata = self.model_predict()
        result_package.prepare_result_package(y_true, y_pred, hyperparameters={}, additional_results=metadata)
        return result_package if return_result_package else result_package.get_results()

    def evaluate_metric(self, metric_class, return_metric: bool = True):
        """Evaluate one metric on the predictions.

        Args:
            metric_class: an ``AbstractBaseMetric`` subclass (the class, not an instance),
                called as ``metric_class(y_true, y_pred)``.
            return_metric: return the metric object (else its ``get_metric_dict()``).
        """
        y_pred, y_true, _ = self.model_predict()
        metric = metric_class(y_true, y_pred)
        return metric if return_metric else metric.get_metric_dict()

    def evaluate_metric_list(self, metrics_class_list: Sequence, return_metric_list: bool = True):
        """Evaluate several metrics on the same (once computed) predictions.

        Args:
            metrics_class_list: ``AbstractBaseMetric`` subclasses.
            return_metric_list: return the list of metric objects (else one merged results dict).
        """
        y_pred, y_true, _ = self.model_predict()
        metrics = [metric_class(y_true, y_pred) for metric_class in metrics_class_list]
        if return_metric_list:
            return metrics
        merged: dict = {}
        for metric in metrics:
            merged.update(metric.get_metric_dict())
        return merged

    def evaluate_model(self, result_package, project_name: str, experiment_name: str,
                       local_model_result_folder_path: str, cloud_save_mode: Optional[str] = "s3",
                       bucket_name: str = "model-result", cloud_dir_prefix: str = "",
                       save_true_pred_labels: bool = False) -> None:
        """Evaluate ``result_package`` and save its results as an experiment (locally, S3 or GCS).

        The results go to ``<local_model_result_folder_path>/<project_name>/<experiment_name>_<timestamp>/``
        (and its cloud mirror), written by the results savers of
        :mod:`aitoolbox.experiment.local_save.local_results_save`, :mod:`aitoolbox.cloud.AWS.results_save`
        and :mod:`aitoolbox.cloud.GoogleCloud.results_save`.

        Args:
            result_package: an ``AbstractResultPackage``.
            project_name: project folder name.
            experiment_name: experiment name.
            local_model_result_folder_path: the results root folder.
            cloud_save_mode: ``'s3'`` / ``'aws_s3'`` / ``'aws'``, ``'gcs'`` / ``'google_storage'`` /
                ``'google storage'``; anything else saves locally only.
            bucket_name: the cloud bucket.
            cloud_dir_prefix: key prefix inside the bucket.
            save_true_pred_labels: also save ``y_true`` / ``y_pred``.
        """
        from aitoolbox.experiment.experiment_folder import new_timestamp
        from aitoolbox.experiment.local_save.local_results_save import LocalResultsSaver
        from aitoolbox.experiment.training_history import TrainingHistory

        timestamp = new_timestamp()
        LocalResultsSaver.create_experiment_local_results_folder(project_name, experiment_name, timestamp,
                                                                 local_model_result_folder_path)
        set_dir = getattr(result_package, "set_experiment_dir_path_for_additional_results", None)
        if set_dir is not None:
            set_dir(project_name=project_name, experiment_name=experiment_name, experiment_timestamp=timestamp,
                    local_model_result_folder_path=local_model_result_folder_path)
        evaluated = self.evaluate_result_package(result_package, return_result_package=True)
        history = TrainingHistory(has_validation=False, has_test=False)
        for metric_name, value in evaluated.get_results().items():
            history.insert_single_result_into_history(metric_name, value)
        saver = _results_saver(cloud_save_mode, bucket_name, cloud_dir_prefix, local_model_result_folder_path)
        saver.save_experiment_results(evaluated, training_history=history, project_name=project_name,
                                      experiment_name=experiment_name, experiment_timestamp=timestamp,
                                      save_true_pred_labels=save_true_pred_labels)

    def execute_batch_end_callbacks(self) -> None:
        """Call the registered callbacks' ``on_batch_end``."""
        self._execute("on_batch_end")

    def execute_epoch_end_callbacks(self) -> None:
        """Call the registered callbacks' ``on_epoch_end``."""
        self._execute("on_epoch_end")

    def _execute(self, hook: str) -> None:
        if not self.train_loop.callbacks:
            self.train_loop.logger.info("%s: no callbacks registered, nothing to execute.", hook)
        self.train_loop.callbacks_handler.execute(hook)


def _results_saver(cloud_save_mode: Any, bucket_name: str, cloud_dir_prefix: str, local_root: str):
    from aitoolbox.cloud import gcs_available_options, s3_available_options

    if cloud_save_mode in s3_available_options:
        from aitoolbox.cloud.AWS.results_save import S3ResultsSaver
        return S3ResultsSaver(bucket_name, cloud_dir_prefix, local_root)
    if cloud_save_mode in gcs_available_options:
        from aitoolbox.cloud.GoogleCloud.results_save import GoogleStorageResultsSaver
        return GoogleStorageResultsSaver(bucket_name, cloud_dir_prefix, local_root)
    from aitoolbox.experiment.local_save.local_results_save import LocalResultsSaver
    return LocalResultsSaver(local_root)
