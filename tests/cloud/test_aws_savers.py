"""aitoolbox 1.8's S3 savers and loaders against a moto server on loopback (real HTTP).

Files land in the bucket at aitoolbox 1.8's key layout
(``<prefix>/<project>/<experiment>_<timestamp>/model|checkpoint_model|results/<file>``) and load back.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from aitoolbox.cloud.AWS import get_s3_client, list_keys
from aitoolbox.cloud.AWS.data_access import AbstractDatasetFetcher, BaseDataLoader, BaseDataSaver
from aitoolbox.cloud.AWS.model_load import BaseModelLoader, PyTorchS3ModelLoader
from aitoolbox.cloud.AWS.model_save import AbstractModelSaver, BaseModelSaver, PyTorchS3ModelSaver
from aitoolbox.cloud.AWS.results_save import AbstractResultsSaver, BaseResultsSaver, S3ResultsSaver
from aitoolbox.experiment.experiment_saver import (
    BaseFullExperimentS3Saver, BaseFullExperimentSaver, FullPyTorchExperimentS3Saver)
from aitoolbox.experiment.local_load.local_model_load import PyTorchLocalModelLoader
from aitoolbox.experiment.result_package.abstract_result_packages import AbstractResultPackage
from aitoolbox.experiment.training_history import TrainingHistory

TS = "2024-05-01_13-45-12"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FixedResultPackage(AbstractResultPackage):
    def __init__(self):
        super().__init__("fixedPkg")
        self.y_true, self.y_predicted = [1, 0], [1, 1]

    def prepare_results_dict(self):
        return {"Accuracy": 0.5}

    def get_results(self):
        return {"Accuracy": 0.5}

    def get_hyperparameters(self):
        return {"lr": 0.1}


def model_dict(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "schedulers_state_dict": [], "epoch": 2, "iteration_idx": 11, "hyperparams": {"lr": 0.1}}


def read_object(bucket, key) -> bytes:
    return get_s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_import_does_not_load_boto3():
    code = ("import sys, aitoolbox.cloud.AWS.model_save, aitoolbox.cloud.AWS.model_load, "
            "aitoolbox.cloud.AWS.results_save, aitoolbox.experiment.experiment_saver\n"
            "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("checkpoint_model, sub_folder", [(False, "model"), (True, "checkpoint_model")])
def test_pytorch_s3_model_saver_key_layout_and_return(s3_bucket, tmp_path, checkpoint_model, sub_folder):
    saver = PyTorchS3ModelSaver(bucket_name=s3_bucket, cloud_dir_prefix="runs/a",
                                local_model_result_folder_path=tmp_path, checkpoint_model=checkpoint_model)
    assert isinstance(saver, AbstractModelSaver) and isinstance(saver, BaseModelSaver)
    cloud_path, timestamp, local_path = saver.save_model(model_dict(), "proj", "exp", TS, epoch=2)
    key = f"runs/a/proj/exp_{TS}/{sub_folder}/model_exp_{TS}_E2.pth"
    assert (cloud_path, timestamp) == (f"{s3_bucket}/{key}", TS)
    assert local_path == str(tmp_path / "proj" / f"exp_{TS}" / sub_folder / f"model_exp_{TS}_E2.pth")
    assert list_keys(s3_bucket) == [key]
    with open(local_path, "rb") as f:
        assert read_object(s3_bucket, key) == f.read()
    with pytest.raises(ValueError, match="hyperparams"):
        saver.save_model({"model_state_dict": {}, "optimizer_state_dict": None, "epoch": 0}, "proj", "exp", TS)


def test_s3_results_saver_uploads_every_results_file(s3_bucket, tmp_path):
    saver = S3ResultsSaver(bucket_name=s3_bucket, local_model_result_folder_path=tmp_path)
    assert isinstance(saver, AbstractResultsSaver) and isinstance(saver, BaseResultsSaver)
    history = TrainingHistory().wrap_pre_prepared_history({})
    main_path, timestamp = saver.save_experiment_results(FixedResultPackage(), history, "proj", "exp", TS,
                                                         save_true_pred_labels=True, separate_files=True)
    prefix = f"proj/exp_{TS}/results"
    assert (main_path, timestamp) == (f"{s3_bucket}/{prefix}/results_exp_{TS}.json", TS)
    names = sorted(f"{p}_exp_{TS}.json" for p in ("results", "hyperparams", "train_history", "true_pred_labels"))
    assert list_keys(s3_bucket) == [f"{prefix}/{n}" for n in names]
    assert json.loads(read_object(s3_bucket, f"{prefix}/hyperparams_exp_{TS}.json"))["hyperparameters"] == {"lr": 0.1}


def test_full_pytorch_experiment_s3_saver(s3_bucket, tmp_path):
    saver = FullPyTorchExperimentS3Saver("proj", "exp", bucket_name=s3_bucket, cloud_dir_prefix="pre",
                                         local_model_result_folder_path=tmp_path)
    assert isinstance(saver, BaseFullExperimentS3Saver) and isinstance(saver, BaseFullExperimentSaver)
    assert type(saver.model_saver) is PyTorchS3ModelSaver and type(saver.results_saver) is S3ResultsSaver
    assert (saver.project_name, saver.experiment_name) == ("proj", "exp")
    model_path, results_path = saver.save_experiment(model_dict(), FixedResultPackage(),
                                                     TrainingHistory().wrap_pre_prepared_history({}), TS)
    assert model_path == f"{s3_bucket}/pre/proj/exp_{TS}/model/model_exp_{TS}.pth"
    assert results_path == f"{s3_bucket}/pre/proj/exp_{TS}/results/results_hyperParams_hist_exp_{TS}.json"
    assert sorted(list_keys(s3_bucket)) == sorted(p[len(s3_bucket) + 1:] for p in (model_path, results_path))


def test_pytorch_s3_model_loader_downloads_and_initialises(s3_bucket, tmp_path):
    saved = model_dict(5)
    PyTorchS3ModelSaver(bucket_name=s3_bucket, local_model_result_folder_path=tmp_path / "trainer",
                        checkpoint_model=True).save_model(saved, "proj", "exp", TS, epoch=2)
    loader = PyTorchS3ModelLoader(tmp_path / "elsewhere", bucket_name=s3_bucket)
    assert isinstance(loader, BaseModelLoader) and type(loader.local_model_loader) is PyTorchLocalModelLoader
    loaded = loader.load_model("proj", "exp", TS, "checkpoint_model", epoch_num=2)
    assert loaded["epoch"] == 2 and loaded["iteration_idx"] == 11
    assert (tmp_path / "elsewhere" / "proj" / f"exp_{TS}" / "checkpoint_model" / f"model_exp_{TS}_E2.pth").is_file()
    model = loader.init_model(nn.Linear(3, 2))
    assert torch.equal(model.weight, saved["model_state_dict"]["weight"])
    optimizer = loader.init_optimizer(torch.optim.SGD(model.parameters(), lr=0.5))
    assert optimizer.param_groups[0]["lr"] == 0.1
    with pytest.raises(FileNotFoundError, match="nor at s3://"):
        loader.load_model("proj", "exp", TS, "checkpoint_model", epoch_num=7)
    with pytest.raises(TypeError, match="AbstractLocalModelLoader"):
        BaseModelLoader(object(), tmp_path, s3_bucket)


def test_base_data_saver_file_and_folder(s3_bucket, tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.txt").write_text("A")
    (tmp_path / "data" / "sub" / "b.txt").write_text("B")
    saver = BaseDataSaver(bucket_name=s3_bucket)
    saver.save_file(str(tmp_path / "data" / "a.txt"), "some_folder/file.txt")
    assert read_object(s3_bucket, "some_folder/file.txt") == b"A"
    assert saver.save_folder(str(tmp_path / "data"), "up") == ["up/a.txt", "up/sub/b.txt"]
    saver.save_folder(str(tmp_path / "data"), "")
    assert list_keys(s3_bucket) == ["a.txt", "some_folder/file.txt", "sub/b.txt", "up/a.txt", "up/sub/b.txt"]
    with pytest.raises(FileNotFoundError, match="local_file_path"):
        saver.save_file(str(tmp_path / "missing.txt"), "x")


def test_base_data_loader(s3_bucket, tmp_path):
    BaseDataSaver(bucket_name=s3_bucket).save_file(__file__, "code/test.py")
    loader = BaseDataLoader(bucket_name=s3_bucket, local_base_data_folder_path=tmp_path)
    target = tmp_path / "dl" / "test.py"
    assert loader.load_file("code/test.py", str(target)) is True
    with open(__file__, "rb") as f:
        assert target.read_bytes() == f.read()
    target.write_text("local copy")
    assert loader.load_file("code/test.py", str(target)) is True
    assert target.read_text() == "local copy"  # a local file is never overwritten
    assert loader.load_file("code/missing.py", str(tmp_path / "missing.py")) is False
    assert not (tmp_path / "missing.py").exists()
    assert loader.exists_local_data_folder("squad") is False and (tmp_path / "squad").is_dir()
    (tmp_path / "squad" / "f").write_text("x")
    assert loader.exists_local_data_folder("squad") is True and (tmp_path / "squad" / "f").exists()
    assert loader.exists_local_data_folder("squad", protect_local_folder=False) is False
    assert os.listdir(tmp_path / "squad") == []
    assert loader.s3.Bucket(s3_bucket).name == s3_bucket


def test_abstract_dataset_fetcher_is_abstract():
    with pytest.raises(TypeError):
        AbstractDatasetFetcher()

    class Fetcher(AbstractDatasetFetcher):
        def fetch_dataset(self, dataset_name=None, protect_local_folder=True):
            return dataset_name

    assert Fetcher().fetch_dataset("x") == "x"


def test_original_checkpoint_in_the_bucket_continues_training(s3_bucket, tmp_path):
    from aitoolbox.torchtrain.callbacks.model_load import ModelLoadContinueTraining
    from aitoolbox.torchtrain.train_loop import TrainLoop
    from tests.tracking.helpers import loop_args

    trained = TrainLoop(*loop_args(seed=1), show_progress=False)
    trained.fit(num_epochs=1)
    state = {"model_state_dict": trained.model.state_dict(), "optimizer_state_dict": trained.optimizer.state_dict(),
             "schedulers_state_dict": [], "epoch": 0, "iteration_idx": 5, "hyperparams": {}}
    PyTorchS3ModelSaver(bucket_name=s3_bucket, local_model_result_folder_path=tmp_path / "trainer",
                        checkpoint_model=True).save_model(state, "proj", "exp", TS, epoch=0)
    resumed = TrainLoop(*loop_args(seed=9), show_progress=False)
    load = ModelLoadContinueTraining(TS, epoch_num=0, project_name="proj", experiment_name="exp",
                                     local_model_result_folder_path=tmp_path / "here", cloud_save_mode="s3",
                                     bucket_name=s3_bucket)
    resumed.fit(num_epochs=1, callbacks=[load])  # at 1 epoch already: loads, trains nothing
    assert load.loaded_path == f"s3://{s3_bucket}/proj/exp_{TS}/checkpoint_model/model_exp_{TS}_E0.pth"
    assert resumed.epoch == 1 and resumed.total_iteration_idx == 6
    for mine, theirs in zip(resumed.model.parameters(), trained.model.parameters()):
        assert torch.equal(mine, theirs)


def test_pytorch_s3_model_loader_finds_this_aitoolboxs_file_names(s3_bucket, tmp_path):
    from aitoolbox.torchtrain.train_loop import TrainLoop
    from tests.tracking.helpers import loop_args, make_model

    loop = TrainLoop(*loop_args(), show_progress=False)
    loop.fit(num_epochs=2)
    prefix = f"proj/exp_{TS}"
    trainer = tmp_path / "trainer"
    trainer.mkdir()
    torch.save(loop.state_dict(), trainer / "checkpoint.pt")
    torch.save(loop.model.state_dict(), trainer / "final.pt")
    BaseDataSaver(s3_bucket).save_file(trainer / "checkpoint.pt", f"{prefix}/checkpoint_model/model_epoch_2.pt")
    BaseDataSaver(s3_bucket).save_file(trainer / "final.pt", f"{prefix}/model/model.pt")

    loader = PyTorchS3ModelLoader(tmp_path / "elsewhere", bucket_name=s3_bucket)
    loaded = loader.load_model("proj", "exp", TS, "checkpoint_model", epoch_num=1)
    assert loaded["epoch"] == 1 and loaded["iteration_idx"] == 11  # aitoolbox 1.8's 0-based indices
    assert (tmp_path / "elsewhere" / prefix / "checkpoint_model" / "model_epoch_2.pt").is_file()
    model = loader.init_model(make_model(seed=9))
    optimizer = loader.init_optimizer(torch.optim.Adam(model.parameters(), lr=0.01))
    assert int(optimizer.state_dict()["state"][0]["step"]) == 12
    for trained, reloaded in zip(loop.model.parameters(), model.parameters()):
        assert torch.equal(trained, reloaded)

    final = PyTorchS3ModelLoader(tmp_path / "third", bucket_name=s3_bucket)
    final.load_model("proj", "exp", TS, "model")
    assert torch.equal(final.init_model(make_model(seed=9))[0].weight, loop.model[0].weight)
    with pytest.raises(FileNotFoundError, match=r"_E5\.pth or model_epoch_6\.pt.*nor at s3://"):
        loader.load_model("proj", "exp", TS, "checkpoint_model", epoch_num=5)
