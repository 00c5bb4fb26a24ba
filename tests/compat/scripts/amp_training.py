"""TrainLoop with use_amp=True, written as for aitoolbox 1.8.

Modelled on the original's examples/amp_training/single_GPU_training.py, with scikit-learn's 8x8
digits instead of MNIST. On the CPU autocast runs in bfloat16.
"""
import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox import TrainLoop, TTModel
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.performance_eval import ModelPerformanceEvaluation, ModelPerformancePrintReport
from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage


class Net(TTModel):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 20, 3, 1)
        self.conv2 = nn.Conv2d(20, 50, 3, 1)
        self.fc1 = nn.Linear(2 * 2 * 50, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 2 * 2 * 50)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)

    def get_loss(self, batch_data, criterion, device):
        data, target = batch_data
        data, target = data.to(device), target.to(device)

        output = self(data)
        loss = criterion(output, target)

        return loss

    def get_predictions(self, batch_data, device):
        data, y_test = batch_data
        data = data.to(device)

        output = self(data)
        y_pred = output.argmax(dim=1, keepdim=False)  # get the index of the max log-probability

        return y_pred.cpu(), y_test, {}


class RecordPredictions(AbstractCallback):
    def __init__(self, output_path):
        AbstractCallback.__init__(self, 'Record the predictions of every epoch')
        self.output_path = output_path
        self.epochs = []

    def on_epoch_end(self):
        record = {}
        for name, predict in [('train', self.train_loop_obj.predict_on_train_set),
                              ('val', self.train_loop_obj.predict_on_validation_set)]:
            y_pred, y_true, _ = predict()
            record[name] = {'y_pred': y_pred.tolist(), 'y_true': y_true.tolist()}
        self.epochs.append(record)

    def on_train_end(self):
        y_pred, y_true, _ = self.train_loop_obj.predict_on_test_set()
        if self.train_loop_obj.is_main_process():
            with open(self.output_path, 'w') as f:
                json.dump({'epochs': self.epochs,
                           'test': {'y_pred': y_pred.tolist(), 'y_true': y_true.tolist()},
                           'train_history': self.train_loop_obj.train_history.get_train_history()},
                          f, default=float)


def digits_datasets():
    digits = load_digits()
    x = torch.tensor(digits.images / 16., dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    return TensorDataset(x[:1200], y[:1200]), TensorDataset(x[1200:1500], y[1200:1500]), \
        TensorDataset(x[1500:], y[1500:])


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--output', type=str, required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    batch_size = 50
    batch_size_multi_gpu = batch_size * max(1, torch.cuda.device_count())

    train_ds, val_ds, test_ds = digits_datasets()
    train_loader = DataLoader(train_ds, batch_size=batch_size_multi_gpu)
    val_loader = DataLoader(val_ds, batch_size=batch_size_multi_gpu)
    test_loader = DataLoader(test_ds, batch_size=batch_size_multi_gpu)

    model = Net()
    optimizer = optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.999))
    criterion = nn.NLLLoss()

    callbacks = [ModelPerformanceEvaluation(ClassificationResultPackage(), {},
                                            on_train_data=True, on_val_data=True),
                 ModelPerformancePrintReport(['train_Accuracy', 'val_Accuracy'], strict_metric_reporting=True),
                 RecordPredictions(args.output)]

    print('Starting train loop')
    TrainLoop(model,
              train_loader, val_loader, test_loader,
              optimizer, criterion,
              use_amp=True) \
        .fit(num_epochs=args.epochs, callbacks=callbacks)
