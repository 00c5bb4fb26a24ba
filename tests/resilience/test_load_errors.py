"""Checkpoints you can trust on load: each bad file gives a clear error and leaves the loop unchanged."""
import copy
import os
import zipfile

import pytest
import torch
from torch import nn

from aitoolbox.experiment.checkpoint_registry import find_latest_checkpoint
from aitoolbox.torchtrain.train_loop import TrainLoop
from tests.tracking.helpers import loop_args


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint after 1 epoch, and its path."""
    folder = tmp_path_factory.mktemp("ckpt")
    loop = TrainLoop(*loop_args(seed=1), show_progress=False, quiet=True)
    loop.fit(num_epochs=1)
    return loop.save_checkpoint(str(folder / "model_epoch_1.pt"))


def fresh_loop(model=None, optimizer_cls=torch.optim.Adam):
    model_, train, val, test, _, criterion = loop_args(seed=7)
    model = model or model_
    loop = TrainLoop(model, train, val, test, optimizer_cls(model.parameters(), lr=0.01), criterion,
                     show_progress=False, quiet=True)
    loop.fit(num_epochs=1)  # a loop with a state of its own, so that a half-done load would show
    return loop


def snapshot(loop):
    return (copy.deepcopy(loop.model.state_dict()), copy.deepcopy(loop.optimizer.state_dict()),
            loop.epoch, loop.total_iteration_idx, copy.deepcopy(loop.train_history.get_train_history_dict()))


def assert_unchanged(loop, before):
    weights, optimizer, epoch, total, history = before
    assert all(torch.equal(v, loop.model.state_dict()[k]) for k, v in weights.items())
    assert str(loop.optimizer.state_dict()) == str(optimizer)
    assert (loop.epoch, loop.total_iteration_idx) == (epoch, total)
    assert loop.train_history.get_train_history_dict() == history


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def test_truncated_file(tmp_path, saved):
    data = open(saved, "rb").read()
    path = write(tmp_path / "t.pt", data[: len(data) // 2])
    loop = fresh_loop()
    before = snapshot(loop)
    with pytest.raises(ValueError, match=r"is truncated \(\d+ bytes; the end of the archive is missing\)"):
        loop.load_checkpoint(path)
    assert_unchanged(loop, before)


def test_empty_file(tmp_path):
    path = write(tmp_path / "e.pt", b"")
    loop = fresh_loop()
    before = snapshot(loop)
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\): its write was interrupted"):
        loop.load_checkpoint(path)
    assert_unchanged(loop, before)


def test_flipped_bytes_fail_the_checksum(tmp_path, saved):
    data = bytearray(open(saved, "rb").read())
    with zipfile.ZipFile(saved) as archive:  # flip 64 bytes inside the largest tensor's data
        info = max(archive.infolist(), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename) + 64  # past the local header (its extra field <= 64)
    for i in range(64):
        data[start + 64 + i] ^= 0xFF
    path = write(tmp_path / "model_epoch_2.pt", bytes(data))
    loop = fresh_loop()
    before = snapshot(loop)
    with pytest.raises(ValueError, match="fails the CRC-32 checksum"):
        loop.load_checkpoint(path)
    assert_unchanged(loop, before)
    write(tmp_path / "model_epoch_1.pt", open(saved, "rb").read())
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / "model_epoch_1.pt")  # the damaged one is skipped


def test_file_that_is_not_a_checkpoint(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "weights.pt")
    torch.save({"an": object.__new__(nn.Module)}, tmp_path / "pickled.pt")
    loop = fresh_loop()
    before = snapshot(loop)
    with pytest.raises(ValueError, match="Not an aitoolbox checkpoint: the file holds a model state dict only"):
        loop.load_checkpoint(str(tmp_path / "weights.pt"))
    with pytest.raises(ValueError, match="refuses to unpickle"):
        loop.load_checkpoint(str(tmp_path / "pickled.pt"))
    assert_unchanged(loop, before)


def test_another_architecture_names_the_parameters(saved):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    loop = fresh_loop(model)
    before = snapshot(loop)
    with pytest.raises(ValueError, match=r"do not fit this model .*other shape: \['0.weight \(checkpoint \(12, 6\), "
                                         r"model \(16, 6\)\)'"):
        loop.load_checkpoint(saved)
    assert_unchanged(loop, before)


def test_another_optimizer_type(saved):
    loop = fresh_loop(optimizer_cls=torch.optim.SGD)
    before = snapshot(loop)
    with pytest.raises(ValueError, match=r"holds the state of \['Adam'\] but the TrainLoop has \['SGD'\]"):
        loop.load_checkpoint(saved)
    assert_unchanged(loop, before)


def test_load_checkpoint_takes_a_folder_and_expands_home(tmp_path, saved, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "exp" / "checkpoint_model").mkdir(parents=True)
    write(tmp_path / "exp" / "checkpoint_model" / "model_epoch_1.pt", open(saved, "rb").read())
    loop = fresh_loop()
    loop.load_checkpoint("~/exp")
    assert loop.epoch == 1 and loop.total_iteration_idx == 6
    (tmp_path / "empty_experiment").mkdir()
    with pytest.raises(FileNotFoundError, match="No loadable checkpoint in the folder"):
        loop.load_checkpoint("~/empty_experiment")
