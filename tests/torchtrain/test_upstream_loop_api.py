"""TrainLoop API details that aitoolbox 1.8 user code relies on."""
from __future__ import annotations

import torch

from tests.callbacks.cb_testkit import make_loop, mlp


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
