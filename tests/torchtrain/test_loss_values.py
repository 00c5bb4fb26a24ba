"""The epoch's batch losses as floats: each converted once, the mean correctly rounded."""
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox import TrainLoop
from aitoolbox.torchtrain.train_loop.components.loss_values import LossValues


def test_converts_only_new_losses_and_restarts_on_another_list():
    values = LossValues()
    losses = [torch.tensor(1.0), torch.tensor(2.0)]
    assert values.mean(losses) == 1.5
    first = values.values
    losses.append(torch.tensor(6.0))
    assert values.mean(losses) == 3.0
    assert values.values is first and values.values == [1.0, 2.0, 6.0]  # extended, not rebuilt
    assert values.mean([torch.tensor(4.0)]) == 4.0  # a new epoch's list
    assert values.mean([]) is None


def test_mean_is_correctly_rounded():
    # 1e8 then many small values: a naive float32 (or running float64) sum loses the small ones' digits
    losses = [torch.tensor(1e8)] + [torch.tensor(0.1)] * 999
    exact = math.fsum([float(x) for x in losses]) / len(losses)
    assert LossValues().mean(losses) == exact


def test_accumulated_loss_is_the_mean_of_the_hand_loop_batch_losses():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    model = nn.Linear(4, 3)
    hand = nn.Linear(4, 3)
    hand.load_state_dict(model.state_dict())
    loader = DataLoader(data, batch_size=8)
    loop = TrainLoop(model, loader, None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), end_auto_eval=False, show_progress=False)
    loop.fit(num_epochs=1)
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)
    batch_losses = []
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(hand(x), y)
        loss.backward()
        opt.step()
        batch_losses.append(loss.item())
    assert loop.train_history["accumulated_loss"] == [math.fsum(batch_losses) / len(batch_losses)]
    assert float(loop.parse_loss(loop.loss_batch_accum)) == math.fsum(batch_losses) / len(batch_losses)
