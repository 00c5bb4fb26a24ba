"""aitoolbox 1.8's local savers and loaders: its import paths, file layout and return values."""
import json
import os

import pytest
import torch
from torch import nn

from aitoolbox.experiment import experiment_folder
from aitoolbox.experiment.experiment_saver import AbstractExperimentSaver
from aitoolbox.experiment.local_experiment_saver import BaseFullExperimentLocalSaver, FullPyTorchExperimentLocalSaver
from aitoolbox.experiment.local_load.local_model_load import AbstractLocalModelLoader, PyTorchLocalModelLoader
from aitoolbox.experiment.local_save.folder_create import ExperimentFolder
from aitoolbox.experiment.local_save.local_model_save import (
    AbstractLocalModelSaver, BaseLocalModelSaver, LocalSubOptimalModelRemover, PyTorchLocalModelSaver)
from aitoolbox.experiment.local_save.local_results_save import (
    AbstractLocalResultsSaver, BaseLocalResultsSaver, LocalResultsSaver)
from aitoolbox.experiment.result_package.abstract_result_packages import AbstractResultPackage
from aitoolbox.experiment.training_history import TrainingHistory

TS = "2024-05-01_13-45-12"


class FixedResultPackage(AbstractResultPackage):
    def __init__(self, results, hyperparams, extra_files=None):
        super().__init__("fixedPkg")
        self.fixed, self.hyper = results, hyperparams
        self.extra_files = extra_files
        self.y_true, self.y_predicted = [1.0, 0.0, 1.0], [0.9, 0.2, 0.4]

    def prepare_results_dict(self):
        return self.fixed

    def get_results(self):
        return self.fixed

    def get_hyperparameters(self):
        return self.hyper

    def get_additional_results_dump_paths(self):
        return self.extra_files


def model_dict(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": None, "epoch": 4, "hyperparams": {}}


def history():
    return TrainingHistory().wrap_pre_prepared_history({"loss": [3.0, 2.0, 1.5], "val_loss": [3.5, 2.5, 2.0]})


def test_experiment_folder_is_ours_with_the_originals_static_methods(tmp_path):
    assert ExperimentFolder is experiment_folder.ExperimentFolder
    project, experiment = ExperimentFolder.get_base_folder_paths("proj", "exp", TS, tmp_path)
    assert (project, experiment) == (str(tmp_path / "proj"), str(tmp_path / "proj" / f"exp_{TS}"))
    assert not os.path.exists(project)
    assert ExperimentFolder.create_base_folder("proj", "exp", TS, tmp_path) == experiment
    assert os.path.isdir(experiment)
    assert ExperimentFolder.create_base_folder("proj", "exp", TS, tmp_path) == experiment  # reused, no suffix
    with pytest.raises(ValueError, match="project_name"):
        ExperimentFolder.create_base_folder("../escape", "exp", TS, tmp_path)


@pytest.mark.parametrize("checkpoint_model, sub_folder", [(False, "model"), (True, "checkpoint_model")])
def test_pytorch_local_model_saver_layout_and_return(tmp_path, checkpoint_model, sub_folder):
    saver = PyTorchLocalModelSaver(tmp_path, checkpoint_model=checkpoint_model)
    assert isinstance(saver, AbstractLocalModelSaver) and isinstance(saver, BaseLocalModelSaver)
    folder = tmp_path / "proj" / f"exp_{TS}" / sub_folder
    assert saver.save_model(model_dict(), "proj", "exp", TS) == (f"model_exp_{TS}.pth", str(folder / f"model_exp_{TS}.pth"))
    assert saver.save_model(model_dict(), "proj", "exp", TS, epoch=3)[0] == f"model_exp_{TS}_E3.pth"
    name, path = saver.save_model(model_dict(1), "proj", "exp", TS, epoch=3, iteration_idx=17)
    assert name == f"model_exp_{TS}_E3_ITER17.pth" and path == str(folder / name)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model_state_dict"]["weight"], model_dict(1)["model_state_dict"]["weight"])
    assert sorted(os.listdir(folder)) == sorted([f"model_exp_{TS}.pth", f"model_exp_{TS}_E3.pth", name])


def test_model_saver_timestamp_defaults_to_now(tmp_path):
    name, path = PyTorchLocalModelSaver(tmp_path).save_model(model_dict(), "proj", "exp")
    timestamp = name[len("model_exp_"):-len(".pth")]
    assert len(timestamp) == len(TS) and os.path.isfile(path)
    assert os.path.dirname(os.path.dirname(path)) == str(tmp_path / "proj" / f"exp_{timestamp}")


@pytest.mark.parametrize("missing", ["model_state_dict", "optimizer_state_dict", "epoch", "hyperparams"])
def test_model_dict_must_hold_the_required_keys(tmp_path, missing):
    model = model_dict()
    del model[missing]
    with pytest.raises(ValueError, match=missing):
        PyTorchLocalModelSaver(tmp_path).save_model(model, "proj", "exp", TS)
    assert not os.path.exists(tmp_path / "proj")


class RecordingRemover(LocalSubOptimalModelRemover):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.removed = []

    def rm_suboptimal_model(self, rm_model_paths):
        self.removed += rm_model_paths


def test_suboptimal_model_remover_default_metric_keeps_the_best():
    remover = RecordingRemover("loss", num_best_kept=2)
    assert remover.decrease_metric and remover.is_default_metric
    for i, loss in enumerate([5.0, 3.0, 4.0, 1.0]):
        remover.decide_if_remove_suboptimal_model({"loss": [loss]}, [f"m{i}"])
    assert remover.removed == ["m0", "m2"]
    assert sorted(p for p, _ in remover.model_save_history) == [["m1"], ["m3"]]


def test_suboptimal_model_remover_non_default_metric_lags_one_save():
    remover = RecordingRemover("val_accuracy", num_best_kept=1)
    assert not remover.decrease_metric and not remover.is_default_metric
    remover.decide_if_remove_suboptimal_model({}, ["m0"])
    assert remover.non_default_metric_buffer == ["m0"] and remover.model_save_history == []
    remover.decide_if_remove_suboptimal_model({"val_accuracy": [0.5]}, ["m1"])
    remover.decide_if_remove_suboptimal_model({"val_accuracy": [0.5, 0.9]}, ["m2"])
    assert remover.model_save_history == [(["m1"], 0.9)] and remover.removed == ["m0"]


def test_suboptimal_model_remover_deletes_files(tmp_path):
    files = [tmp_path / f"m{i}.pth" for i in range(3)]
    for f in files:
        f.write_bytes(b"x")
    remover = LocalSubOptimalModelRemover("loss", num_best_kept=2)
    for f, loss in zip(files, [1.0, 3.0, 2.0]):
        remover.decide_if_remove_suboptimal_model({"loss": [loss]}, [str(f)])
    assert [f.exists() for f in files] == [True, False, True]


def test_results_saver_folder_helpers(tmp_path):
    saver = BaseLocalResultsSaver(tmp_path, "json")
    paths = BaseLocalResultsSaver.get_experiment_local_results_folder_paths("proj", "exp", TS, tmp_path)
    assert paths == (str(tmp_path / "proj"), str(tmp_path / "proj" / f"exp_{TS}"),
                     str(tmp_path / "proj" / f"exp_{TS}" / "results"))
    assert saver.create_experiment_local_folder_structure("proj", "exp", TS) == paths[2]
    assert os.path.isdir(paths[2])
    assert BaseLocalResultsSaver(tmp_path, "my_fancy_format").file_format == "pickle"
    saver.file_format = "my_fancy_format"
    with pytest.raises(ValueError, match="file_format"):
        saver.save_file({"a": 1}, "x", os.path.join(paths[2], "x"))


@pytest.mark.parametrize("file_format", ["json", "pickle"])
@pytest.mark.parametrize("save_labels", [False, True])
def test_local_results_saver_single_file(tmp_path, file_format, save_labels):
    saver = LocalResultsSaver(tmp_path, file_format)
    assert isinstance(saver, AbstractLocalResultsSaver)
    package = FixedResultPackage({"Accuracy": 0.75}, {"lr": 0.1})
    saved = saver.save_experiment_results(package, history(), "proj", "exp", TS, save_true_pred_labels=save_labels)
    results_dir = tmp_path / "proj" / f"exp_{TS}" / "results"
    name = f"results_hyperParams_hist_exp_{TS}.json"  # JSON whatever file_format: never pickle
    assert saved[0] == [name, str(results_dir / name)]
    with open(saved[0][1], encoding="utf-8") as f:
        content = json.load(f)
    assert content["experiment_name"] == "exp" and content["experiment_results_local_path"] == str(results_dir)
    assert content["results"] == {"Accuracy": 0.75} and content["hyperparameters"] == {"lr": 0.1}
    assert content["training_history"] == history().get_train_history()
    assert ("y_true" in content) is save_labels
    if save_labels:
        assert content["y_true"] == package.y_true and content["y_predicted"] == package.y_predicted
    pytest.importorskip("matplotlib")
    assert sorted(saved[1:]) == [["plots/loss.png", str(results_dir / "plots" / "loss.png")],
                                 ["plots/val_loss.png", str(results_dir / "plots" / "val_loss.png")]]
    assert all(os.path.isfile(path) for _, path in saved)


def test_local_results_saver_separate_files_and_additional_files(tmp_path):
    results_dir = tmp_path / "proj" / f"exp_{TS}" / "results"
    extra = [["attention.txt", str(results_dir / "attention.txt")]]
    package = FixedResultPackage({"Accuracy": 0.5}, {"lr": 0.2}, extra_files=extra)
    saved = LocalResultsSaver(tmp_path, "json").save_experiment_results_separate_files(
        package, TrainingHistory().wrap_pre_prepared_history({}), "proj", "exp", TS, save_true_pred_labels=True)
    names = [f"{p}_exp_{TS}.json" for p in ("results", "hyperparams", "train_history", "true_pred_labels")]
    assert saved == [[n, str(results_dir / n)] for n in names] + extra
    with open(results_dir / names[1], encoding="utf-8") as f:
        assert json.load(f)["hyperparameters"] == {"lr": 0.2}
    with open(results_dir / names[3], encoding="utf-8") as f:
        assert json.load(f) == {"y_true": package.y_true, "y_predicted": package.y_predicted}


def test_full_pytorch_experiment_local_saver(tmp_path):
    saver = FullPyTorchExperimentLocalSaver("proj", "exp", local_model_result_folder_path=tmp_path)
    assert isinstance(saver, AbstractExperimentSaver) and isinstance(saver, BaseFullExperimentLocalSaver)
    assert type(saver.model_saver) is PyTorchLocalModelSaver and type(saver.results_saver) is LocalResultsSaver
    package = FixedResultPackage({"Accuracy": 1.0}, {})
    paths = saver.save_experiment(model_dict(), package, TrainingHistory().wrap_pre_prepared_history({}), TS)
    folder = tmp_path / "proj" / f"exp_{TS}"
    assert paths == [str(folder / "model" / f"model_exp_{TS}.pth"),
                     str(folder / "results" / f"results_hyperParams_hist_exp_{TS}.json")]
    separate = saver.save_experiment(model_dict(), package, TrainingHistory().wrap_pre_prepared_history({}), TS,
                                     separate_files=True)
    assert len(separate) == 4 and all(os.path.isfile(p) for p in separate)
    with pytest.raises(TypeError, match="AbstractLocalModelSaver"):
        BaseFullExperimentLocalSaver(object(), "proj", "exp", tmp_path)


def test_local_model_loader_round_trip(tmp_path):
    saved = model_dict(3)
    PyTorchLocalModelSaver(tmp_path).save_model(saved, "proj", "exp", TS)
    loader = PyTorchLocalModelLoader(tmp_path)
    assert isinstance(loader, AbstractLocalModelLoader) and loader.model_representation is None
    with pytest.raises(ValueError, match="load_model"):
        loader.init_model(nn.Linear(3, 2))
    loaded = loader.load_model("proj", "exp", TS, "model")
    assert loaded["schedulers_state_dict"] == [] and loaded["epoch"] == 4
    model = loader.init_model(nn.Linear(3, 2))
    assert torch.equal(model.weight, saved["model_state_dict"]["weight"])
    with pytest.raises(FileNotFoundError):
        loader.load_model("proj", "exp", TS, "model", epoch_num=9)
