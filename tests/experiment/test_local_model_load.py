"""PyTorchLocalModelLoader on the experiment folders this aitoolbox writes.

aitoolbox 1.8's users load the final model with ``load_model(..., model_save_dir='model')`` and a
checkpoint with ``model_save_dir='checkpoint_model', epoch_num=n``; the same calls find this
aitoolbox's ``model/model.pt`` and ``checkpoint_model/model_epoch_<n + 1>.pt``.
"""
import pytest
import torch

from aitoolbox.experiment.local_load import local_model_load
from aitoolbox.experiment.local_load.local_model_load import PyTorchLocalModelLoader
from aitoolbox.torchtrain.callbacks import model_save
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopCheckpointEndSave
from tests.tracking.helpers import loop_args, make_model

BATCHES_PER_EPOCH = 6  # 48 samples, batch size 8


@pytest.fixture
def trained(tmp_path):
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path, {}, cloud_save_mode=None,
                                      show_progress=False)
    loop.fit(num_epochs=2)
    return loop, PyTorchLocalModelLoader(tmp_path)


def assert_same_weights(model_a, model_b):
    for (name_a, a), (name_b, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert name_a == name_b and torch.equal(a, b)


def test_final_model_file_name_matches_the_saver():
    assert local_model_load.FINAL_MODEL_FILE == model_save.FINAL_MODEL_FILE


def test_final_model_loads_with_its_optimizer(trained):
    loop, loader = trained
    representation = loader.load_model("proj", "exp", loop.experiment_timestamp, model_save_dir="model")
    assert loader.model_path_loaded.endswith("model/model.pt")
    assert representation["epoch"] == 1   # 0-based index of the last finished epoch, as aitoolbox 1.8
    model = loader.init_model(make_model(seed=99))
    assert_same_weights(model, loop.model)
    # predictions of the reloaded model are the trained loop's
    reloaded = TrainLoop(model, loop.train_loader, loop.validation_loader, loop.test_loader, None, loop.criterion,
                         show_progress=False)
    assert torch.equal(reloaded.predict_on_test_set()[0], loop.predict_on_test_set()[0])
    optimizer = loader.init_optimizer(torch.optim.Adam(model.parameters(), lr=0.01))
    final = loop.optimizer.state_dict()["state"]
    for key, value in optimizer.state_dict()["state"].items():
        assert torch.equal(value["exp_avg"], final[key]["exp_avg"])


@pytest.mark.parametrize("epoch_num", [0, 1])
def test_checkpoint_by_original_epoch_index(trained, epoch_num):
    loop, loader = trained
    representation = loader.load_model("proj", "exp", loop.experiment_timestamp, model_save_dir="checkpoint_model",
                                       epoch_num=epoch_num)
    assert loader.model_path_loaded.endswith(f"checkpoint_model/model_epoch_{epoch_num + 1}.pt")
    # counted as aitoolbox 1.8 did: index of the finished epoch and of the last batch
    assert representation["epoch"] == epoch_num
    assert representation["iteration_idx"] == (epoch_num + 1) * BATCHES_PER_EPOCH - 1
    model = loader.init_model(make_model(seed=99))
    optimizer = loader.init_optimizer(torch.optim.Adam(model.parameters(), lr=0.01))
    steps = optimizer.state_dict()["state"][0]["step"]
    assert int(steps) == (epoch_num + 1) * BATCHES_PER_EPOCH
    if epoch_num == 1:  # the last checkpoint is the final state
        assert_same_weights(model, loop.model)
        final = loop.optimizer.state_dict()["state"]
        for key, value in optimizer.state_dict()["state"].items():
            assert torch.equal(value["exp_avg"], final[key]["exp_avg"])


def test_missing_model_names_both_layouts(trained):
    loop, loader = trained
    with pytest.raises(FileNotFoundError, match=r"_E7\.pth or model_epoch_8\.pt"):
        loader.load_model("proj", "exp", loop.experiment_timestamp, model_save_dir="checkpoint_model", epoch_num=7)


def test_continue_training_from_the_final_model(trained):
    from aitoolbox.torchtrain.callbacks.model_load import ModelLoadContinueTraining

    loop, loader = trained
    for saved_model_dir in ("model", "checkpoint_model"):   # the final model, the newest checkpoint
        fresh = TrainLoop(*loop_args(seed=5), show_progress=False)
        fresh.callbacks_handler.register_callbacks([ModelLoadContinueTraining(
            loop.experiment_timestamp, saved_model_dir=saved_model_dir, project_name="proj", experiment_name="exp",
            local_model_result_folder_path=loader.local_model_result_folder_path)])
        assert fresh.epoch == 2
        assert_same_weights(fresh.model, loop.model)


def test_a_bare_state_dict_explains_how_to_use_it(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(make_model().state_dict(), path)
    with pytest.raises(ValueError, match="model state dict only.*load_state_dict"):
        TrainLoop(*loop_args(seed=5), show_progress=False).load_checkpoint(str(path))
