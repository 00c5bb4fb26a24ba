"""Drop-in behaviour of aitoolbox 1.8's experiment API (UPSTREAM_API.md section 3, "follow the original").

Metric names, result-package and metric operators, MultipleResultPackageWrapper, TrainingHistory,
append_concat_predictions, result packages' additional files, and the performance callbacks as the
original's users write them.
"""
import json
import logging
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from aitoolbox.experiment.core_metrics.abstract_metric import AbstractBaseMetric
from aitoolbox.experiment.core_metrics.classification import (
    AccuracyMetric, F1ScoreMetric, PrecisionMetric, PrecisionRecallCurveAUCMetric, RecallMetric, ROCAUCMetric)
from aitoolbox.experiment.core_metrics.regression import MeanAbsoluteErrorMetric, MeanSquaredErrorMetric
from aitoolbox.experiment.result_package.abstract_result_packages import (
    AbstractResultPackage, MultipleResultPackageWrapper, PreCalculatedResultPackage)
from aitoolbox.experiment.result_package.basic_packages import (
    BinaryClassificationResultPackage, ClassificationResultPackage, RegressionResultPackage)
from aitoolbox.experiment.training_history import TrainingHistory
from aitoolbox.torchtrain.callbacks.model_save import save_additional_result_files
from aitoolbox.torchtrain.callbacks.performance_eval import (
    ModelPerformanceEvaluation, ModelPerformancePrintReport, ModelTrainHistoryBaseCB,
    ModelTrainHistoryFileWriter, ModelTrainHistoryPlot)
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopCheckpointEndSave
from aitoolbox.torchtrain.train_loop.components.pred_collate_fns import (
    append_concat_predictions, torch_cat_transf)
from tests.tracking.helpers import loop_args, make_data, make_model


class ValueMetric(AbstractBaseMetric):
    """The original's test dummy: the metric result is the value given."""

    def __init__(self, value):
        super().__init__(value, value, "dummy_metric", np_array=False)

    def calculate_metric(self):
        return self.y_true


class FixedPackage(AbstractResultPackage):
    def __init__(self, results, pkg_name="Fixed"):
        super().__init__(pkg_name)
        self.results = results

    def prepare_results_dict(self):
        return dict(self.results)


def fixed(results, pkg_name="Fixed", y_true=(10, 10), y_pred=(11, 11), hyper=None):
    package = FixedPackage(results, pkg_name)
    package.prepare_result_package(list(y_true), list(y_pred), hyper)
    return package


# ---------------------------------------------------------------------------- 1. metric names
def test_metric_names_are_the_originals():
    y_true, scores = np.array([0, 1, 1, 0, 1]), np.array([0.2, 0.7, 0.4, 0.1, 0.9])
    names = [m.metric_name for m in (
        AccuracyMetric(y_true, scores, positive_class_thresh=0.5), ROCAUCMetric(y_true, scores),
        PrecisionRecallCurveAUCMetric(y_true, scores), F1ScoreMetric(y_true, scores, 0.5),
        PrecisionMetric(y_true, scores, 0.5), RecallMetric(y_true, scores, 0.5),
        MeanSquaredErrorMetric(y_true, scores), MeanAbsoluteErrorMetric(y_true, scores))]
    assert names == ["Accuracy", "ROC_AUC", "PrecisionRecall_AUC", "F1_score", "Precision", "Recall",
                     "Mean_squared_error", "Mean_absolute_error"]


def test_packages_report_the_originals_keys():
    y_true, scores = np.array([0, 1, 1, 0, 1]), np.array([0.2, 0.7, 0.4, 0.1, 0.9])
    classification = ClassificationResultPackage()
    classification.prepare_result_package([0, 1, 2, 2], np.eye(3)[[0, 1, 1, 2]])
    assert classification.get_results() == {"Accuracy": 0.75}  # Accuracy only, as the original
    binary = BinaryClassificationResultPackage()
    binary.prepare_result_package(y_true, scores)
    assert list(binary.get_results()) == ["Accuracy", "ROC_AUC", "PrecisionRecall_AUC", "F1_score"]
    regression = RegressionResultPackage()
    regression.prepare_result_package([1.0, 2.0], [1.5, 2.0])
    assert regression.get_results() == {"Mean_squared_error": 0.125, "Mean_absolute_error": 0.25}


def test_packages_take_the_originals_constructor_args():
    package = ClassificationResultPackage(strict_content_check=True, my_note="kept")
    assert package.strict_content_check is True and package.package_metadata == {"my_note": "kept"}
    assert BinaryClassificationResultPackage(0.3, False, a=1).package_metadata == {"a": 1}


def test_history_keys_train_and_val_accuracy():
    loop = TrainLoop(*loop_args(), show_progress=False)
    loop.fit(num_epochs=2, callbacks=[ModelPerformanceEvaluation(
        ClassificationResultPackage(), {"lr": 0.01}, on_each_epoch=True, on_train_data=True, on_val_data=True)])
    history = loop.train_history
    assert len(history["train_Accuracy"]) == 2 and len(history["val_Accuracy"]) == 2
    assert len(history["train_end_train_Accuracy"]) == 1 and len(history["train_end_val_Accuracy"]) == 1
    y_pred, y_true, _ = loop.predict_on_validation_set()
    assert history["train_end_val_Accuracy"][0] == pytest.approx((y_pred.argmax(1) == y_true).double().mean().item())


# ---------------------------------------------------------------------------- 2. MultipleResultPackageWrapper
def test_wrapper_built_empty_then_prepared_nests_results_per_package():
    pkg_1 = fixed({"metric1": 33232, "metric2": 1000}, "Dummy", hyper={"a": 1})
    pkg_2 = fixed({"metric3": 1, "metric4": 2}, "Dummy", y_true=(5, 6))
    wrapper = MultipleResultPackageWrapper()
    wrapper.prepare_result_package([pkg_1, pkg_2], {"h": 2})
    assert wrapper.get_results() == {"Dummy": {"metric1": 33232, "metric2": 1000},
                                     "Dummy1": {"metric3": 1, "metric4": 2}}
    assert wrapper.y_true["Dummy1"].tolist() == [5, 6]
    assert wrapper.hyperparameters == {"h": 2}
    assert len(wrapper) == 2
    assert str(wrapper) == "--> Dummy:\nmetric1: 33232\nmetric2: 1000\n--> Dummy:\nmetric3: 1\nmetric4: 2"


def test_wrapper_constructor_form_still_works():
    wrapper = MultipleResultPackageWrapper([RegressionResultPackage(), ClassificationResultPackage()])
    wrapper.prepare_result_package([0, 1, 1], [0, 1, 0])
    assert wrapper.get_results()["ClassificationResult"] == {"Accuracy": pytest.approx(2 / 3)}
    assert set(wrapper.get_results()["RegressionResult"]) == {"Mean_squared_error", "Mean_absolute_error"}


# ---------------------------------------------------------------------------- 3. result package operators
def test_package_plus_package_and_dict_gives_wrapper_of_copies():
    pkg_1, pkg_2 = fixed({"m1": 1}, "A", hyper={"x": 1}), fixed({"m2": 2}, "B")
    combined = pkg_1 + pkg_2
    assert isinstance(combined, MultipleResultPackageWrapper)
    assert combined.get_results() == {"A": {"m1": 1}, "B": {"m2": 2}}
    assert combined.result_packages[0] is not pkg_1 and combined.hyperparameters == {"x": 1}
    with_dict = pkg_1 + {"m3": 3}
    assert with_dict.get_results() == {"A": {"m1": 1}, "PreCalculatedResult": {"m3": 3}}
    assert isinstance(with_dict.result_packages[1], PreCalculatedResultPackage)
    assert ({"m3": 3} + pkg_1).get_results() == with_dict.get_results()
    appended = combined + {"m4": 4}
    assert appended.get_results() == {"A": {"m1": 1}, "B": {"m2": 2}, "PreCalculatedResult": {"m4": 4}}
    assert combined.get_results() == {"A": {"m1": 1}, "B": {"m2": 2}}  # a copy was extended


def test_package_in_place_add_merges_flat():
    pkg = fixed({"m1": 1})
    same = pkg
    pkg += fixed({"m2": 2}, "B")
    pkg += {"m3": 3}
    assert pkg is same and type(pkg) is FixedPackage
    assert pkg.get_results() == {"m1": 1, "m2": 2, "m3": 3}
    with pytest.raises(ValueError, match="m1"):
        pkg += {"m1": 5}
    with pytest.raises(ValueError):
        pkg += [1]
    wrapper = MultipleResultPackageWrapper()
    wrapper.prepare_result_package([fixed({"a": 1}, "A")])
    wrapper += {"b": 2}
    wrapper += {"b": 2}
    assert wrapper.get_results() == {"A": {"a": 1}, "PreCalculatedResult": {"b": 2},
                                     "PreCalculatedResult2": {"b": 2}}


def test_package_contains_getitem_and_unprepared(caplog):
    pkg = FixedPackage({"m1": 1})
    with caplog.at_level(logging.WARNING):
        assert pkg.get_results() is None
    assert "prepare_result_package" in caplog.text
    strict = FixedPackage({"m1": 1})
    strict.strict_content_check = True
    with pytest.raises(ValueError):
        strict.get_results()
    for operation in (lambda: "m1" in pkg, lambda: pkg["m1"], lambda: pkg + {"a": 1}, lambda: {"a": 1} + pkg):
        with pytest.raises(ValueError):
            operation()
    pkg.prepare_result_package([1, 2], [1, 2], {})
    assert "m1" in pkg and "nope" not in pkg and pkg["m1"] == 1
    with pytest.raises(KeyError):
        pkg["nope"]
    assert str(pkg) == "m1: 1" and pkg.get_hyperparameters() == {}


# ---------------------------------------------------------------------------- 4. metric operators
def test_metric_operators():
    m10, m12 = ValueMetric(10), ValueMetric(12)
    assert len(m10) == 1 and m10 < m12 and m10 <= ValueMetric(10) and not m10 > m12 and m12 >= m10
    assert m10 < 12 and m10 >= 10.0 and not 10.0 > m12
    assert "dummy_metric" in m10 and "other" not in m10 and m10["dummy_metric"] == 10
    assert m10 + AccuracyMetric([0, 1], [0, 1]) == {"dummy_metric": 10, "Accuracy": 1.0}
    assert {} + m10 == {"dummy_metric": 10} and m10 + {"x": 1} == {"dummy_metric": 10, "x": 1}
    dict_metric = ValueMetric(10)
    dict_metric.metric_result = {"a": 34, "b": 44}
    assert len(dict_metric) == 2 and "a" in dict_metric and dict_metric["b"] == 44
    with pytest.raises(KeyError):
        dict_metric["c"]
    with pytest.raises(ValueError):
        dict_metric > 3
    with pytest.raises(ValueError):
        m10 < dict_metric


# ---------------------------------------------------------------------------- 5. TrainingHistory
def test_training_history_api():
    history = TrainingHistory()
    assert list(history.keys()) == ["loss", "accumulated_loss", "val_loss"]
    assert list(TrainingHistory(has_validation=False).keys()) == ["loss", "accumulated_loss"]
    history["loss"] = 1.0
    history["loss"] = 2.0
    history["new_metric"] = 5
    assert history["loss"] == [1.0, 2.0] and history["new_metric"] == [5]
    added = history + {"loss": 3.0, "other": 1}
    assert added["loss"] == [1.0, 2.0, 3.0] and history["loss"] == [1.0, 2.0]  # a copy
    same = history
    history += {"loss": 4.0}
    assert history is same and history["loss"] == [1.0, 2.0, 4.0]
    with pytest.raises(TypeError):
        history + [1]
    strict = TrainingHistory(strict_content_check=True)
    with pytest.raises(ValueError, match="empty"):
        strict.get_train_history_dict()
    strict["loss"] = 1.0
    with pytest.raises(ValueError, match="length"):
        strict.qa_check_history_records()


def test_loop_history_keys_train_end_test_loss_appears_when_written():
    loop = TrainLoop(*loop_args(), show_progress=False)
    assert list(loop.train_history.keys()) == ["loss", "accumulated_loss", "val_loss"]
    loop.fit(num_epochs=2)
    assert list(loop.train_history.keys()) == ["loss", "accumulated_loss", "val_loss", "train_end_test_loss"]
    assert [len(v) for v in loop.train_history.values()] == [2, 2, 2, 1]


def test_accumulated_loss_is_exactly_the_mean_batch_loss():
    torch.manual_seed(1)
    model = nn.Linear(6, 3)
    train = DataLoader(make_data(48), batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loop = TrainLoop(model, train, None, None, optimizer, nn.CrossEntropyLoss(), show_progress=False)
    loop.fit(num_epochs=1)
    with torch.no_grad():
        expected = np.mean([nn.CrossEntropyLoss()(model(x), y).item() for x, y in train])
    assert loop.train_history["accumulated_loss"] == [pytest.approx(expected, rel=1e-6)]
    assert "train_end_test_loss" not in loop.train_history


# ---------------------------------------------------------------------------- 6. append_concat_predictions
def test_append_concat_predictions_tensor_and_list_batches():
    first, second = torch.rand(4, 2), torch.rand(3, 2)
    collected = append_concat_predictions(first, [])
    collected = append_concat_predictions(second, collected)
    assert len(collected) == 2 and collected[0] is first and collected[1] is second
    assert torch.equal(torch_cat_transf(collected), torch.cat([first, second]))
    assert append_concat_predictions([1, 2], [0]) == [0, 1, 2]
    arrays = append_concat_predictions(np.ones(3), [])
    assert len(arrays) == 1 and arrays[0].shape == (3,)


# ---------------------------------------------------------------------------- 7. additional result files
class FileWritingPackage(ClassificationResultPackage):
    """Writes a text file when prepared and names it for the experiment's results."""

    def __init__(self, folder):
        super().__init__()
        self.folder, self.experiment_args = folder, None

    def set_experiment_dir_path_for_additional_results(self, project_name, experiment_name, experiment_timestamp,
                                                       local_model_result_folder_path):
        self.experiment_args = (project_name, experiment_name, experiment_timestamp, local_model_result_folder_path)

    def prepare_results_dict(self):
        with open(os.path.join(self.folder, "notes.txt"), "w") as f:
            f.write(f"n={len(self.y_true)}")
        return super().prepare_results_dict()

    def list_additional_results_dump_paths(self):
        return [["notes.txt", os.path.join(self.folder, "notes.txt")]]


def test_additional_result_files_are_copied_into_results(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    package = FileWritingPackage(str(scratch))
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", str(tmp_path / "out"), {},
                                      val_result_package=package, cloud_save_mode=None, show_progress=False)
    loop.fit(num_epochs=1)
    copied = os.path.join(loop.experiment_dir, "results", "notes.txt")
    with open(copied) as f:
        assert f.read() == "n=24"
    assert package.experiment_args[:2] == ("proj", "exp")
    with open(os.path.join(loop.experiment_dir, "results", "results.json")) as f:
        assert json.load(f)["validation"] == package.get_results()


class RecordingStore:
    def __init__(self, root):
        self.root, self.published = root, []

    def local_path(self, *parts):
        return os.path.join(self.root, *parts)

    def publish(self, path):
        self.published.append(path)
        return path


def test_additional_result_files_are_published_and_checked(tmp_path):
    source = tmp_path / "plot.png"
    source.write_bytes(b"png")
    package = fixed({"a": 1})
    package.list_additional_results_dump_paths = lambda: [["sub/plot.png", str(source)]]
    store = RecordingStore(str(tmp_path / "exp"))
    saved = save_additional_result_files(store, [None, package])
    assert saved == store.published == [str(tmp_path / "exp" / "results" / "sub" / "plot.png")]
    assert (tmp_path / "exp" / "results" / "sub" / "plot.png").read_bytes() == b"png"
    package.list_additional_results_dump_paths = lambda: [["../escape.png", str(source)]]
    with pytest.raises(ValueError, match="escape"):
        save_additional_result_files(store, [package])
    package.list_additional_results_dump_paths = lambda: ["not-a-pair"]
    with pytest.raises(ValueError, match="file_name, local_path"):
        save_additional_result_files(store, [package])


# ---------------------------------------------------------------------------- performance callbacks
def test_performance_callbacks_as_the_originals_users_write_them(caplog):
    evaluation = ModelPerformanceEvaluation(ClassificationResultPackage(), {"lr": 0.01}, on_each_epoch=True,
                                            on_train_data=True, on_val_data=True, eval_frequency=None,
                                            if_available_output_to_project_dir=True)
    report = ModelPerformancePrintReport(["train_Accuracy", "val_Accuracy"], strict_metric_reporting=True)
    loop = TrainLoop(*loop_args(), show_progress=False)
    with caplog.at_level(logging.INFO, logger="aitoolbox"):
        loop.fit(num_epochs=2, callbacks=[evaluation, report])
    text = caplog.text
    assert f"val_Accuracy: {loop.train_history['val_Accuracy'][0]}" in text
    assert f"train_end_train_Accuracy: {loop.train_history['train_end_train_Accuracy'][0]}" in text
    strict = ModelPerformancePrintReport(["val_Accuracy"], strict_metric_reporting=True)
    with pytest.raises(ValueError, match="val_Accuracy"):  # the original's error type (also a KeyError)
        TrainLoop(*loop_args(), show_progress=False).fit(num_epochs=1, callbacks=[strict])
    with pytest.raises(ValueError):
        ModelPerformancePrintReport([])


def test_eval_frequency_counts_from_the_first_epoch():
    loop = TrainLoop(*loop_args(), show_progress=False)
    loop.fit(num_epochs=5, callbacks=[ModelPerformanceEvaluation(ClassificationResultPackage(), {},
                                                                 eval_frequency=2)])
    assert len(loop.train_history["val_Accuracy"]) == 3  # epochs 0, 2, 4 as the original


def test_history_callbacks_subclass_the_base(tmp_path):
    assert issubclass(ModelTrainHistoryPlot, ModelTrainHistoryBaseCB)
    assert issubclass(ModelTrainHistoryFileWriter, ModelTrainHistoryBaseCB)

    class LastLossWriter(ModelTrainHistoryBaseCB):
        def __init__(self, **kwargs):
            super().__init__("last loss writer", epoch_end=False, train_end=True, file_format="txt", **kwargs)

        def write(self):
            path = self.store.local_path("results", f"last_loss.{self.file_format}")
            with open(path, "w") as f:
                f.write(str(self.train_loop_obj.train_history["loss"][-1]))

    writer = LastLossWriter(project_name="p", experiment_name="e", local_model_result_folder_path=str(tmp_path))
    loop = TrainLoop(*loop_args(), show_progress=False)
    loop.fit(num_epochs=1, callbacks=[writer])
    [written] = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs if f == "last_loss.txt"]
    with open(written) as f:
        assert float(f.read()) == loop.train_history["loss"][-1]
    with pytest.raises(ValueError, match="epoch_end"):
        ModelTrainHistoryBaseCB("x", epoch_end=False, train_end=False)
