"""The model contract: TTModel, TTBasicModel, ModelWrap and plain modules (SPEC 3)."""
import torch
from torch import nn

from aitoolbox import ModelWrap, TrainLoop, TTBasicModel
from aitoolbox.torchtrain.data.batch_model_feed_defs import AbstractModelFeedDefinition

from _loop_helpers import assert_same_weights, loader, make_data, make_mlp


class BasicNet(TTBasicModel):
    def __init__(self):
        super().__init__()
        self.net = make_mlp(dropout=0.0)

    def forward(self, x):
        return self.net(x)


class DictFeed(AbstractModelFeedDefinition):
    """Feeds ``{'x': ..., 'y': ...}`` batches; counts calls."""

    def __init__(self):
        self.loss_calls = 0

    def get_loss(self, model, batch_data, criterion, device):
        self.loss_calls += 1
        return criterion(model(batch_data["x"]), batch_data["y"])

    def get_predictions(self, model, batch_data, device):
        return model(batch_data["x"]), batch_data["y"], {"n": [len(batch_data["y"])]}


def _train(model, train_loader, params):
    torch.manual_seed(1)
    loop = TrainLoop(model, train_loader, None, None, torch.optim.SGD(params, lr=0.1), nn.CrossEntropyLoss(),
                     show_progress=False)
    loop.fit(num_epochs=2)
    return loop


def test_plain_module_ttbasicmodel_and_modelwrap_train_identically():
    data = make_data(40)
    plain = make_mlp(dropout=0.0)
    basic = BasicNet()
    wrapped_net = make_mlp(dropout=0.0)
    feed = DictFeed()
    dict_batches = [{"x": x, "y": y} for x, y in loader(data, 10)]

    _train(plain, loader(data, 10), plain.parameters())
    _train(basic, loader(data, 10), basic.parameters())
    loop = _train(ModelWrap(wrapped_net, feed), dict_batches, wrapped_net.parameters())

    assert_same_weights(plain, basic.net)
    assert_same_weights(plain, wrapped_net)
    assert feed.loss_calls == 2 * 4 + 2 * 4  # training batches + end-of-epoch train-set loss
    _, y_true, meta = loop.predict_on_train_set()
    assert len(y_true) == 40 and meta == {"n": [10, 10, 10, 10]}


def test_fit_returns_the_model_given():
    data = make_data(20)
    model = BasicNet()
    loop = TrainLoop(model, loader(data, 10), None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), show_progress=False)
    assert loop.fit(num_epochs=1) is model
    assert loop(num_epochs=2) is model  # __call__; num_epochs is the total to reach
    assert loop.epoch == 2


class TwoInputNet(nn.Module):
    """``forward(a, parts)``: a tensor and a dict of tensors (fed from ``(a, parts, y)`` batches)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Linear(6, 3)

    def forward(self, a, parts):
        return self.net(torch.cat([a, parts["b"]], dim=1))


def test_plain_module_with_several_and_nested_inputs_matches_a_hand_loop():
    gen = torch.Generator().manual_seed(0)
    a, b, y = torch.randn(24, 4, generator=gen), torch.randn(24, 2, generator=gen), torch.randint(0, 3, (24,))
    batches = [(a[i:i + 8], {"b": b[i:i + 8]}, y[i:i + 8]) for i in range(0, 24, 8)]

    model = TwoInputNet()
    loop = TrainLoop(model, batches, None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), end_auto_eval=False, show_progress=False)
    loop.fit(num_epochs=2)

    ref = TwoInputNet()
    opt, crit = torch.optim.SGD(ref.parameters(), lr=0.1), nn.CrossEntropyLoss()
    for _ in range(2):
        for batch_a, parts, batch_y in batches:
            opt.zero_grad()
            crit(ref(batch_a, parts), batch_y).backward()
            opt.step()
    assert_same_weights(ref, model)
    y_pred, y_true, _ = loop.predict_with_model(batches)
    assert torch.equal(y_true, y) and torch.allclose(y_pred, ref(a, {"b": b}).detach(), atol=1e-6)
