"""PyTorchModelPredictor and the prediction-only TrainLoop it is built on."""
import pytest
import torch
from torch import nn

from _loop_helpers import loader, make_data, make_mlp
from aitoolbox import TrainLoop
from aitoolbox.experiment.core_metrics.classification import AccuracyMetric
from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.model_predict import PyTorchModelPredictor


def _hand_predictions(model, data_loader):
    model.eval()
    with torch.no_grad():
        outputs = [(model(x), y) for x, y in data_loader]
    return torch.cat([o for o, _ in outputs]), torch.cat([y for _, y in outputs])


class CountForwards(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


class RecordBatches(AbstractCallback):
    def __init__(self):
        super().__init__("record")
        self.batches, self.epoch_ends = [], 0

    def on_after_batch_prediction(self, y_pred, y_true, metadata, dataset_info):
        self.batches.append((len(y_pred), dataset_info))

    def on_epoch_end(self):
        self.epoch_ends += 1


def test_predictions_equal_a_hand_loop_in_data_set_order_and_are_cached():
    data = make_data(47)
    model = CountForwards(make_mlp())
    predictor = PyTorchModelPredictor(model, loader(data, 10, shuffle=True))
    y_pred, y_true, metadata = predictor.model_predict()
    ref_pred, ref_true = _hand_predictions(model.model, loader(data, 10))
    assert torch.equal(y_true, data.tensors[1]) and torch.equal(y_true, ref_true)
    assert torch.allclose(y_pred, ref_pred, atol=0, rtol=0)
    assert metadata is None and model.calls == 5
    assert predictor.model_predict()[0] is y_pred and model.calls == 5  # cached: the weights did not change
    predictor.model_predict(force_prediction=True)
    assert model.calls == 10
    assert model.training  # the model's mode is restored


def test_loss_is_the_sample_weighted_mean_and_follows_the_criterion():
    data = make_data(23)
    model = make_mlp()
    predictor = PyTorchModelPredictor(model, loader(data, 10))
    model.eval()
    with torch.no_grad():
        expected = nn.CrossEntropyLoss(reduction="sum")(model(data.tensors[0]), data.tensors[1]) / 23
    loss = predictor.model_get_loss(nn.CrossEntropyLoss())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert predictor.model_get_loss(nn.CrossEntropyLoss(), float_dict_format=True) == pytest.approx(loss.item())
    smoothed = predictor.model_get_loss(nn.CrossEntropyLoss(label_smoothing=0.5))
    assert smoothed.item() != pytest.approx(loss.item())  # a new criterion is not served from the cache


def test_result_package_and_metrics():
    data = make_data(30)
    model = make_mlp()
    predictor = PyTorchModelPredictor(model, loader(data, 8))
    ref_pred, _ = _hand_predictions(model, loader(data, 8))
    expected_acc = (ref_pred.argmax(1) == data.tensors[1]).double().mean().item()

    package = predictor.evaluate_result_package(ClassificationResultPackage(), return_result_package=True)
    assert isinstance(package, ClassificationResultPackage)
    results = predictor.evaluate_result_package(ClassificationResultPackage(), return_result_package=False)
    assert results == package.get_results()

    metric = predictor.evaluate_metric(AccuracyMetric)
    assert isinstance(metric, AccuracyMetric)
    metric_dict = predictor.evaluate_metric(AccuracyMetric, return_metric=False)
    assert list(metric_dict.values())[0] == pytest.approx(expected_acc)
    metrics = predictor.evaluate_metric_list([AccuracyMetric, AccuracyMetric])
    assert len(metrics) == 2 and all(isinstance(m, AccuracyMetric) for m in metrics)
    assert predictor.evaluate_metric_list([AccuracyMetric], return_metric_list=False) == metric_dict


def test_callbacks_run_on_batch_predictions_and_on_request():
    cb = RecordBatches()
    predictor = PyTorchModelPredictor(make_mlp(), loader(make_data(25), 10), callbacks=[cb])
    predictor.model_predict(execute_callbacks=True)
    assert cb.batches == [(10, {"type": "test"}), (10, {"type": "test"}), (5, {"type": "test"})]
    predictor.execute_epoch_end_callbacks()
    assert cb.epoch_ends == 1


def test_dp_prediction_equals_single():
    data = make_data(20)
    model = make_mlp()
    single = PyTorchModelPredictor(model, loader(data, 6)).model_predict()[0]
    dp = PyTorchModelPredictor(model, loader(data, 6), gpu_mode="dp").model_predict()[0]
    assert torch.allclose(single, dp.to(single.device))


def test_ddp_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="gpu_mode must be one of"):
        PyTorchModelPredictor(make_mlp(), loader(make_data(10)), gpu_mode="ddp")


# ---------------------------------------------------------------- prediction-only TrainLoop (UPSTREAM_API 3)
def test_prediction_only_train_loop_predicts_and_refuses_fit_before_any_work():
    model = CountForwards(make_mlp())
    data = make_data(12)
    loop = TrainLoop(model, None, loader(data, 5), None, None, None, show_progress=False)
    y_pred, y_true, _ = loop.predict_on_validation_set()
    assert torch.equal(y_true, data.tensors[1]) and model.calls == 3
    with pytest.raises(ValueError, match="train_loader is None: fit"):
        loop.fit(num_epochs=1)
    assert model.calls == 3 and loop.epoch == 0


def test_train_loop_without_optimizer_evaluates_but_refuses_fit():
    model = make_mlp()
    loop = TrainLoop(model, loader(make_data(20)), None, None, None, nn.CrossEntropyLoss(), show_progress=False)
    assert loop.evaluate_loss_on_train_set(float_dict_format=True) > 0
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="optimizer is None: fit"):
        loop.fit(num_epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        TrainLoop(model, None, None, None, "adam", None)
