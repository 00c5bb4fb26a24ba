"""PyTorchModelPredictor on a trained model, written as for aitoolbox 1.8.

Modelled on the original's examples/misc_examples/model_predict_example.py: a model is trained
for a few epochs with a plain TrainLoop, then predicted and evaluated on the test set with
PyTorchModelPredictor, with no training set or optimizer.
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
from aitoolbox.torchtrain.data.dataset import BasicDataset
from aitoolbox.torchtrain.model_predict import PyTorchModelPredictor
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


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--results-dir', type=str, required=True)
    parser.add_argument('--output', type=str, required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images / 16., dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    train_loader = DataLoader(TensorDataset(x[:1200], y[:1200]), batch_size=50, shuffle=True)
    val_loader = DataLoader(TensorDataset(x[1200:1500], y[1200:1500]), batch_size=50)
    # BasicDataset over a list of (image, label) pairs, as the original's example builds its data set
    test_ds = BasicDataset([(x[i], y[i]) for i in range(1500, len(y))])
    test_loader = DataLoader(test_ds, batch_size=100)  # 297 samples: the last batch has 97

    model = Net()
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    criterion = nn.NLLLoss()
    TrainLoop(model, train_loader, val_loader, None, optimizer, criterion).fit(num_epochs=args.epochs)

    print('Starting model evaluation')
    predictor = PyTorchModelPredictor(model, test_loader)
    y_pred, y_true, metadata = predictor.model_predict()
    test_loss = predictor.model_get_loss(nn.NLLLoss())
    results = predictor.evaluate_result_package(ClassificationResultPackage(), return_result_package=False)
    predictor.evaluate_model(ClassificationResultPackage(),
                             project_name='model_predictor_example',
                             experiment_name='digits_predict',
                             local_model_result_folder_path=args.results_dir,
                             cloud_save_mode=None)

    # the loss over the test set, computed by hand: the mean over all samples
    model.eval()
    with torch.no_grad():
        reference_loss = F.nll_loss(model(x[1500:]), y[1500:], reduction='mean').item()

    with open(args.output, 'w') as f:
        json.dump({'y_pred': y_pred.tolist(), 'y_true': y_true.tolist(), 'results': results,
                   'test_loss': float(test_loss), 'reference_loss': reference_loss}, f, default=float)
