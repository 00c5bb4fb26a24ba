"""A disk that fills during a checkpoint write: the previous checkpoint stays, the error names the path."""
import os
import subprocess

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopCheckpoint
from aitoolbox.utils.io import FileWriteError


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


class FillDiskAfterEpoch(AbstractCallback):
    """After the first epoch's checkpoint, fills the disk so that the next checkpoint cannot be written."""

    def __init__(self, folder):
        super().__init__("fill the disk", execution_order=1500)
        self.folder = folder

    def on_epoch_end(self):
        if self.train_loop_obj.epoch == 0:
            with open(os.path.join(self.folder, "ballast"), "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass


def make_loop(root):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 300), nn.ReLU(), nn.Linear(300, 2))  # ~ 11 kB of weights per copy
    x = torch.randn(64, 8)
    return TrainLoopCheckpoint(model, DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16), None,
                               None, torch.optim.Adam(model.parameters()), nn.CrossEntropyLoss(), "p", "e", root, {},
                               cloud_save_mode=None, show_progress=False, quiet=True)


def test_disk_full_during_checkpoint_write(small_disk):
    loop = make_loop(small_disk)
    with pytest.raises(FileWriteError) as info:
        loop.fit(num_epochs=3, callbacks=[FillDiskAfterEpoch(small_disk)])
    folder = os.path.join(loop.experiment_dir, "checkpoint_model")
    message = str(info.value)
    assert os.path.join(folder, "model_epoch_2.pt") in message and "no space left on the device" in message
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
    os.remove(os.path.join(small_disk, "ballast"))
    previous = TrainLoop(*[getattr(loop, a) for a in ("model", "train_loader", "validation_loader", "test_loader",
                                                       "optimizer", "criterion")], show_progress=False)
    previous.load_checkpoint(os.path.join(folder, "model_epoch_1.pt"))
    assert previous.epoch == 1
