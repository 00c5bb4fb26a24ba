"""Train a small network on scikit-learn's handwritten digits (real data, shipped with the package).

Run:  python examples/train_digits.py [--epochs 15]
Prints the validation loss and accuracy after every epoch and the test accuracy at the end.
"""
import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox import TrainLoop, TTModel
from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.schedulers.warmup import CosineWithWarmupScheduler


class DigitsNet(TTModel):
    """A two-layer MLP on the 8x8 digit images."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        return criterion(self(x.to(device)), y.to(device))

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x.to(device)).argmax(dim=1), y, None


class ValidationAccuracy(AbstractCallback):
    """Computes the validation accuracy after every epoch (reusing the loop's cached predictions)."""

    def __init__(self):
        super().__init__("validation accuracy", execution_order=5)

    def on_epoch_end(self):
        y_pred, y_true, _ = self.train_loop_obj.predict_on_validation_set()
        results = ClassificationResultPackage()
        results.prepare_result_package(y_true, y_pred)
        accuracy = results.get_results()["Accuracy"]
        self.train_loop_obj.insert_metric_result_into_history("val_Accuracy", accuracy)
        loop = self.train_loop_obj
        print(f"epoch {loop.epoch + 1:2d}  val_loss {loop.train_history['val_loss'][-1]:.4f}  "
              f"val_Accuracy {accuracy:.4f}")


def make_loaders(batch_size: int = 64):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0,
                                                    stratify=y_rest)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=256)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return train, val, test


def main(epochs: int = 15) -> float:
    torch.manual_seed(0)
    train_loader, val_loader, test_loader = make_loaders()
    model = DigitsNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loop = TrainLoop(model, train_loader, val_loader, test_loader, optimizer, nn.CrossEntropyLoss(),
                     show_progress=False)
    loop.fit(num_epochs=epochs, callbacks=[ValidationAccuracy(), CosineWithWarmupScheduler(num_warmup_steps=20)])
    y_pred, y_true, _ = loop.predict_on_test_set()
    test_accuracy = (y_pred == y_true).double().mean().item()
    print(f"test accuracy {test_accuracy:.4f}  (final val_Accuracy "
          f"{loop.train_history['val_Accuracy'][-1]:.4f})")
    return test_accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    main(parser.parse_args().epochs)
