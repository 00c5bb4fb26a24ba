"""TrainLoop API details that aitoolbox 1.8 user code relies on."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from aitoolbox.torchtrain.train_loop import TrainLoop
from tests.callbacks.cb_testkit import make_loop, mlp, regression_dataset


class _PlainZeroGradSGD(torch.optim.SGD):
    """An optimizer whose zero_grad takes no arguments (as custom optimizers often do)."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.zero_grad_calls = 0

    def zero_grad(self):  # noqa: D102 - no set_to_none argument
        self.zero_grad_calls += 1
        super().zero_grad()


def test_optimizer_zero_grad_without_arguments():
    model = mlp()
    optimizer = _PlainZeroGradSGD(model.parameters(), lr=0.05)
    loop = make_loop(model, optimizer=optimizer, num_train=48, batch_size=8)  # 6 batches
    loop.fit(num_epochs=2, grad_accumulation=2)
    assert optimizer.zero_grad_calls == 1 + 2 * 3  # once at the start, then after every step
    assert all(p.grad is None for p in model.parameters())


def test_should_execute_optimizer_update_before_fit():
    loop = make_loop(num_train=1035, batch_size=10)  # 104 batches
    loop.grad_accumulation = 5
    steps = []
    for iteration in range(len(loop.train_loader)):
        loop.iteration = iteration
        if loop.should_execute_optimizer_update():
            steps.append(iteration)
    assert steps == list(range(4, 100, 5)) + [103]


def test_subclass_overrides_of_the_evaluation_methods_are_what_the_loop_calls():
    """aitoolbox 1.8 users override the evaluation / history methods on their TrainLoop subclass."""
    class MyLoop(TrainLoop):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.inserted = []

        def evaluate_loss_on_validation_set(self, force_prediction=False, float_dict_format=False):
            return torch.tensor(7.0)

        def insert_metric_result_into_history(self, metric_name, metric_result):
            self.inserted.append(metric_name)
            super().insert_metric_result_into_history(metric_name, metric_result)

    model = mlp()
    train = DataLoader(regression_dataset(16, seed=0), batch_size=8)
    val = DataLoader(regression_dataset(8, seed=1), batch_size=8)
    loop = MyLoop(model, train, val, None, torch.optim.SGD(model.parameters(), lr=0.05), nn.MSELoss(),
                  show_progress=False)
    loop.fit(num_epochs=2)
    assert loop.train_history["val_loss"] == [7.0, 7.0]
    assert loop.inserted == ["accumulated_loss", "loss", "val_loss"] * 2
