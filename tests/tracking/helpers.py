"""Helpers of the experiment-tracking tests: a tiny classification problem and its TrainLoop arguments."""
import os

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_data(num_samples: int = 48, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 6, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return TensorDataset(x, y)


class NoisyDataset(torch.utils.data.Dataset):
    """Random augmentation drawing from torch's (and, with ``use_numpy``, NumPy's) global RNG."""

    def __init__(self, data, use_numpy: bool = True):
        self.data, self.use_numpy = data, use_numpy

    def __len__(self):
        return len(self.data)

    def __getitem__(self, idx):
        x, y = self.data[idx]
        numpy_noise = float(np.random.normal(scale=0.05)) if self.use_numpy else 0.0
        return x + 0.05 * torch.randn_like(x) + numpy_noise, y


def make_model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 3))


def loop_args(seed: int = 1, with_test: bool = True, augment=False):
    """The six positional TrainLoop arguments for a fresh model, loaders and optimizer."""
    model = make_model(seed)
    # augment: False, True (torch and NumPy noise) or "torch" (torch noise only)
    data = NoisyDataset(make_data(), use_numpy=augment is True) if augment else make_data()
    train = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    val = DataLoader(make_data(24, seed=1), batch_size=8)
    test = DataLoader(make_data(16, seed=2), batch_size=8) if with_test else None
    return model, train, val, test, torch.optim.Adam(model.parameters(), lr=0.01), nn.CrossEntropyLoss()


def tree(folder: str) -> dict:
    """{relative path: bytes} of every file under ``folder``."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder).replace(os.sep, "/")] = f.read()
    return files
