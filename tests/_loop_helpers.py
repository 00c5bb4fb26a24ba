"""Shared pieces of the TrainLoop tests: data, models and the hand-written reference loop."""
import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox import TTModel


def make_data(num_samples=100, num_features=8, num_classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, num_features, generator=gen)
    y = torch.randint(0, num_classes, (num_samples,), generator=gen)
    return TensorDataset(x, y)


def make_mlp(num_features=8, num_classes=3, dropout=0.2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(num_features, 16), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(16, num_classes))


def loader(dataset, batch_size=10, shuffle=False, **kwargs):
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)


def clone_model(model):
    return copy.deepcopy(model)


def reference_train(model, train_loader, optimizer, criterion, num_epochs, grad_accumulation=1,
                    scheduler=None, batch_scheduler=None):
    """A plain nanoGPT-style PyTorch loop with the accumulation semantics of SPEC 4.2."""
    model.train()
    for _ in range(num_epochs):
        num_batches = len(train_loader)
        for i, (x, y) in enumerate(train_loader):
            loss = criterion(model(x), y)
            if grad_accumulation > 1:
                window_start = i - i % grad_accumulation
                loss = loss / min(grad_accumulation, num_batches - window_start)
            loss.backward()
            if (i + 1) % grad_accumulation == 0 or i + 1 == num_batches:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if batch_scheduler is not None:
                    batch_scheduler.step()
        if scheduler is not None:
            scheduler.step()
    return model


def assert_same_weights(model_a, model_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), f"parameter {key} differs"


class CountingNet(TTModel):
    """A TTModel that counts its forward calls."""

    def __init__(self, num_features=8, num_classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(num_features, num_classes)
        self.forward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        return self.linear(x)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        return criterion(self(x.to(device)), y.to(device))

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x.to(device)), y, {"index_first": [int(x[0, 0] * 0) + 0] * len(x)}
