"""TerminateOnNaN acts before a non-finite loss or gradient reaches the weights."""
import pytest
import torch
from torch import nn

from aitoolbox.torchtrain.callbacks.basic import TerminateOnNaN
from aitoolbox.torchtrain.train_loop import TrainLoop
from tests.tracking.helpers import loop_args


class NaNAt(nn.CrossEntropyLoss):
    """The ``at``-th training loss (1-based) is NaN: multiplied (NaN gradients) or added (finite ones)."""

    def __init__(self, at, how):
        super().__init__()
        self.at, self.how, self.calls = at, how, 0

    def forward(self, y_pred, y_true):
        loss = super().forward(y_pred, y_true)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                nan = torch.tensor(float("nan"))
                loss = loss * nan if self.how == "multiply" else loss + nan
        return loss


def make(criterion=None):
    torch.manual_seed(0)
    model, train, val, test, optimizer, default = loop_args(seed=1)
    return TrainLoop(model, train, val, test, optimizer, criterion or default, show_progress=False, quiet=True)


@pytest.mark.parametrize("how", ["multiply", "add"])
@pytest.mark.parametrize("grad_accumulation", [1, 2])
def test_weights_left_are_those_after_the_step_before_the_nan(how, grad_accumulation):
    k = 10  # a batch of epoch 2 (6 batches per epoch)
    loop = make(NaNAt(k, how))
    loop.fit(num_epochs=3, callbacks=[TerminateOnNaN()], grad_accumulation=grad_accumulation)
    reference = make()
    last_step = k - 1 if grad_accumulation == 1 else k - 2  # the update before the NaN batch's window
    reference.fit(num_iterations=last_step, grad_accumulation=grad_accumulation)
    for name, value in reference.model.state_dict().items():
        assert torch.equal(loop.model.state_dict()[name], value), name
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())
    assert loop.total_iteration_idx == k
