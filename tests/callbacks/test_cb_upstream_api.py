"""aitoolbox 1.8's callback API surface: argument order, attributes and methods user code relies on."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from aitoolbox.experiment.result_package.basic_packages import RegressionResultPackage
from aitoolbox.experiment.result_package.torch_metrics_packages import TorchMetricsPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractExperimentCallback
from aitoolbox.torchtrain.callbacks.model_save import ModelCheckpoint
from aitoolbox.torchtrain.callbacks.performance_eval import ModelPerformanceEvaluation
from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint
from tests.callbacks.cb_testkit import make_loop, mlp, regression_dataset


def _tracking_loop(tmp_path, **kwargs):
    model = mlp()
    return TrainLoopCheckpoint(model, DataLoader(regression_dataset(), batch_size=8), None, None,
                               torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.MSELoss(),
                               "proj", "exp", str(tmp_path), {}, cloud_save_mode=None,
                               lazy_experiment_save=True, show_progress=False, **kwargs)


def test_experiment_callback_positional_order_and_attributes(tmp_path):
    # 1.8's order: (name, project, experiment, local path, cloud_save_mode, bucket, prefix, order)
    callback = AbstractExperimentCallback("cb", "proj", "exp", str(tmp_path), "local", "bkt", "pre", 7)
    assert (callback.project_name, callback.experiment_name) == ("proj", "exp")
    assert callback.local_model_result_folder_path == str(tmp_path)
    assert (callback.cloud_save_mode, callback.bucket_name, callback.cloud_dir_prefix) == ("local", "bkt", "pre")
    assert callback.execution_order == 7
    assert callback.store.path.startswith(str(tmp_path))
    assert not callback.store.uses_cloud

    bare = AbstractExperimentCallback("cb")
    assert bare.project_name is None and bare.experiment_name is None
    assert bare.local_model_result_folder_path is None and bare.bucket_name is None


def test_try_infer_experiment_details_from_tracking_loop(tmp_path):
    loop = _tracking_loop(tmp_path)
    callback = AbstractExperimentCallback("cb")
    callback.register_train_loop_object(loop)
    callback.try_infer_experiment_details(infer_cloud_details=True)
    assert (callback.project_name, callback.experiment_name) == ("proj", "exp")
    assert callback.local_model_result_folder_path == str(tmp_path)
    assert (callback.cloud_save_mode, callback.bucket_name, callback.cloud_dir_prefix) == \
        (loop.cloud_save_mode, loop.bucket_name, loop.cloud_dir_prefix)


def test_try_infer_keeps_given_details_and_cloud_only_when_all_none(tmp_path):
    loop = _tracking_loop(tmp_path)
    callback = AbstractExperimentCallback("cb", "mine", "own", str(tmp_path / "x"), None, "my-bucket")
    callback.register_train_loop_object(loop)
    callback.try_infer_experiment_details(infer_cloud_details=True)
    assert (callback.project_name, callback.experiment_name) == ("mine", "own")
    assert callback.bucket_name == "my-bucket" and callback.cloud_dir_prefix is None  # not all three None


def test_try_infer_on_plain_loop_raises_attribute_error():
    callback = AbstractExperimentCallback("cb")
    callback.register_train_loop_object(make_loop())
    with pytest.raises(AttributeError, match="project_name.*tracking TrainLoop"):
        callback.try_infer_experiment_details(infer_cloud_details=False)


def test_evaluate_model_performance_stores_metrics():
    loop = make_loop()
    callback = ModelPerformanceEvaluation(RegressionResultPackage(), {}, on_train_data=True, on_val_data=True)
    callback.register_train_loop_object(loop)
    callback.evaluate_model_performance()
    callback.evaluate_model_performance(prefix="x_")
    history = loop.train_history
    assert len(history["val_Mean_squared_error"]) == 1 and len(history["train_Mean_squared_error"]) == 1
    assert len(history["x_val_Mean_squared_error"]) == 1


class _CountingMetric:
    """A torchmetrics-like metric: callable, with reset()."""

    def __init__(self):
        self.resets = 0

    def __call__(self, y_pred, y_true):
        return torch.mean((y_pred - y_true) ** 2)

    def reset(self):
        self.resets += 1


def test_torch_metrics_state_reset_at_every_epoch_end():
    metric = _CountingMetric()
    callback = ModelPerformanceEvaluation(TorchMetricsPackage(metric), {}, on_train_data=True, on_val_data=True)
    loop = make_loop()
    loop.fit(num_epochs=3, callbacks=[callback])
    assert metric.resets == 3  # the validation package's metric, once per epoch
    assert callback.train_result_package.metric.resets == 3  # the train package has its own copy
    assert len(loop.train_history["val__CountingMetric_PTLMetrics"]) == 3


def test_checkpoint_needs_optimizer_state_dict_at_registration(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.state_dict = None  # an optimizer that cannot be checkpointed
    loop = make_loop(model, optimizer=optimizer)
    callback = ModelCheckpoint("proj", "exp", str(tmp_path), {}, cloud_save_mode=None)
    with pytest.raises(AttributeError, match="state_dict"):
        loop.fit(num_epochs=1, callbacks=[callback])
    assert not (tmp_path / "proj").exists()  # failed before any work
