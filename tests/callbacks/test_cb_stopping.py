"""EarlyStopping, ThresholdEarlyStopping, TerminateOnNaN and AllPredictionsSame."""
import math

import pytest
import torch
from torch import nn

from aitoolbox.torchtrain.callbacks.basic import (
    AllPredictionsSame, EarlyStopping, TerminateOnNaN, ThresholdEarlyStopping)
from aitoolbox.torchtrain.callbacks.metric_watch import infer_greater_is_better
from aitoolbox.torchtrain.model import TTModel
from tests.callbacks.cb_testkit import HistoryFeeder, LogCapture, Recorder, make_loop, mlp

NUM_EPOCHS = 10


def run_fed(metric, values, stopper):
    """Train up to NUM_EPOCHS epochs with ``metric`` fed ``values``; returns epochs trained."""
    loop = make_loop(end_auto_eval=False, num_train=16)
    loop.fit(num_epochs=NUM_EPOCHS, callbacks=[HistoryFeeder(metric, values), stopper])
    return loop.epoch


@pytest.mark.parametrize("metric, values, kwargs, epochs_trained", [
    # maximised: best 0.6 at epoch 1; epochs 2, 3 tolerated, epoch 4 (3rd in a row) stops
    ("val_accuracy", [0.5, 0.6, 0.6, 0.55, 0.58, 0.9] + [1.0] * 4, dict(patience=2), 5),
    # minimised, patience 0: the first epoch without improvement stops
    ("val_loss", [1.0, 0.9, 0.95, 0.1] + [0.0] * 6, dict(patience=0), 3),
    # patience 1: one bad epoch is tolerated, the second in a row stops (aitoolbox 1.8)
    ("val_loss", [1.0, 0.9, 0.95, 0.1] + [0.0] * 6, dict(patience=1), 7),
    ("val_loss", [1.0, 0.9, 0.95, 0.96] + [0.0] * 6, dict(patience=1), 4),
    # min_delta: 0.97 is not better than 1.0 by more than 0.05
    ("val_loss", [1.0, 0.97, 0.5] + [0.0] * 7, dict(patience=0, min_delta=0.05), 2),
    # an improvement resets the counter: bad at 2, good at 3, bad at 4, 5, 6 -> stop after 6
    ("val_loss", [1.0, 0.8, 0.9, 0.7, 0.75, 0.72, 0.71, 0.1, 0.1, 0.1], dict(patience=2), 7),
    # explicit direction overrides the name
    ("val_loss", [1.0, 2.0, 3.0, 2.5] + [9.0] * 6, dict(patience=0, greater_is_better=True), 4),
    # always improving: never stops
    ("val_loss", [10.0 - i for i in range(10)], dict(patience=0), NUM_EPOCHS),
    # NaN never improves
    ("val_loss", [1.0] + [float("nan")] * 3 + [0.0] * 6, dict(patience=2), 4),
])
def test_early_stopping_stops_after_the_right_epoch(metric, values, kwargs, epochs_trained):
    stopper = EarlyStopping(monitor=metric, **kwargs)
    assert run_fed(metric, values, stopper) == epochs_trained
    if epochs_trained < NUM_EPOCHS:
        assert stopper.stopped_epoch == epochs_trained - 1


def test_direction_inferred_from_metric_name():
    assert not infer_greater_is_better("val_loss")
    assert not infer_greater_is_better("train_end_test_loss")
    assert not infer_greater_is_better("val_MSE")
    assert infer_greater_is_better("val_accuracy")
    assert infer_greater_is_better("val_f1")


def test_early_stopping_on_real_val_loss_with_lr_that_diverges():
    loop = make_loop(lr=0.5)  # SGD with this lr diverges on the regression problem
    loop.fit(num_epochs=8, callbacks=[EarlyStopping(monitor="val_loss", patience=1)])
    val = loop.train_history["val_loss"]
    assert loop.epoch == len(val) < 8
    assert val[-1] >= min(val[:-1])


def test_early_stopping_state_survives_a_checkpoint(tmp_path):
    values = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98] + [0.0] * 4  # stops after epoch 5 with patience 3
    path = str(tmp_path / "ckpt.pt")
    saver = Recorder("on_epoch_end", lambda loop: loop.save_checkpoint(path) if loop.epoch == 2 else None)
    loop = make_loop(end_auto_eval=False, num_train=16)
    loop.fit(num_epochs=3, callbacks=[HistoryFeeder("val_loss", values), EarlyStopping(patience=3), saver])
    resumed = make_loop(end_auto_eval=False, num_train=16).load_checkpoint(path)
    stopper = EarlyStopping(patience=3)
    resumed.fit(num_epochs=NUM_EPOCHS, callbacks=[HistoryFeeder("val_loss", values), stopper])
    assert stopper.wait == 4 and resumed.epoch == 6  # 1 bad epoch before the checkpoint + 3 after


def test_early_stopping_warns_about_a_missing_metric():
    with LogCapture() as logs:
        assert run_fed("other", [0.0] * NUM_EPOCHS, EarlyStopping(monitor="val_acc")) == NUM_EPOCHS
    assert "val_acc" in logs.text() and logs.text().count("not in the training history") == 1


@pytest.mark.parametrize("values, kwargs, epochs_trained", [
    ([0.9, 0.8, 1.2] + [0.1] * 7, dict(threshold=1.0), 3),           # first value above 1.0 stops
    ([0.9, 1.2, 0.8, 1.3, 1.4, 0.1] + [0.1] * 4, dict(threshold=1.0, patience=2), NUM_EPOCHS),
    ([0.9, 1.2, 0.8, 1.3, 1.4, 1.5] + [0.1] * 4, dict(threshold=1.0, patience=2), 6),
    ([1.0] * 10, dict(threshold=1.0), NUM_EPOCHS),                   # equal to the threshold is fine
    ([0.5] * 10, dict(threshold=1.0), NUM_EPOCHS),
    ([0.5, 0.85, 0.8, 0.95] + [1.0] * 6, dict(threshold=0.9, greater_is_better=True, patience=2), 3),
    ([0.5, 0.95, 0.85, 0.99] + [1.0] * 6, dict(threshold=0.9, greater_is_better=True, patience=2), NUM_EPOCHS),
])
def test_threshold_early_stopping(values, kwargs, epochs_trained):
    monitor = "val_acc" if kwargs.get("greater_is_better") else "val_loss"
    assert run_fed(monitor, values, ThresholdEarlyStopping(monitor=monitor, **kwargs)) == epochs_trained


class NaNAtBatch(TTModel):
    """Regression model whose loss is NaN on the batches listed; gradients stay finite."""

    def __init__(self, nan_batches):
        super().__init__()
        self.net = mlp()
        self.nan_batches, self.calls = set(nan_batches), 0

    def forward(self, x):
        return self.net(x)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        loss = criterion(self(x), y)
        if self.training:
            if self.calls in self.nan_batches:
                loss = loss + torch.tensor(float("nan"))  # a constant: gradients stay finite
            self.calls += 1
        return loss

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x), y, None


@pytest.mark.parametrize("check_every, batches_done", [(1, 3), (4, 4), (None, 3)])
def test_terminate_on_nan_stops_at_the_check_after_the_nan_batch(check_every, batches_done):
    model = NaNAtBatch(nan_batches=[2])
    loop = make_loop(model=model)  # 6 batches per epoch
    loop.fit(num_epochs=3, callbacks=[TerminateOnNaN(check_every_n_batches=check_every)])
    assert loop.total_iteration_idx == batches_done
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_without_terminate_on_nan_training_goes_on():
    loop = make_loop(model=NaNAtBatch(nan_batches=[2]))
    loop.fit(num_epochs=3)
    assert loop.total_iteration_idx == 18


def test_terminate_on_nan_on_a_diverging_run():
    loop = make_loop(lr=1e6)
    with LogCapture() as logs:
        loop.fit(num_epochs=5, callbacks=[TerminateOnNaN()])
    assert loop.epoch == 1 and loop.total_iteration_idx < 6
    assert not math.isfinite(loop.train_history["loss"][-1])
    assert "TerminateOnNaN" in logs.text()


def test_terminate_on_nan_checks_the_history_metric():
    loop = make_loop(end_auto_eval=False, num_train=16)
    values = [1.0, float("inf"), 1.0, 1.0]
    loop.fit(num_epochs=4, callbacks=[HistoryFeeder("loss", values), TerminateOnNaN(monitor="loss")])
    assert loop.epoch == 2


class ConstantModel(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.dummy * x[:, :1] + self.value


@pytest.mark.parametrize("model_value, callback_value, triggered", [
    (0.0, 0.0, True), (3.0, None, True), (3.0, 0.0, False)])
def test_all_predictions_same(model_value, callback_value, triggered):
    loop = make_loop(model=ConstantModel(model_value), lr=0.0)
    callback = AllPredictionsSame(value=callback_value, stop_training=True)
    loop.fit(num_epochs=3, callbacks=[callback])
    assert (callback.triggered_epochs == [0]) is triggered
    assert loop.epoch == (1 if triggered else 3)


def test_all_predictions_same_ignores_a_real_model():
    loop = make_loop()
    callback = AllPredictionsSame(value=None, stop_training=True, dataset="train")
    loop.fit(num_epochs=2, callbacks=[callback])
    assert callback.triggered_epochs == [] and loop.epoch == 2
