"""Bit-exact resume on CPU: from epoch ends, from mid-epoch checkpoints, and after crashes.

Setup everywhere: a shuffled loader with its own generator, dropout, Adam and a StepLR scheduler
callback. The reference run is a plain TrainLoop trained without interruption; every resumed run
starts from a differently initialised model with scrambled global RNGs, loads a checkpoint, and
must end with exactly (torch.equal) the reference weights, optimizer state and history.
"""
import json
import logging
import os
import random

import numpy as np
import pytest
import torch

from aitoolbox.experiment.checkpoint_registry import find_latest_checkpoint
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.model_load import ModelLoadContinueTraining
from aitoolbox.torchtrain.schedulers.basic import StepLRScheduler
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopCheckpoint
from tests.tracking.helpers import loop_args

NUM_EPOCHS = 4  # 48 samples / batch 8 = 6 batches per epoch, 24 in all


def scheduler():
    return StepLRScheduler(step_size=1, gamma=0.7)


def scramble_global_rng(seed: int = 12345) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def reference_run(grad_accumulation: int, augment: bool = False):
    scramble_global_rng(seed=0)
    loop = TrainLoop(*loop_args(seed=1, augment=augment), show_progress=False)
    loop.fit(num_epochs=NUM_EPOCHS, callbacks=[scheduler()], grad_accumulation=grad_accumulation)
    return loop


@pytest.fixture(scope="module")
def references():
    return {1: reference_run(1), 2: reference_run(2), "augment": reference_run(1, augment=True),
            "augment_torch": reference_run(1, augment="torch")}


def resume(checkpoint_path: str, grad_accumulation: int, augment: bool = False):
    scramble_global_rng()
    loop = TrainLoop(*loop_args(seed=77, augment=augment), show_progress=False)
    loop.load_checkpoint(checkpoint_path)
    loop.fit(num_epochs=NUM_EPOCHS, callbacks=[scheduler()], grad_accumulation=grad_accumulation)
    return loop


def assert_same_run(resumed, reference):
    for (name, p_resumed), p_reference in zip(resumed.model.named_parameters(), reference.model.parameters()):
        assert torch.equal(p_resumed, p_reference), f"parameter {name} differs"
    opt_resumed, opt_reference = resumed.optimizer.state_dict(), reference.optimizer.state_dict()
    for idx, state in opt_reference["state"].items():
        for key, value in state.items():
            assert torch.equal(opt_resumed["state"][idx][key], value), f"optimizer state {idx}.{key} differs"
    assert opt_resumed["param_groups"][0]["lr"] == opt_reference["param_groups"][0]["lr"]
    assert resumed.train_history.get_train_history_dict() == reference.train_history.get_train_history_dict()


class RaiseAt(AbstractCallback):
    """Raises ``exception`` in ``hook`` when ``at`` training batches are done."""

    def __init__(self, at: int, hook: str = "on_batch_begin", exception=RuntimeError("boom")):
        super().__init__("raise at")
        self.at, self.hook, self.exception = at, hook, exception

    def on_batch_begin(self):
        self._maybe_raise("on_batch_begin")

    def on_after_optimizer_step(self):
        self._maybe_raise("on_after_optimizer_step")

    def _maybe_raise(self, hook: str):
        if hook == self.hook and self.train_loop_obj.total_iteration_idx == self.at:
            raise self.exception


def checkpoint_dir(loop) -> str:
    return os.path.join(loop.experiment_dir, "checkpoint_model")


def test_resume_from_end_of_epoch_2(tmp_path, references):
    loop = TrainLoopCheckpoint(*loop_args(seed=1), "p", "e", tmp_path, {}, cloud_save_mode=None, show_progress=False)
    loop.fit(num_epochs=NUM_EPOCHS, callbacks=[scheduler()])
    assert_same_run(loop, references[1])  # the savers do not change the run
    resumed = resume(os.path.join(checkpoint_dir(loop), "model_epoch_2.pt"), grad_accumulation=1)
    assert_same_run(resumed, references[1])


def test_resume_with_model_load_continue_training_callback(tmp_path, references):
    loop = TrainLoopCheckpoint(*loop_args(seed=1), "p", "e", tmp_path, {}, cloud_save_mode=None, show_progress=False)
    loop.fit(num_epochs=2, callbacks=[scheduler()])
    scramble_global_rng()
    resumed = TrainLoop(*loop_args(seed=77), show_progress=False)
    load = ModelLoadContinueTraining(loop.experiment_timestamp, "checkpoint_model", project_name="p",
                                     experiment_name="e", local_model_result_folder_path=tmp_path)
    resumed.fit(num_epochs=NUM_EPOCHS, callbacks=[load, scheduler()])
    assert load.loaded_path == os.path.join(checkpoint_dir(loop), "model_epoch_2.pt")
    assert_same_run(resumed, references[1])


@pytest.mark.parametrize("grad_accumulation", [1, 2])
def test_resume_from_every_checkpoint(tmp_path, references, grad_accumulation):
    """Every 5 batches: mid-epoch, mid-accumulation-window and last-batch-of-epoch checkpoints."""
    loop = TrainLoopCheckpoint(*loop_args(seed=1), "p", "e", tmp_path, {}, cloud_save_mode=None,
                               iteration_save_freq=5, show_progress=False)
    loop.fit(num_epochs=NUM_EPOCHS, callbacks=[scheduler()], grad_accumulation=grad_accumulation)
    files = sorted(f for f in os.listdir(checkpoint_dir(loop)) if f.endswith(".pt"))
    assert len(files) == 4 + 4  # epochs 1-4, iterations 5, 10, 15, 20
    pending = torch.load(os.path.join(checkpoint_dir(loop), "model_iteration_15.pt"), weights_only=True)["pending_grads"]
    assert (pending is not None) == (grad_accumulation == 2)  # 15 = epoch 3, batch 3 of 6: mid-window
    for name in files:
        resumed = resume(os.path.join(checkpoint_dir(loop), name), grad_accumulation)
        assert_same_run(resumed, references[grad_accumulation])


def test_iteration_checkpoint_at_last_batch_of_epoch(tmp_path, references):
    loop = TrainLoopCheckpoint(*loop_args(seed=1), "p", "e", tmp_path, {}, cloud_save_mode=None,
                               iteration_save_freq=6, show_progress=False)
    loop.fit(num_epochs=3, callbacks=[scheduler()])
    state = torch.load(os.path.join(checkpoint_dir(loop), "model_iteration_12.pt"), weights_only=True)
    assert (state["epoch"], state["iteration"]) == (1, 6)  # after the last batch, before the epoch end
    assert_same_run(resume(os.path.join(checkpoint_dir(loop), "model_iteration_12.pt"), 1), references[1])


@pytest.mark.parametrize("grad_accumulation", [1, 2])
def test_resume_from_newest_checkpoint_after_crash(tmp_path, references, grad_accumulation):
    loop = TrainLoopCheckpoint(*loop_args(seed=1), "p", "e", tmp_path, {}, cloud_save_mode=None,
                               iteration_save_freq=5, show_progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        loop.fit(num_epochs=NUM_EPOCHS, callbacks=[scheduler(), RaiseAt(17)], grad_accumulation=grad_accumulation)
    newest = find_latest_checkpoint(checkpoint_dir(loop))
    assert os.path.basename(newest) == "model_crash_iteration_17.pt"
    state = torch.load(newest, weights_only=True)
    assert state["crash"]["exact_resume"] is True and "boom" in state["crash"]["exception"]
    assert (state["epoch"], state["iteration"]) == (2, 5)
    assert (state["pending_grads"] is not None) == (grad_accumulation == 2)
    assert_same_run(resume(newest, grad_accumulation), references[grad_accumulation])
    # the newest regular checkpoint is an exact resume point too
    assert_same_run(resume(os.path.join(checkpoint_dir(loop), "model_iteration_15.pt"), grad_accumulation),
                    references[grad_accumulation])


class InterruptingLoss(torch.nn.CrossEntropyLoss):
    """Raises KeyboardInterrupt in the forward pass of the ``at``-th training batch."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, y_pred, y_true):
        if torch.is_grad_enabled():  # training, not evaluation
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
        return super().forward(y_pred, y_true)


@pytest.mark.parametrize("at", [10, 13])  # mid-epoch; first batch of epoch 3
def test_keyboard_interrupt_in_forward_writes_exact_crash_checkpoint(tmp_path, references, at):
    """The data loading and forward pass of the interrupted batch drew from torch's RNG (noise
    augmentation, dropout); the crash checkpoint still resumes exactly."""
    scramble_global_rng(seed=0)
    model, train, val, test, optimizer, _ = loop_args(seed=1, augment="torch")
    loop = TrainLoopCheckpoint(model, train, val, test, optimizer, InterruptingLoss(at), "p", "e", tmp_path, {},
                               cloud_save_mode=None, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(num_epochs=NUM_EPOCHS, callbacks=[scheduler()])
    newest = find_latest_checkpoint(checkpoint_dir(loop))
    assert os.path.basename(newest) == f"model_crash_iteration_{at - 1}.pt"
    assert torch.load(newest, weights_only=True)["crash"]["exact_resume"] is True
    assert_same_run(resume(newest, 1, augment="torch"), references["augment_torch"])


def test_crash_after_numpy_draws_is_flagged_and_epoch_checkpoint_stays_exact(tmp_path, references):
    """Python's and NumPy's generators are not snapshotted per batch (that costs ~45 us a batch):
    a crash after the batch drew from them is flagged as not exact; regular checkpoints are exact."""
    scramble_global_rng(seed=0)
    model, train, val, test, optimizer, _ = loop_args(seed=1, augment=True)
    loop = TrainLoopCheckpoint(model, train, val, test, optimizer, InterruptingLoss(10), "p", "e", tmp_path, {},
                               cloud_save_mode=None, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(num_epochs=NUM_EPOCHS, callbacks=[scheduler()])
    crash_checkpoint = os.path.join(checkpoint_dir(loop), "model_crash_iteration_9.pt")
    assert torch.load(crash_checkpoint, weights_only=True)["crash"]["exact_resume"] is False
    # the lookup does not prefer the inexact crash checkpoint to the exact one before it
    epoch_checkpoint = os.path.join(checkpoint_dir(loop), "model_epoch_1.pt")
    assert find_latest_checkpoint(checkpoint_dir(loop)) == epoch_checkpoint
    assert_same_run(resume(epoch_checkpoint, 1, augment=True), references["augment"])


def test_crash_mid_update_is_flagged_not_exact(tmp_path, caplog):
    loop = TrainLoopCheckpoint(*loop_args(seed=1), "p", "e", tmp_path, {}, cloud_save_mode=None, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="aitoolbox"):
        with pytest.raises(RuntimeError):
            loop.fit(num_epochs=2, callbacks=[RaiseAt(3, hook="on_after_optimizer_step")])
    state = torch.load(os.path.join(checkpoint_dir(loop), "model_crash_iteration_3.pt"), weights_only=True)
    assert state["crash"]["exact_resume"] is False
    with open(os.path.join(checkpoint_dir(loop), "checkpoints.json")) as f:
        assert json.load(f)["checkpoints"][-1]["exact_resume"] is False
    assert any("not bit-exact" in r.getMessage() for r in caplog.records)
