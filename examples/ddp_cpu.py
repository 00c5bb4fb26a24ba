"""DistributedDataParallel on the CPU: 2 processes, gloo, scikit-learn's handwritten digits.

Run:  python examples/ddp_cpu.py [--epochs 5] [--processes 2]
 or:  torchrun --standalone --nproc_per_node=2 examples/ddp_cpu.py   (the same script, launched)

``fit`` starts the processes itself (or, under torchrun, trains in the process it runs in). Every
rank sees its share of each training epoch; evaluation reads every validation sample exactly once
across the ranks, so the accuracy below is the one of the whole validation set. After ``fit`` the
model in this (parent) process holds the trained weights.
"""
import argparse
import logging

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox import TrainLoop, TTModel
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

logger = logging.getLogger("aitoolbox")


class DigitsNet(TTModel):
    """A two-layer MLP on the 8x8 digit images."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        return criterion(self(x.to(device)), y.to(device))

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x.to(device)).argmax(dim=1), y, None


class ValidationAccuracy(AbstractCallback):
    """Validation accuracy after every epoch, computed on every rank (the predictions are gathered)."""

    def __init__(self):
        super().__init__("validation accuracy")

    def on_epoch_end(self):
        y_pred, y_true, _ = self.train_loop_obj.predict_on_validation_set()
        accuracy = (y_pred == y_true).double().mean().item()
        self.train_loop_obj.insert_metric_result_into_history("val_Accuracy", accuracy)
        if self.train_loop_obj.is_main_process():
            logger.info("epoch %d: validation accuracy %.4f over %d samples",
                        self.train_loop_obj.epoch + 1, accuracy, len(y_true))


def digits_loaders(batch_size: int):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=0)
    generator = torch.Generator().manual_seed(0)  # a seeded shuffle: works unchanged under DDP
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator)
    return train, DataLoader(TensorDataset(x_val, y_val), batch_size=128)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = DigitsNet()
    train_loader, val_loader = digits_loaders(batch_size=32)  # per process
    loop = TrainLoop(model, train_loader, val_loader, None, torch.optim.Adam(model.parameters(), lr=1e-3),
                     nn.CrossEntropyLoss(), gpu_mode="ddp", show_progress=False)
    loop.fit(num_epochs=args.epochs, callbacks=[ValidationAccuracy()],
             num_gpus=args.processes, on_gpu=False, backend="gloo")
    if loop.is_main_process():
        logger.info("history: %s", loop.train_history.get_train_history_dict(flatten_dict=True))


if __name__ == "__main__":
    main()
