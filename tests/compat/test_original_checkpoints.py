"""Checkpoints written by aitoolbox 1.8 load and training continues from them.

The files are built here from aitoolbox 1.8's key layout with a plain ``torch.save`` of the dict,
as its ``ModelCheckpoint`` wrote them: ``model_<experiment>_<timestamp>_E<epoch>.pth`` in
``<root>/<project>/<experiment>_<timestamp>/checkpoint_model/`` with ``model_state_dict``,
``optimizer_state_dict`` (a list for a MultiOptimizer), ``schedulers_state_dict``, ``epoch`` (the
0-based index of the finished epoch), ``iteration_idx`` (0-based index of the last batch),
``hyperparams`` and, with AMP, ``amp``.
"""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from aitoolbox.experiment.local_load.local_model_load import PyTorchLocalModelLoader
from aitoolbox.torchtrain.callbacks.model_load import ModelLoadContinueTraining
from aitoolbox.torchtrain.multi_loss_optim import MultiOptimizer
from aitoolbox.torchtrain.schedulers.basic import StepLRScheduler
from aitoolbox.torchtrain.train_loop import TrainLoop
from tests.tracking.helpers import loop_args

TS = "2023-01-02_03-04-05"
BATCHES_PER_EPOCH = 6  # 48 samples, batch size 8


def original_checkpoint(tmp_path, epochs=2, with_scheduler=True, multi_optimizer=False, name_epoch=None,
                        data_parallel=False):
    """Train ``epochs`` epochs, then save the loop's state in aitoolbox 1.8's layout."""
    model, train, val, test, optimizer, criterion = loop_args(seed=1)
    if multi_optimizer:
        optimizer = MultiOptimizer([torch.optim.Adam(model[0].parameters(), lr=0.01),
                                    torch.optim.SGD(model[3].parameters(), lr=0.1, momentum=0.9)])
    loop = TrainLoop(model, train, val, test, optimizer, criterion, show_progress=False)
    callbacks = [StepLRScheduler(step_size=1, gamma=0.5)] if with_scheduler else []
    loop.fit(num_epochs=epochs, callbacks=callbacks)
    model_state = nn.DataParallel(model).state_dict() if data_parallel else model.state_dict()
    state = {"model_state_dict": model_state,
             "optimizer_state_dict": optimizer.state_dict(),
             "schedulers_state_dict": [cb.scheduler.state_dict() for cb in callbacks],
             "epoch": epochs - 1,
             "iteration_idx": epochs * BATCHES_PER_EPOCH - 1,
             "hyperparams": {"lr": 0.01, "batch_size": 8, "experiment_file_path": "/tmp/x.py"}}
    folder = tmp_path / "proj" / f"exp_{TS}" / "checkpoint_model"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model_exp_{TS}_E{epochs - 1 if name_epoch is None else name_epoch}.pth"
    torch.save(state, path)
    return str(path), loop, state


def fresh_loop(multi_optimizer=False):
    model, train, val, test, optimizer, criterion = loop_args(seed=77)
    if multi_optimizer:
        optimizer = MultiOptimizer([torch.optim.Adam(model[0].parameters(), lr=0.01),
                                    torch.optim.SGD(model[3].parameters(), lr=0.1, momentum=0.9)])
    return TrainLoop(model, train, val, test, optimizer, criterion, show_progress=False)


def assert_same_tensors(state_a, state_b):
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def assert_same_optimizer_state(opt_a, opt_b):
    a, b = opt_a.state_dict(), opt_b.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx in a["state"]:
        for key, value in a["state"][idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][idx][key])), (idx, key)


def test_load_checkpoint_takes_weights_optimizer_and_position(tmp_path, caplog):
    path, trained, _ = original_checkpoint(tmp_path)
    loop = fresh_loop()
    with caplog.at_level(logging.WARNING, logger="aitoolbox"):
        assert loop.load_checkpoint(path) is loop
    assert_same_tensors(loop.model.state_dict(), trained.model.state_dict())
    assert_same_optimizer_state(loop.optimizer, trained.optimizer)
    assert loop.epoch == 2 and loop.iteration == 0 and loop.total_iteration_idx == 2 * BATCHES_PER_EPOCH
    rng_warnings = [r for r in caplog.records if "RNG" in r.getMessage()]
    assert len(rng_warnings) == 1 and "not exactly" in rng_warnings[0].getMessage()


def test_training_continues_from_the_checkpoint_with_its_scheduler_state(tmp_path):
    path, trained, _ = original_checkpoint(tmp_path)
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    loop = fresh_loop()
    loop.load_checkpoint(path)
    scheduler = StepLRScheduler(step_size=1, gamma=0.5)
    loop.fit(num_epochs=3, callbacks=[scheduler])
    assert loop.epoch == 3 and loop.total_iteration_idx == 3 * BATCHES_PER_EPOCH
    assert len(loop.train_history["loss"]) == 1  # one epoch trained after the loaded ones
    assert any(not torch.equal(before[k], v) for k, v in loop.model.state_dict().items())
    # StepLR was at step 2 (lr 0.01 * 0.5**2) and stepped once more at the end of epoch 3.
    assert scheduler.scheduler.last_epoch == 3
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 3)


def test_saved_schedulers_without_schedulers_in_fit_is_a_clear_error(tmp_path):
    path, _, _ = original_checkpoint(tmp_path)
    loop = fresh_loop()
    load = ModelLoadContinueTraining(TS, epoch_num=1, project_name="proj", experiment_name="exp",
                                     local_model_result_folder_path=tmp_path)
    with pytest.raises(ValueError, match="1 scheduler state.*no schedulers"):
        loop.fit(num_epochs=3, callbacks=[load])
    ignoring = fresh_loop()
    load = ModelLoadContinueTraining(TS, epoch_num=1, ignore_saved_schedulers=True, project_name="proj",
                                     experiment_name="exp", local_model_result_folder_path=tmp_path)
    ignoring.fit(num_epochs=3, callbacks=[load])
    assert ignoring.epoch == 3


def test_model_load_continue_training_with_the_originals_arguments(tmp_path):
    path, trained, _ = original_checkpoint(tmp_path)
    loop = fresh_loop()
    load = ModelLoadContinueTraining(TS, "checkpoint_model", 1, project_name="proj", experiment_name="exp",
                                     local_model_result_folder_path=tmp_path)
    loop.fit(num_epochs=2, callbacks=[load, StepLRScheduler(step_size=1, gamma=0.5)])  # at 2 already
    assert load.loaded_path == path
    assert_same_tensors(loop.model.state_dict(), trained.model.state_dict())
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 2)


def test_model_load_continue_training_finds_the_newest_original_checkpoint(tmp_path):
    original_checkpoint(tmp_path, epochs=1)
    path, trained, _ = original_checkpoint(tmp_path, epochs=2, with_scheduler=False)
    loop = fresh_loop()
    load = ModelLoadContinueTraining(TS, project_name="proj", experiment_name="exp",
                                     local_model_result_folder_path=tmp_path)
    loop.fit(num_epochs=2, callbacks=[load])
    assert load.loaded_path == path and loop.epoch == 2
    assert_same_tensors(loop.model.state_dict(), trained.model.state_dict())


def test_missing_epoch_is_a_clear_error(tmp_path):
    original_checkpoint(tmp_path, epochs=1, with_scheduler=False)
    load = ModelLoadContinueTraining(TS, epoch_num=7, project_name="proj", experiment_name="exp",
                                     local_model_result_folder_path=tmp_path)
    with pytest.raises(FileNotFoundError, match=f"model_exp_{TS}_E7.pth or model_epoch_8.pt"):
        fresh_loop().fit(num_epochs=2, callbacks=[load])


def test_pytorch_local_model_loader_initialises_model_optimizer_and_schedulers(tmp_path):
    _, trained, state = original_checkpoint(tmp_path)
    loader = PyTorchLocalModelLoader(tmp_path)
    loaded = loader.load_model("proj", "exp", TS, "checkpoint_model", 1)
    assert sorted(loaded) == sorted(state) and loaded["epoch"] == 1
    loop = fresh_loop()
    loader.init_model(loop.model)
    loader.init_optimizer(loop.optimizer)
    assert_same_tensors(loop.model.state_dict(), trained.model.state_dict())
    assert_same_optimizer_state(loop.optimizer, trained.optimizer)
    scheduler = StepLRScheduler(step_size=1, gamma=0.5)
    loop.callbacks_handler.register_callbacks([scheduler])
    assert loader.init_scheduler(loop.get_schedulers()) == [scheduler]
    assert scheduler.scheduler.last_epoch == 2
    with pytest.raises(ValueError, match="no schedulers"):
        loader.init_scheduler([])
    assert loader.init_scheduler([], ignore_saved=True) == []


def test_loader_init_amp_takes_the_scaler_state(tmp_path):
    path, _, state = original_checkpoint(tmp_path, with_scheduler=False)
    saved_scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    state["amp"] = saved_scaler.state_dict()
    torch.save(state, path)
    loader = PyTorchLocalModelLoader(tmp_path)
    loader.load_model_from_path(path)
    scaler = loader.init_amp(torch.amp.GradScaler("cpu"))
    assert scaler.state_dict()["scale"] == 512.0 and scaler.state_dict()["growth_interval"] == 7
    loop = fresh_loop()  # a CPU loop runs without a GradScaler: the saved state is ignored
    loop.load_checkpoint(path)
    assert loop.epoch == 2


def test_multi_optimizer_state_list_loads(tmp_path):
    path, trained, _ = original_checkpoint(tmp_path, multi_optimizer=True, with_scheduler=False)
    loop = fresh_loop(multi_optimizer=True)
    loop.load_checkpoint(path)
    for mine, theirs in zip(loop.optimizer.optimizer_lst, trained.optimizer.optimizer_lst):
        assert_same_optimizer_state(mine, theirs)
    loop.fit(num_epochs=3)
    assert loop.epoch == 3
    single = fresh_loop()
    with pytest.raises(ValueError, match="MultiOptimizer"):
        single.load_checkpoint(path)


def test_data_parallel_weights_load_into_a_plain_model(tmp_path):
    path, trained, _ = original_checkpoint(tmp_path, data_parallel=True, with_scheduler=False)
    assert all(k.startswith("module.") for k in torch.load(path, weights_only=True)["model_state_dict"])
    loop = fresh_loop()
    loop.load_checkpoint(path)
    assert_same_tensors(loop.model.state_dict(), trained.model.state_dict())
    loader = PyTorchLocalModelLoader(tmp_path)
    loader.load_model_from_path(path)
    model = fresh_loop().model
    loader.init_model(model, used_data_parallel=True)
    assert_same_tensors(model.state_dict(), trained.model.state_dict())


def test_a_file_of_neither_format_is_a_clear_error(tmp_path):
    state_dict_only = tmp_path / "weights.pth"
    torch.save(fresh_loop().model.state_dict(), state_dict_only)
    with pytest.raises(ValueError, match="Not an aitoolbox checkpoint.*model.load_state_dict"):
        fresh_loop().load_checkpoint(str(state_dict_only))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a file written by torch.save"):
        fresh_loop().load_checkpoint(str(text))


def test_objects_weights_only_refuses_are_a_clear_error(tmp_path):
    path, _, state = original_checkpoint(tmp_path, with_scheduler=False)
    state["hyperparams"] = {"lr": np.float64(0.01)}
    torch.save(state, path)
    with pytest.raises(ValueError, match="weights_only=True.*hyperparams"):
        fresh_loop().load_checkpoint(path)


def test_experiment_details_are_taken_from_a_tracking_train_loop(tmp_path):
    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint

    path, trained, _ = original_checkpoint(tmp_path, with_scheduler=False)
    loop = TrainLoopCheckpoint(*loop_args(seed=77), "proj", "exp", str(tmp_path), {}, cloud_save_mode=None,
                               show_progress=False)
    load = ModelLoadContinueTraining(TS, epoch_num=1)
    loop.fit(num_epochs=3, callbacks=[load])
    assert load.loaded_path == path and loop.epoch == 3
    # the continued run writes its own checkpoints into its own (new) experiment folder
    assert os.path.isfile(os.path.join(loop.experiment_dir, "checkpoint_model", "model_epoch_3.pt"))


def test_legacy_torch_save_format_loads_and_refusals_are_explained(tmp_path):
    """aitoolbox 1.8's older files use torch's legacy (pre-1.6, non-zip) format."""
    path, trained, state = original_checkpoint(tmp_path, with_scheduler=False)
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loop = fresh_loop()
    loop.load_checkpoint(path)
    assert_same_tensors(loop.model.state_dict(), trained.model.state_dict())
    state["hyperparams"] = {"lr": np.float64(0.01)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="refuses to unpickle.*Unsupported global.*weights_only=False"):
        fresh_loop().load_checkpoint(path)
    plain_pickle = tmp_path / "results.p"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a file written by torch.save"):
        fresh_loop().load_checkpoint(str(plain_pickle))
