"""SaveBestModel: keeps the best epoch's weights by any history metric and loads them at the end."""
import copy

import pytest
import torch

from aitoolbox.torchtrain.callbacks.basic import FunctionOnTrainLoop
from aitoolbox.torchtrain.callbacks.save_best import SaveBestModel
from tests.callbacks.cb_testkit import HistoryFeeder, LogCapture, Recorder, make_loop


def snapshot(loop):
    return copy.deepcopy(loop.model.state_dict())


def fit_with(values, save_best, num_epochs=4, metric="val_acc"):
    loop = make_loop()
    recorder = Recorder("on_epoch_end", snapshot)
    loop.fit(num_epochs=num_epochs, callbacks=[HistoryFeeder(metric, values), save_best, recorder])
    return loop, recorder.records


def assert_same_weights(a, b):
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("metric, values, best_epoch", [
    ("val_acc", [0.1, 0.5, 0.3, 0.2], 1),     # maximised by name
    ("val_loss_x", [0.9, 0.5, 0.3, 0.4], 2),  # minimised by name
])
def test_save_best_model_loads_the_best_epoch_at_the_end(metric, values, best_epoch):
    save_best = SaveBestModel(monitor=metric)
    loop, epoch_weights = fit_with(values, save_best, metric=metric)
    assert save_best.best_epoch == best_epoch and save_best.best_value == values[best_epoch]
    assert_same_weights(loop.model.state_dict(), epoch_weights[best_epoch])
    assert all(t.device.type == "cpu" for t in save_best.best_state_dict.values())


def test_save_best_model_invalidates_the_cached_losses():
    loop, _ = fit_with([0.9, 0.1, 0.1, 0.1], SaveBestModel(monitor="val_acc"))
    last_epoch_val_loss = loop.train_history["val_loss"][-1]
    assert loop.evaluate_loss_on_validation_set(float_dict_format=True) == pytest.approx(
        loop.train_history["val_loss"][0], rel=1e-12)
    assert loop.train_history["val_loss"][0] != last_epoch_val_loss


def test_save_best_model_without_loading_keeps_the_last_weights(tmp_path):
    path = tmp_path / "best.pt"
    save_best = SaveBestModel(monitor="val_acc", load_at_end=False, save_path=str(path))
    loop, epoch_weights = fit_with([0.1, 0.5, 0.3, 0.2], save_best)
    assert_same_weights(loop.model.state_dict(), epoch_weights[-1])
    assert_same_weights(torch.load(path, weights_only=True), epoch_weights[1])


def test_save_best_model_on_the_real_val_loss_with_greater_is_better_override():
    save_best = SaveBestModel(monitor="val_loss", greater_is_better=True)
    loop = make_loop(lr=0.05)
    loop.fit(num_epochs=4, callbacks=[save_best])
    val = loop.train_history["val_loss"]
    assert save_best.best_epoch == val.index(max(val))


def test_save_best_model_best_weights_survive_a_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    values = [0.1, 0.9, 0.3, 0.2, 0.4]
    saver = Recorder("on_epoch_end", lambda lp: lp.save_checkpoint(path) if lp.epoch == 2 else None)
    loop = make_loop()
    recorder = Recorder("on_epoch_end", snapshot)
    loop.fit(num_epochs=3, callbacks=[HistoryFeeder("val_acc", values), SaveBestModel("val_acc"), saver, recorder])
    resumed = make_loop().load_checkpoint(path)
    save_best = SaveBestModel("val_acc")
    resumed.fit(num_epochs=5, callbacks=[HistoryFeeder("val_acc", values), save_best])
    assert save_best.best_epoch == 1
    assert_same_weights(resumed.model.state_dict(), recorder.records[1])


def test_save_best_model_warns_when_the_metric_never_comes():
    # A callback of unknown output might write the metric, so fit cannot refuse; nothing does.
    loop = make_loop()
    with LogCapture() as logs:
        loop.fit(num_epochs=1, callbacks=[FunctionOnTrainLoop(lambda lp: None, epoch_end=True),
                                          SaveBestModel(monitor="val_Accuracy")])
    assert "'val_Accuracy' never got a value" in logs.text()
