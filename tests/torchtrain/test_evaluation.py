"""Evaluation: sample-weighted losses, data-set order, RNG isolation (SPEC 4.4)."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from aitoolbox import MultiLoss, TrainLoop, TTModel

from _loop_helpers import loader, make_data, make_mlp


def _loop(model, val_loader, criterion=None, **kwargs):
    return TrainLoop(model, val_loader, val_loader, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion or nn.CrossEntropyLoss(), show_progress=False, **kwargs)


def test_loss_is_sample_weighted_mean_with_short_last_batch():
    data = make_data(10)
    model = make_mlp()
    val = loader(data, 4)  # batches of 4, 4, 2
    loop = _loop(model, val)
    model.eval()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(data.tensors[0]), data.tensors[1], reduction="sum") / 10
        naive = torch.stack([nn.functional.cross_entropy(model(x), y) for x, y in val]).mean()
    loss = loop.evaluate_loss_on_validation_set()
    assert torch.allclose(loss, expected.double(), atol=1e-6, rtol=0)
    assert not torch.allclose(loss, naive.double(), atol=1e-6, rtol=0)
    assert loss.device.type == "cpu" and loss.dtype == torch.float64


def test_predictions_in_dataset_order_even_from_a_shuffled_drop_last_loader():
    x = torch.arange(23, dtype=torch.float32).unsqueeze(1).repeat(1, 8)
    data = TensorDataset(x, torch.arange(23) % 3)
    model = make_mlp()
    shuffled = loader(data, 5, shuffle=True, drop_last=True)
    loop = _loop(model, shuffled)
    y_pred, y_true, _ = loop.predict_on_train_set()
    assert y_pred.shape == (23, 3)
    assert torch.equal(y_true, torch.arange(23) % 3)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(y_pred, model(x), rtol=1e-5, atol=1e-6)  # batched vs whole-set matmul rounding


def test_evaluation_does_not_draw_from_training_rng():
    data = make_data(30)
    loop = _loop(make_mlp(), loader(data, 10, shuffle=True))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    loop.evaluate_loss_on_train_set()
    loop.predict_on_validation_set(force_prediction=True)
    assert torch.equal(before, torch.get_rng_state())


def test_evaluation_restores_train_mode():
    model = make_mlp()
    loop = _loop(model, loader(make_data(10), 5))
    model.train()
    loop.evaluate_loss_on_validation_set()
    assert model.training
    model.eval()
    loop.evaluate_loss_on_validation_set(force_prediction=True)
    assert not model.training


class TwoLossNet(TTModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        return self.linear(x)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        out = self(x)
        return MultiLoss({"ce": nn.functional.cross_entropy(out, y), "l1": out.abs().mean()})

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x), y, None


def test_multiloss_evaluation_per_loss_and_float_dict_format():
    data = make_data(10)
    model = TwoLossNet()
    loop = _loop(model, loader(data, 4), criterion=None)
    loss = loop.evaluate_loss_on_validation_set(float_dict_format=True)
    with torch.no_grad():
        out = model(data.tensors[0])
    assert set(loss) == {"ce", "l1"}
    assert abs(loss["ce"] - nn.functional.cross_entropy(out, data.tensors[1]).item()) < 1e-6
    assert abs(loss["l1"] - out.abs().mean().item()) < 1e-6


class ShortIterable(torch.utils.data.IterableDataset):
    """Claims 30 samples but yields 20: an estimated __len__."""

    def __iter__(self):
        data = make_data(20)
        return iter([data[i] for i in range(20)])

    def __len__(self):
        return 30


def test_loader_shorter_than_its_len_still_ends_each_epoch():
    model = make_mlp()
    train = loader(ShortIterable(), 10)
    loop = TrainLoop(model, train, None, None, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                     show_progress=False, end_auto_eval=False)
    loop.fit(num_epochs=3)
    assert loop.epoch == 3 and loop.total_iteration_idx == 6
    assert len(loop.train_history["accumulated_loss"]) == 3
