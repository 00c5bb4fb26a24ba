"""Tracking TrainLoops on local disk: folder contents, keep-best, results, bad input."""
import inspect
import json
import logging
import os
import sys

import pytest
import torch

from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.model_save import ModelCheckpoint, ModelTrainEndSave
from aitoolbox.torchtrain.train_loop import (
    TrainLoop, TrainLoopCheckpoint, TrainLoopCheckpointEndSave, TrainLoopEndSave)
from tests.tracking.helpers import loop_args, make_model

TRACKING_LOOPS = [TrainLoopCheckpoint, TrainLoopEndSave, TrainLoopCheckpointEndSave]


class Probe(AbstractCallback):
    """Records whether training began and whether the experiment folder existed at each point."""

    def __init__(self, folder_fn=None):
        super().__init__("probe")
        self.folder_fn, self.seen = folder_fn, []

    def on_train_begin(self):
        self.seen.append(("train_begin", self.folder_fn and os.path.exists(self.folder_fn())))

    def on_epoch_begin(self):
        self.seen.append(("epoch_begin", self.folder_fn and os.path.exists(self.folder_fn())))


@pytest.mark.parametrize("cls", TRACKING_LOOPS)
def test_signature_matches_original_and_takes_every_trainloop_keyword(cls):
    signature = inspect.signature(cls.__init__).parameters
    params = [name for name, p in signature.items() if p.kind is not p.KEYWORD_ONLY]
    # beyond aitoolbox 1.8: keyword-only additions
    assert [name for name, p in signature.items() if p.kind is p.KEYWORD_ONLY] == (
        [] if cls is TrainLoopEndSave else ["resume"])
    base = list(inspect.signature(TrainLoop.__init__).parameters)
    assert params[:11] == base[:7] + ["project_name", "experiment_name", "local_model_result_folder_path",
                                      "hyperparams"]
    assert params[-len(base[7:]):] == base[7:]
    expected_middle = {
        TrainLoopCheckpoint: ["cloud_save_mode", "bucket_name", "cloud_dir_prefix", "source_dirs",
                              "rm_subopt_local_models", "num_best_checkpoints_kept", "iteration_save_freq"],
        TrainLoopEndSave: ["val_result_package", "test_result_package", "cloud_save_mode", "bucket_name",
                           "cloud_dir_prefix", "source_dirs"],
        TrainLoopCheckpointEndSave: ["val_result_package", "test_result_package", "cloud_save_mode", "bucket_name",
                                     "cloud_dir_prefix", "source_dirs", "rm_subopt_local_models",
                                     "num_best_checkpoints_kept", "iteration_save_freq"],
    }[cls]
    assert params[11:-len(base[7:])] == expected_middle
    defaults = inspect.signature(cls.__init__).parameters
    assert defaults["cloud_save_mode"].default == "s3" and defaults["bucket_name"].default == "model-result"


def test_checkpoint_end_save_local_tree(tmp_path):
    hyperparams = {"lr": 0.01, "nested": {"a": [1, 2]}}
    snapshot = json.dumps(hyperparams)
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path, hyperparams,
                                      val_result_package=ClassificationResultPackage(),
                                      test_result_package=ClassificationResultPackage(),
                                      cloud_save_mode=None, show_progress=False)
    loop.fit(num_epochs=2)
    assert json.dumps(hyperparams) == snapshot  # the user's dict is not mutated
    exp = loop.experiment_dir
    assert exp == os.path.join(str(tmp_path), "proj", f"exp_{loop.experiment_timestamp}")
    files = {os.path.relpath(os.path.join(r, f), exp) for r, _, fs in os.walk(exp) for f in fs}
    expected = {"hyperparams.json", os.path.basename(__file__), "checkpoint_model/checkpoints.json",
                "checkpoint_model/model_epoch_1.pt", "checkpoint_model/model_epoch_2.pt", "model/model.pt",
                "results/results.json", "results/train_history.json", "results/train_history.csv"}
    assert expected <= files
    plots = {f for f in files if f.startswith("results/plots/")}
    assert plots == {f"results/plots/{m}.png" for m in ("loss", "accumulated_loss", "val_loss", "train_end_test_loss")}
    with open(os.path.join(exp, "results", "results.json")) as f:
        results = json.load(f)
    assert set(results["validation"]) == {"Accuracy"}
    assert results["hyperparameters"] == hyperparams
    assert results["final_metrics"]["loss"] == loop.train_history["loss"][-1]
    with open(os.path.join(exp, "results", "train_history.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "epoch,loss,accumulated_loss,val_loss,train_end_test_loss" and len(lines) == 3


def test_final_model_and_checkpoint_load_into_plain_model(tmp_path):
    loop = TrainLoopCheckpointEndSave(*loop_args(), "p", "e", tmp_path, {}, cloud_save_mode=None,
                                      show_progress=False)
    loop.fit(num_epochs=1)
    plain = make_model(seed=99)
    final = torch.load(os.path.join(loop.experiment_dir, "model", "model.pt"), weights_only=True)
    plain.load_state_dict(final["model_state_dict"])   # a model dict, as aitoolbox 1.8's final model
    assert final["epoch"] == 1 and "optimizer_state_dict" in final
    for p_loaded, p_trained in zip(plain.parameters(), loop.model.parameters()):
        assert torch.equal(p_loaded, p_trained)
    checkpoint = torch.load(os.path.join(loop.experiment_dir, "checkpoint_model", "model_epoch_1.pt"),
                            weights_only=True)
    make_model(seed=5).load_state_dict(checkpoint["model_state_dict"])


class Wrapper(torch.nn.DataParallel):
    """A user-built DataParallel-style wrapper around a TTModel (state-dict keys get 'module.')."""

    def get_loss(self, batch, criterion, device):
        return self.module.get_loss(batch, criterion, device)

    def get_loss_eval(self, batch, criterion, device):
        return self.module.get_loss_eval(batch, criterion, device)

    def get_predictions(self, batch, device):
        return self.module.get_predictions(batch, device)


def test_checkpoint_keys_have_no_wrapper_prefix(tmp_path):
    from aitoolbox.torchtrain.model import TTBasicModel

    class Net(TTBasicModel):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.layer(x)

    _, train, val, _, _, crit = loop_args()
    net = Net()
    wrapped = Wrapper(net)
    loop = TrainLoop(wrapped, train, val, None, torch.optim.SGD(wrapped.parameters(), lr=0.1), crit,
                     show_progress=False)
    assert list(wrapped.state_dict())[0].startswith("module.")
    loop.fit(num_epochs=1)
    path = loop.save_checkpoint(str(tmp_path / "c.pt"))
    keys = list(torch.load(path, weights_only=True)["model_state_dict"])
    assert keys == ["layer.weight", "layer.bias"]
    Net().load_state_dict(torch.load(path, weights_only=True)["model_state_dict"])
    loop.load_checkpoint(path)


@pytest.mark.parametrize("lazy", [False, True])
def test_lazy_experiment_save(tmp_path, lazy):
    args = loop_args()
    loop = TrainLoopCheckpoint(*args, "p", "e", tmp_path, {}, cloud_save_mode=None, lazy_experiment_save=lazy,
                               show_progress=False)
    probe = Probe(lambda: loop.experiment_dir)
    assert not os.path.exists(loop.experiment_dir)  # never created by the constructor
    loop.fit(num_epochs=2, callbacks=[probe])
    assert probe.seen[0] == ("train_begin", False)  # probe runs before the savers
    assert probe.seen[1] == ("epoch_begin", not lazy)
    assert probe.seen[2] == ("epoch_begin", True)  # lazy: created with the first checkpoint


def test_keep_best_by_loss_keeps_newest_too(tmp_path):
    loop = TrainLoopCheckpoint(*loop_args(), "p", "e", tmp_path, {}, cloud_save_mode=None,
                               rm_subopt_local_models=True, num_best_checkpoints_kept=2, show_progress=False)
    forced = iter([0.5, 0.2, 0.9, 0.4, 0.7])

    class ForceLoss(AbstractCallback):
        def on_epoch_end(self):
            self.train_loop_obj.train_history["loss"][-1] = next(forced)

    loop.fit(num_epochs=5, callbacks=[ForceLoss("force")])
    kept = sorted(f for f in os.listdir(os.path.join(loop.experiment_dir, "checkpoint_model")) if f.endswith(".pt"))
    # best two by loss: epochs 2 (0.2) and 4 (0.4); epoch 5 is the newest (resume point)
    assert kept == ["model_epoch_2.pt", "model_epoch_4.pt", "model_epoch_5.pt"]
    with open(os.path.join(loop.experiment_dir, "checkpoint_model", "checkpoints.json")) as f:
        manifest = json.load(f)
    assert manifest["newest"] == "model_epoch_5.pt"
    assert sorted(e["file"] for e in manifest["checkpoints"]) == kept


def test_keep_best_by_metric_higher_is_better(tmp_path):
    loop = TrainLoopCheckpoint(*loop_args(), "p", "e", tmp_path, {}, cloud_save_mode=None,
                               rm_subopt_local_models="val_score", num_best_checkpoints_kept=1,
                               show_progress=False)
    scores = iter([0.3, 0.8, 0.5, 0.1])

    class Score(AbstractCallback):
        def on_epoch_end(self):
            self.train_loop_obj.insert_metric_result_into_history("val_score", next(scores))

    loop.fit(num_epochs=4, callbacks=[Score("score")])
    kept = sorted(f for f in os.listdir(os.path.join(loop.experiment_dir, "checkpoint_model")) if f.endswith(".pt"))
    assert kept == ["model_epoch_2.pt", "model_epoch_4.pt"]


def test_plots_skipped_without_matplotlib(tmp_path, monkeypatch, caplog):
    import aitoolbox.experiment.result_writers as writers
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(writers, "_warned_no_matplotlib", False)
    loop = TrainLoopEndSave(*loop_args(), "p", "e", tmp_path, {}, cloud_save_mode=None, show_progress=False)
    with caplog.at_level(logging.INFO, logger="aitoolbox"):
        loop.fit(num_epochs=2)
        loop.fit(num_epochs=3)
    assert not os.path.exists(os.path.join(loop.experiment_dir, "results", "plots"))
    assert os.path.isfile(os.path.join(loop.experiment_dir, "results", "train_history.json"))
    assert sum("matplotlib is not installed" in r.getMessage() for r in caplog.records) == 1


def test_only_main_process_writes(tmp_path):
    loop = TrainLoopCheckpointEndSave(*loop_args(), "p", "e", tmp_path, {}, cloud_save_mode=None,
                                      show_progress=False)
    loop.strategy.rank = 1  # as on a non-main DDP rank
    loop.fit(num_epochs=1)
    assert not os.path.exists(os.path.join(str(tmp_path), "p"))


def test_standalone_callbacks_share_one_experiment(tmp_path):
    checkpoint = ModelCheckpoint("p", "e", tmp_path, {"a": 1}, cloud_save_mode=None)
    end_save = ModelTrainEndSave("p", "e", tmp_path, {"a": 1}, cloud_save_mode=None)
    loop = TrainLoop(*loop_args(), show_progress=False)
    loop.fit(num_epochs=1, callbacks=[checkpoint, end_save])
    assert checkpoint.store is end_save.store
    assert os.listdir(os.path.join(str(tmp_path), "p")) == [checkpoint.store.folder.name]


# ---------------------------------------------------------------- bad input: errors before training
class NeverTrain(AbstractCallback):
    def on_batch_begin(self):
        raise AssertionError("training started")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(project_name="../up"), ValueError, "project_name"),
    (dict(experiment_name="a/b"), ValueError, "experiment_name"),
    (dict(project_name="/abs"), ValueError, "project_name"),
    (dict(cloud_save_mode="dropbox"), ValueError, "cloud_save_mode"),
    (dict(cloud_save_mode="GCS"), ValueError, "cloud_save_mode"),
    (dict(hyperparams=[1, 2]), TypeError, "hyperparams"),
    (dict(rm_subopt_local_models=3), TypeError, "rm_subopt_local_models"),
    (dict(num_best_checkpoints_kept=0), ValueError, "num_best_checkpoints_kept"),
    (dict(iteration_save_freq=-1), ValueError, "iteration_save_freq"),
])
def test_bad_input_raises_at_construction(tmp_path, kwargs, error, match):
    arguments = dict(project_name="p", experiment_name="e", local_model_result_folder_path=tmp_path,
                     hyperparams={}, cloud_save_mode=None)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        TrainLoopCheckpointEndSave(*loop_args(), **arguments)
    assert os.listdir(tmp_path) == []


def test_unwritable_result_folder(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(ValueError, match="local_model_result_folder_path"):
        TrainLoopCheckpoint(*loop_args(), "p", "e", blocker / "results", {}, cloud_save_mode=None)


def test_result_package_without_loader(tmp_path):
    with pytest.raises(ValueError, match="test_result_package.*test_loader"):
        TrainLoopEndSave(*loop_args(with_test=False), "p", "e", tmp_path, {},
                         test_result_package=ClassificationResultPackage(), cloud_save_mode=None)
    with pytest.raises(TypeError, match="val_result_package"):
        TrainLoopEndSave(*loop_args(), "p", "e", tmp_path, {}, val_result_package="accuracy",
                         cloud_save_mode=None)


def test_standalone_end_save_checks_loader_at_registration(tmp_path):
    end_save = ModelTrainEndSave("p", "e", tmp_path, {}, test_result_package=ClassificationResultPackage(),
                                 cloud_save_mode=None)
    loop = TrainLoop(*loop_args(with_test=False), show_progress=False)
    with pytest.raises(ValueError, match="test_loader"):
        loop.fit(num_epochs=1, callbacks=[NeverTrain("never"), end_save])


def test_tracking_imports_no_optional_dependency():
    import subprocess
    code = ("import sys, aitoolbox, aitoolbox.torchtrain.callbacks.performance_eval, "
            "aitoolbox.torchtrain.callbacks.model_load\n"
            "from aitoolbox.torchtrain.train_loop import TrainLoopCheckpointEndSave\n"
            "print(sorted(m for m in ('boto3', 'botocore', 'matplotlib', 'yaml') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
