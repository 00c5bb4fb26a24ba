"""Performance-evaluation callbacks: metrics in the history, reports, history files and plots."""
import json
import logging
import os

import pytest
import torch

from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.performance_eval import (
    MetricHistoryRename, ModelPerformanceEvaluation, ModelPerformancePrintReport, ModelTrainHistoryFileWriter,
    ModelTrainHistoryPlot, TrainHistoryFormatter)
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopCheckpoint
from tests.tracking.helpers import loop_args


def hand_accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(dim=1) == y).sum().item()
            total += len(y)
    model.train()
    return correct / total


class HandAccuracy(AbstractCallback):
    """Computes the validation accuracy by hand at every epoch end (runs after the evaluation)."""

    def __init__(self):
        super().__init__("hand accuracy", execution_order=500)
        self.values = []

    def on_epoch_end(self):
        loop = self.train_loop_obj
        self.values.append(hand_accuracy(loop.model, loop.validation_loader))


def test_val_Accuracy_in_history_equals_hand_computed():
    loop = TrainLoop(*loop_args(), show_progress=False)
    hand = HandAccuracy()
    loop.fit(num_epochs=3, callbacks=[ModelPerformanceEvaluation(ClassificationResultPackage(), {}), hand])
    assert loop.train_history["val_Accuracy"] == hand.values
    assert len(set(hand.values)) > 1 or hand.values[0] not in (0.0, 1.0)
    assert "train_Accuracy" not in loop.train_history
    # and once more at the end of training, as the original's users read it
    assert loop.train_history["train_end_val_Accuracy"] == [hand.values[-1]]


def test_train_and_val_with_frequency_and_shared_prediction_cache():
    loop = TrainLoop(*loop_args(), show_progress=False)
    calls = []
    original = loop.predict_with_model

    def counting(*args, **kwargs):
        calls.append(kwargs.get("dataset_info", {}).get("type"))
        return original(*args, **kwargs)

    loop.predict_with_model = counting
    evaluation = ModelPerformanceEvaluation(ClassificationResultPackage(), {"a": 1}, on_train_data=True,
                                            eval_frequency=2)
    loop.fit(num_epochs=4, callbacks=[evaluation, ModelPerformanceEvaluation(ClassificationResultPackage(), {})])
    assert len(loop.train_history["train_Accuracy"]) == 2  # epochs 1 and 3 (indices 0 and 2), as the original
    assert len(loop.train_history["val_Accuracy"]) == 2 + 4  # both callbacks write val_Accuracy
    assert len(loop.train_history["train_end_val_Accuracy"]) == 2  # both, at the end of training
    assert calls.count("validation") == 4  # one prediction pass per epoch, shared by both callbacks
    assert calls.count("train") == 3  # epochs 1 and 3, and the end of training (weights changed since)


def test_evaluation_at_train_end_only():
    loop = TrainLoop(*loop_args(), show_progress=False)
    loop.fit(num_epochs=2, callbacks=[ModelPerformanceEvaluation(ClassificationResultPackage(), {},
                                                                 on_each_epoch=False)])
    assert "val_Accuracy" not in loop.train_history
    assert len(loop.train_history["train_end_val_Accuracy"]) == 1


def test_evaluation_bad_input():
    with pytest.raises(TypeError, match="result_package"):
        ModelPerformanceEvaluation("accuracy", {})
    with pytest.raises(ValueError, match="on_train_data"):
        ModelPerformanceEvaluation(ClassificationResultPackage(), {}, on_train_data=False, on_val_data=False)
    with pytest.raises(ValueError, match="eval_frequency"):
        ModelPerformanceEvaluation(ClassificationResultPackage(), {}, eval_frequency=0)
    model, train, _, test, optimizer, criterion = loop_args()
    loop = TrainLoop(model, train, None, test, optimizer, criterion, show_progress=False)
    with pytest.raises(ValueError, match="validation_loader"):
        loop.fit(num_epochs=1, callbacks=[ModelPerformanceEvaluation(ClassificationResultPackage(), {})])


def test_print_report(caplog):
    loop = TrainLoop(*loop_args(), show_progress=False)
    with caplog.at_level(logging.INFO, logger="aitoolbox"):
        loop.fit(num_epochs=2, callbacks=[ModelPerformanceEvaluation(ClassificationResultPackage(), {}),
                                          ModelPerformancePrintReport(["val_Accuracy"], list_tracked_metrics=True)])
    reports = [r.getMessage() for r in caplog.records if "performance report" in r.getMessage()]
    assert len(reports) == 3 and f"val_Accuracy: {loop.train_history['val_Accuracy'][-1]}" in reports[-2]
    assert f"train_end_val_Accuracy: {loop.train_history['train_end_val_Accuracy'][-1]}" in reports[-1]
    with pytest.raises(KeyError, match="val_missing"):
        TrainLoop(*loop_args(), show_progress=False).fit(
            num_epochs=1, callbacks=[ModelPerformancePrintReport(["val_missing"])])


def test_metric_history_rename_and_formatter():
    loop = TrainLoop(*loop_args(), show_progress=False)
    doubled = TrainHistoryFormatter(lambda history: history["loss"][-1], lambda v: ("double_loss", 2 * v))
    loop.fit(num_epochs=2, callbacks=[ModelPerformanceEvaluation(ClassificationResultPackage(), {}),
                                      MetricHistoryRename("val_Accuracy", "accuracy"), doubled])
    assert loop.train_history["accuracy"] == loop.train_history["val_Accuracy"]
    assert loop.train_history["double_loss"] == [2 * v for v in loop.train_history["loss"]]
    with pytest.raises(KeyError, match="not found"):
        TrainLoop(*loop_args(), show_progress=False).fit(num_epochs=1,
                                                         callbacks=[MetricHistoryRename("nope", "x")])
    lenient = TrainLoop(*loop_args(), show_progress=False)
    lenient.fit(num_epochs=1, callbacks=[MetricHistoryRename("nope", "x", strict_metric_extract=False)])
    assert "x" not in lenient.train_history


@pytest.mark.parametrize("file_format", ["txt", "csv", "json"])
def test_history_file_writer_and_plot_use_the_tracking_loops_experiment(tmp_path, file_format):
    loop = TrainLoopCheckpoint(*loop_args(), "p", "e", tmp_path, {}, cloud_save_mode=None, show_progress=False)
    loop.fit(num_epochs=2, callbacks=[ModelTrainHistoryFileWriter(train_end=True, file_format=file_format),
                                      ModelTrainHistoryPlot(epoch_end=False, train_end=True, file_format="svg")])
    results = os.path.join(loop.experiment_dir, "results")
    with open(os.path.join(results, f"train_history.{file_format}")) as f:
        text = f.read()
    if file_format == "json":
        assert json.loads(text) == loop.train_history.get_train_history_dict()
    elif file_format == "csv":
        assert text.splitlines()[0] == "epoch,loss,accumulated_loss,val_loss,train_end_test_loss"
    else:
        assert text.startswith("Epoch 1: loss: ")
    assert sorted(os.listdir(os.path.join(results, "plots"))) == sorted(
        f"{m}.svg" for m in ("loss", "accumulated_loss", "val_loss", "train_end_test_loss"))


def test_history_writer_with_own_experiment_and_without_any(tmp_path):
    writer = ModelTrainHistoryFileWriter(file_format="json", project_name="p", experiment_name="e",
                                         local_model_result_folder_path=tmp_path)
    TrainLoop(*loop_args(), show_progress=False).fit(num_epochs=1, callbacks=[writer])
    assert os.path.isfile(os.path.join(writer.store.path, "results", "train_history.json"))
    with pytest.raises(ValueError, match="no experiment folder"):
        TrainLoop(*loop_args(), show_progress=False).fit(num_epochs=1, callbacks=[ModelTrainHistoryPlot()])
    with pytest.raises(ValueError, match="experiment_name"):
        ModelTrainHistoryPlot(project_name="p", local_model_result_folder_path=tmp_path)
    with pytest.raises(ValueError, match="file_format"):
        ModelTrainHistoryFileWriter(file_format="xml")
