"""Fully sharded training (FSDP2) on the CPU: 2 processes, gloo, scikit-learn's handwritten digits.

Run:  python examples/fsdp_cpu.py [--epochs 5] [--processes 2] [--out results]
 or:  torchrun --standalone --nproc_per_node=2 examples/fsdp_cpu.py   (the same script, launched)

Each process holds half of every parameter, gradient and Adam moment; the two residual blocks and
the head are FSDP units. A tracking TrainLoop writes a sharded checkpoint folder after every epoch
(each rank writes its shards) and the consolidated final model to ``model/model.pt``. At the end
this process loads that final model into a plain, unsharded copy of the network and checks its
validation accuracy, then joins the newest sharded checkpoint into a plain state dict.
"""
import argparse
import logging
import os
import tempfile

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox import TTModel
from aitoolbox.experiment.checkpoint_registry import find_latest_checkpoint
from aitoolbox.torchtrain.train_loop import TrainLoopCheckpointEndSave

logger = logging.getLogger("aitoolbox")


class Block(nn.Module):
    """A residual MLP block: one FSDP unit."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.linear(x))


class DigitsNet(TTModel):
    """Stem, two residual blocks and a head on the 8x8 digit images."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.stem = nn.Linear(64, width)
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))))

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        return criterion(self(x.to(device)), y.to(device))

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x.to(device)).argmax(dim=1), y, None


def digits_loaders(batch_size: int):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=0)
    generator = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator)
    return train, DataLoader(TensorDataset(x_val, y_val), batch_size=128)


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return hits / len(loader.dataset)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default=None, help="experiment root (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="fsdp-example-")

    torch.manual_seed(0)
    model = DigitsNet()
    train_loader, val_loader = digits_loaders(batch_size=32)  # per process
    loop = TrainLoopCheckpointEndSave(model, train_loader, val_loader, None,
                                      torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(),
                                      project_name="digits", experiment_name="fsdp",
                                      local_model_result_folder_path=out, hyperparams={"lr": 1e-3},
                                      cloud_save_mode=None, gpu_mode="fsdp", show_progress=False)
    loop.fit(num_epochs=args.epochs, fsdp_args={"wrap": {Block, nn.Linear}},
             num_gpus=args.processes, on_gpu=False, backend="gloo")
    if not loop.is_main_process():
        return
    final = torch.load(os.path.join(loop.experiment_dir, "model", "model.pt"), weights_only=True)
    plain = DigitsNet()
    plain.load_state_dict(final["model_state_dict"])  # full tensors: a plain, unsharded model
    logger.info("final model from model/model.pt: validation accuracy %.4f over %d samples",
                accuracy(plain, val_loader), len(val_loader.dataset))
    newest = find_latest_checkpoint(os.path.join(loop.experiment_dir, "checkpoint_model"))
    shard_files = sorted(name for name in os.listdir(newest) if name.endswith(".distcp"))
    logger.info("newest sharded checkpoint %s: %d shard file(s)", os.path.basename(newest), len(shard_files))
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    joined = os.path.join(out, "joined.pt")
    dcp_to_torch_save(newest, joined)
    same = all(torch.equal(v, final["model_state_dict"][k])
               for k, v in torch.load(joined, weights_only=True)["model"].items())
    logger.info("joined shards equal the final model: %s", same)


if __name__ == "__main__":
    main()
