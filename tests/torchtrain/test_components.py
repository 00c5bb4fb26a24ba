"""Unit tests of the loop's collaborators: message service, history, MultiLoss / MultiOptimizer."""
import pytest
import torch
from torch import nn

from aitoolbox import MultiLoss, MultiOptimizer
from aitoolbox.experiment.training_history import TrainingHistory
from aitoolbox.torchtrain.train_loop.components.message_passing import (
    KEEP_FOREVER, OVERRIDE_KEY, UNTIL_END_OF_EPOCH, UNTIL_READ, MessageService)
from aitoolbox.torchtrain.train_loop.components.prediction_store import PredictionStore


def test_message_lifetimes():
    ms = MessageService()
    ms.write("epoch", 1)
    ms.write("once", "a", UNTIL_READ)
    ms.write("forever", 42, KEEP_FOREVER)
    assert ms.read("once") == ["a"]
    assert ms.read("once") is None
    ms.write("read_later", "b", UNTIL_READ)
    ms.end_of_epoch_trigger()
    assert ms.read("epoch") is None
    assert ms.read("forever") == [42]
    assert ms.read("read_later") == ["b"]
    ms.write("k", 1)
    ms.write("k", 2)
    assert ms.read("k") == [1, 2]
    ms.write("k", 3, OVERRIDE_KEY)
    assert ms.read("k") == [3]
    with pytest.raises(ValueError, match="msg_handling_settings must be one of"):
        ms.write("k", 1, "sometimes")
    assert UNTIL_END_OF_EPOCH in ("until_end_of_epoch",)


def test_training_history_flattens_dicts_and_round_trips():
    history = TrainingHistory(has_validation=False, has_test=False)
    assert list(history.keys()) == ["loss", "accumulated_loss"]
    history.insert_single_result_into_history("loss", torch.tensor(0.5))
    history.insert_single_result_into_history("val_loss", {"a": 1.0, "b": 2.0})
    assert history["loss"] == [0.5] and isinstance(history["loss"][0], float)
    assert history["val_loss_a"] == [1.0] and history.get_last("val_loss_b") == 2.0
    clone = TrainingHistory().wrap_pre_prepared_history(history.state_dict())
    assert clone.get_train_history() == history.get_train_history()
    assert "val_loss" not in history.get_train_history_dict(flatten_dict=True) or history["val_loss"]


def test_multiloss_default_and_explicit_optimizer_map():
    a, b = torch.tensor(1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    loss = MultiLoss({"x": a * 2, "y": b * 3})
    assert loss.losses_for_optimizer(0) == ["x"] and loss.losses_for_optimizer(1) == ["y"]
    mapped = MultiLoss({"x": a * 2, "y": b * 3}, loss_optimizer_map={"x": 0, "y": 0})
    mapped.backward(0)
    assert a.grad.item() == 2.0 and b.grad.item() == 3.0
    assert (loss / 2).item() == {"x": 1.0, "y": 3.0}
    with pytest.raises(ValueError, match="not in the MultiLoss"):
        MultiLoss({"x": a}, loss_optimizer_map={"z": 0})


def test_multioptimizer_state_round_trip_and_selective_step():
    p1, p2 = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = MultiOptimizer([torch.optim.SGD([p1], lr=1.0), torch.optim.Adam([p2], lr=0.1)])
    p1.grad, p2.grad = torch.ones(2), torch.ones(2)
    opt.step(0)
    assert torch.equal(p1.detach(), torch.zeros(2)) and torch.equal(p2.detach(), torch.ones(2))
    opt.step()
    state = opt.state_dict()
    fresh = MultiOptimizer([torch.optim.SGD([p1], lr=1.0), torch.optim.Adam([p2], lr=0.1)])
    fresh.load_state_dict(state)
    assert fresh.state_dict()[1]["state"][0]["step"] == state[1]["state"][0]["step"]
    opt.zero_grad()
    assert p1.grad is None and p2.grad is None
    with pytest.raises(ValueError, match="2 optimizers"):
        fresh.load_state_dict(state[:1])
    with pytest.raises(TypeError, match=r"optimizer_list\[0\]"):
        MultiOptimizer(["sgd"])


def test_prediction_store_versions():
    store = PredictionStore()
    store.put("validation", "loss", 3, "value")
    assert store.get("validation", "loss", 3) == "value"
    assert store.get("validation", "loss", 4) is None
    assert store.get("test", "loss", 3) is None
