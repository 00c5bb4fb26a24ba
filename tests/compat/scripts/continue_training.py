"""Continue a TrainLoopCheckpointEndSave run from its checkpoint with ModelLoadContinueTraining,
written as for aitoolbox 1.8.

The first run trains 2 epochs and checkpoints each of them; the second one builds a fresh model
and optimizer, loads the checkpoint of the second epoch (the original's ``epoch_num=1``: epochs
are counted from 0 in its checkpoint names) and trains on to 4 epochs.
"""
import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox import TrainLoopCheckpointEndSave, TTModel
from aitoolbox.torchtrain.callbacks.model_load import ModelLoadContinueTraining
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


def build_loop(experiment_name, results_dir):
    torch.manual_seed(0)
    train_ds, val_ds, test_ds = digits_datasets()
    train_loader = DataLoader(train_ds, batch_size=50, shuffle=True)
    val_loader = DataLoader(val_ds, batch_size=50)
    test_loader = DataLoader(test_ds, batch_size=50)

    model = Net()
    optimizer = optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.999))
    criterion = nn.NLLLoss()

    return TrainLoopCheckpointEndSave(
        model,
        train_loader, val_loader, test_loader,
        optimizer, criterion,
        project_name='continue_training_example', experiment_name=experiment_name,
        local_model_result_folder_path=results_dir,
        hyperparams={},
        val_result_package=ClassificationResultPackage(), test_result_package=ClassificationResultPackage(),
        cloud_save_mode=None
    )


def evaluation_callbacks(output_path):
    return [ModelPerformanceEvaluation(ClassificationResultPackage(), {},
                                       on_train_data=True, on_val_data=True),
            ModelPerformancePrintReport(['train_Accuracy', 'val_Accuracy'], strict_metric_reporting=True),
            RecordPredictions(output_path)]


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--results-dir', type=str, required=True)
    parser.add_argument('--output-first', type=str, required=True)
    parser.add_argument('--output-continued', type=str, required=True)
    args = parser.parse_args()

    print('Starting the first train loop')
    first_loop = build_loop('digits_cnn', args.results_dir)
    first_loop.fit(num_epochs=2, callbacks=evaluation_callbacks(args.output_first))

    print('Continuing training from the checkpoint')
    continued_loop = build_loop('digits_cnn_continued', args.results_dir)
    continued_loop.fit(
        num_epochs=4,
        callbacks=[ModelLoadContinueTraining(first_loop.experiment_timestamp,
                                             saved_model_dir='checkpoint_model', epoch_num=1,
                                             project_name='continue_training_example',
                                             experiment_name='digits_cnn',
                                             local_model_result_folder_path=args.results_dir)]
        + evaluation_callbacks(args.output_continued))
