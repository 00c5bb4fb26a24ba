import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from aitoolbox.experiment.core_metrics.abstract_metric import AbstractBaseMetric
from aitoolbox.experiment.core_metrics.classification import AccuracyMetric, ROCAUCMetric
from aitoolbox.experiment.core_metrics.regression import MeanSquaredErrorMetric
from aitoolbox.experiment.result_package.abstract_result_packages import (
    AbstractResultPackage,
    MultipleResultPackageWrapper,
    PreCalculatedResultPackage,
)
from aitoolbox.experiment.result_package.basic_packages import (
    BinaryClassificationResultPackage,
    ClassificationResultPackage,
    GeneralResultPackage,
    RegressionResultPackage,
)


def binary_data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, size=n)
    scores = np.round(np.clip(0.3 * y_true + rng.random(n) * 0.7, 0, 1), 1)
    return y_true, scores


def multiclass_data(seed=0, n=150, n_classes=3):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, size=n)
    scores = rng.random((n, n_classes))
    scores[np.arange(n), y_true] += 0.5 * rng.random(n)
    return y_true, scores


def regression_data(seed=0, n=80):
    rng = np.random.default_rng(seed)
    y_true = rng.normal(size=n)
    return y_true, y_true + rng.normal(scale=0.3, size=n)


def prepared(package, y_true, y_pred, **kwargs):
    package.prepare_result_package(y_true, y_pred, **kwargs)
    return package


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_package_keys_and_values(seed):
    y_true, scores = multiclass_data(seed)
    y_pred = scores.argmax(axis=1)
    results = prepared(ClassificationResultPackage(), y_true, scores).get_results()
    assert results == {"Accuracy": pytest.approx(skm.accuracy_score(y_true, y_pred))}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thresh", [0.5, 0.65])
def test_binary_package_keys_and_values(seed, thresh):
    y_true, scores = binary_data(seed)
    y_pred = (scores >= thresh).astype(int)
    package = BinaryClassificationResultPackage(positive_class_thresh=thresh)
    results = prepared(package, y_true, scores).get_results()
    assert list(results) == ["Accuracy", "ROC_AUC", "PrecisionRecall_AUC", "F1_score"]
    assert results["Accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert results["ROC_AUC"] == pytest.approx(skm.roc_auc_score(y_true, scores))
    assert results["PrecisionRecall_AUC"] == pytest.approx(skm.average_precision_score(y_true, scores))
    assert results["F1_score"] == pytest.approx(skm.f1_score(y_true, y_pred, zero_division=0))


def test_binary_package_accepts_two_column_torch_probabilities():
    y_true, scores = binary_data(3)
    probs = torch.tensor(np.stack([1 - scores, scores], axis=1))
    a = prepared(BinaryClassificationResultPackage(), torch.tensor(y_true), probs).get_results()
    b = prepared(BinaryClassificationResultPackage(), y_true, scores).get_results()
    assert a == pytest.approx(b)


def test_regression_package_keys_and_values():
    y_true, y_pred = regression_data()
    results = prepared(RegressionResultPackage(), y_true, y_pred).get_results()
    assert list(results) == ["Mean_squared_error", "Mean_absolute_error"]
    assert results["Mean_squared_error"] == pytest.approx(skm.mean_squared_error(y_true, y_pred))
    assert results["Mean_absolute_error"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred))


def test_general_package_runs_given_metrics():
    y_true, y_pred = regression_data(1)
    package = prepared(GeneralResultPackage([MeanSquaredErrorMetric]), y_true, y_pred)
    assert package.get_results() == {
        "Mean_squared_error": pytest.approx(skm.mean_squared_error(y_true, y_pred))}


def test_general_package_rejects_bad_metrics_list():
    with pytest.raises(ValueError, match="metrics_list is empty"):
        GeneralResultPackage([])
    with pytest.raises(TypeError, match="non-metric"):
        GeneralResultPackage([len])


def test_general_package_duplicate_metric_names_raise():
    package = GeneralResultPackage([AccuracyMetric, AccuracyMetric])
    with pytest.raises(ValueError, match="'Accuracy'"):
        package.prepare_result_package([0, 1], [0, 1])


def test_results_are_plain_floats_and_json_serialisable():
    y_true, scores = binary_data(4)
    results = prepared(BinaryClassificationResultPackage(), y_true, scores).get_results()
    assert all(type(v) is float for v in results.values())
    assert json.loads(json.dumps(results)) == results


def test_get_results_before_prepare_warns_or_raises_when_strict(caplog):
    package = RegressionResultPackage()
    assert package.get_results() is None
    assert "call prepare_result_package" in caplog.text
    with pytest.raises(ValueError, match="call prepare_result_package"):
        RegressionResultPackage(strict_content_check=True).get_results()
    assert len(package) == 0
    assert "not prepared" in str(package)


def test_accessors_after_prepare():
    y_true, y_pred = regression_data()
    hyper = {"lr": 0.1}
    package = prepared(RegressionResultPackage(), y_true, y_pred, hyperparameters=hyper,
                       additional_results={"extra": 1})
    assert package.additional_results == {"additional_results": {"extra": 1}}
    assert package.get_hyperparameters() == hyper
    assert package.get_additional_results_dump_paths() is None
    assert package.list_result_names() == ["Mean_squared_error", "Mean_absolute_error"]
    assert len(package) == 2
    text = str(package)
    assert text.startswith("Mean_squared_error: ") and "\nMean_absolute_error: " in text and "Mean_absolute_error:" in text


def test_get_results_returns_a_copy():
    package = prepared(RegressionResultPackage(), *regression_data())
    package.get_results()["Mean_squared_error"] = -1.0
    assert package.get_results()["Mean_squared_error"] >= 0


def test_adding_packages_nests_results_per_package():
    reg = prepared(RegressionResultPackage(), *regression_data())
    extra = PreCalculatedResultPackage({"loss": 0.25})
    combined = reg + extra
    assert isinstance(combined, MultipleResultPackageWrapper)
    assert combined.get_results() == {"RegressionResult": reg.get_results(),
                                      "PreCalculatedResult": {"loss": 0.25}}
    assert len(combined) == 2  # packages held
    assert combined.result_packages[0] is not reg  # copies


def test_sum_and_chained_add_keep_every_package():
    a = PreCalculatedResultPackage({"a": 1.0})
    b = PreCalculatedResultPackage({"b": 2.0})
    c = PreCalculatedResultPackage({"c": 3.0})
    chained = a + b + c
    assert len(chained.result_packages) == 3
    expected = {"PreCalculatedResult": {"a": 1.0}, "PreCalculatedResult1": {"b": 2.0},
                "PreCalculatedResult2": {"c": 3.0}}
    assert chained.get_results() == expected
    assert sum([a, b, c]).get_results() == expected


def test_in_place_add_with_key_clash_raises_naming_key():
    a = PreCalculatedResultPackage({"acc": 1.0, "x": 0.0})
    with pytest.raises(ValueError, match="'acc'"):
        a += PreCalculatedResultPackage({"acc": 0.5})


def test_add_non_package_is_type_error():
    with pytest.raises(TypeError):
        PreCalculatedResultPackage({"a": 1.0}) + 5
    with pytest.raises(ValueError):  # the original's error type too
        PreCalculatedResultPackage({"a": 1.0}) + 5


def test_constructor_wrapper_prepares_inner_packages_nested():
    y_true, scores = binary_data(2)
    wrapper = MultipleResultPackageWrapper([BinaryClassificationResultPackage(),
                                            GeneralResultPackage([MeanSquaredErrorMetric])])
    assert wrapper.get_results() is None
    wrapper.prepare_result_package(y_true, scores)
    results = wrapper.get_results()
    assert list(results) == ["BinaryClassificationResult", "GeneralResultPackage"]
    assert list(results["BinaryClassificationResult"]) == ["Accuracy", "ROC_AUC", "PrecisionRecall_AUC",
                                                           "F1_score"]
    assert results["BinaryClassificationResult"]["ROC_AUC"] == pytest.approx(skm.roc_auc_score(y_true, scores))
    assert list(results["GeneralResultPackage"]) == ["Mean_squared_error"]


def test_adding_unprepared_package_raises():
    with pytest.raises(ValueError, match="call prepare_result_package"):
        BinaryClassificationResultPackage() + GeneralResultPackage([MeanSquaredErrorMetric])


def test_length_mismatch_raises_naming_arguments():
    with pytest.raises(ValueError, match=r"y_true and y_predicted have different lengths: 3 vs 2"):
        ClassificationResultPackage().prepare_result_package([0, 1, 2], [0, 1])


def test_empty_input_raises_naming_argument():
    with pytest.raises(ValueError, match="y_true is empty"):
        RegressionResultPackage().prepare_result_package([], [])
    with pytest.raises(ValueError, match="y_predicted is empty"):
        RegressionResultPackage().prepare_result_package([1.0], np.zeros((0,)))


def test_precalculated_package_converts_numpy_values():
    package = PreCalculatedResultPackage({"a": np.float32(0.5), "per_class": {"x": np.int64(2)}},
                                         hyperparameters={"bs": 8})
    results = package.get_results()
    assert results == {"a": 0.5, "per_class": {"x": 2}}
    assert type(results["a"]) is float and type(results["per_class"]["x"]) is int
    assert package.get_hyperparameters() == {"bs": 8}


def test_strict_content_check_rejects_bad_values():
    with pytest.raises(ValueError, match="'bad' is not finite"):
        PreCalculatedResultPackage({"bad": float("nan")}, strict_content_check=True)
    with pytest.raises(ValueError, match="'s' is not a number"):
        PreCalculatedResultPackage({"s": "text"}, strict_content_check=True)
    with pytest.raises(ValueError, match="empty"):
        PreCalculatedResultPackage({}, strict_content_check=True)


def test_non_strict_content_check_only_warns(caplog):
    package = PreCalculatedResultPackage({"bad": float("inf")})
    assert math.isinf(package.get_results()["bad"])
    assert "not finite" in caplog.text


def test_strict_check_applies_to_computed_results():
    class NanMetric(AbstractBaseMetric):
        def __init__(self, y_true, y_predicted):
            super().__init__(y_true, y_predicted, metric_name="nan_metric")

        def calculate_metric(self):
            return float("nan")

    package = GeneralResultPackage([NanMetric], strict_content_check=True)
    with pytest.raises(ValueError, match="'nan_metric' is not finite"):
        package.prepare_result_package([1, 2], [1, 2])


def test_custom_subclass_contract():
    class MeanPrediction(AbstractResultPackage):
        def prepare_results_dict(self):
            return {"mean_pred": np.mean(self.y_predicted)}

    package = prepared(MeanPrediction(pkg_name="mean"), [0, 0], torch.tensor([1.0, 3.0]))
    assert package.pkg_name == "mean"
    assert package.get_results() == {"mean_pred": 2.0}
    assert type(package.get_results()["mean_pred"]) is float
