import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from aitoolbox.experiment.core_metrics.abstract_metric import AbstractBaseMetric
from aitoolbox.experiment.core_metrics.classification import (
    AccuracyMetric,
    F1ScoreMetric,
    PrecisionMetric,
    PrecisionRecallCurveAUCMetric,
    RecallMetric,
    ROCAUCMetric,
    average_ranks,
)
from aitoolbox.experiment.core_metrics.regression import (
    MeanAbsoluteErrorMetric,
    MeanSquaredErrorMetric,
)

SEEDS = [0, 1, 2, 3, 4]


def multiclass_data(seed, n=200, n_classes=4):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, size=n)
    scores = rng.random((n, n_classes))
    # make predictions correlated with the truth so metrics are not trivial
    scores[np.arange(n), y_true] += rng.random(n) * 0.8
    return y_true, scores


def binary_data(seed, n=300, decimals=None):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, size=n)
    scores = np.clip(0.3 * y_true + rng.random(n) * 0.7, 0, 1)
    if decimals is not None:
        scores = np.round(scores, decimals)
    return y_true, scores


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_label_metrics_match_sklearn(seed):
    y_true, scores = multiclass_data(seed)
    y_pred = scores.argmax(axis=1)
    assert AccuracyMetric(y_true, scores).get_metric() == pytest.approx(
        skm.accuracy_score(y_true, y_pred))
    assert PrecisionMetric(y_true, scores).get_metric() == pytest.approx(
        skm.precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert RecallMetric(y_true, scores).get_metric() == pytest.approx(
        skm.recall_score(y_true, y_pred, average="macro", zero_division=0))
    assert F1ScoreMetric(y_true, scores).get_metric() == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


@pytest.mark.parametrize("seed", SEEDS)
def test_macro_metrics_with_class_missing_from_truth_or_predictions(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, size=60)          # classes 0..2
    y_pred = rng.integers(1, 5, size=60)          # classes 1..4: 0 never predicted
    for metric, sk_fn in [(PrecisionMetric, skm.precision_score),
                          (RecallMetric, skm.recall_score),
                          (F1ScoreMetric, skm.f1_score)]:
        expected = sk_fn(y_true, y_pred, average="macro", zero_division=0)
        assert metric(y_true, y_pred).get_metric() == pytest.approx(expected)


def test_macro_precision_known_value():
    # class 0: tp=1 fp=0 -> 1.0 ; class 1: tp=1 fp=1 -> 0.5 ; class 2: never predicted -> 0
    value = PrecisionMetric([0, 1, 1, 2], [0, 1, 1, 1]).get_metric()
    assert value == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_binary_thresholded_metrics_match_sklearn(seed, thresh):
    y_true, scores = binary_data(seed)
    y_pred = (scores >= thresh).astype(int)
    acc = AccuracyMetric(y_true, scores, positive_class_thresh=thresh).get_metric()
    assert acc == pytest.approx(skm.accuracy_score(y_true, y_pred))
    f1_bin = F1ScoreMetric(y_true, scores, positive_class_thresh=thresh,
                           average="binary").get_metric()
    assert f1_bin == pytest.approx(skm.f1_score(y_true, y_pred, zero_division=0))
    f1_macro = F1ScoreMetric(y_true, scores, positive_class_thresh=thresh).get_metric()
    assert f1_macro == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_threshold_is_inclusive():
    assert AccuracyMetric([1, 0], [0.5, 0.49], positive_class_thresh=0.5).get_metric() == 1.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_roc_auc_matches_sklearn_including_ties(seed, decimals):
    y_true, scores = binary_data(seed, decimals=decimals)
    if decimals is not None:
        assert len(np.unique(scores)) < len(scores)  # the data really has ties
    expected = skm.roc_auc_score(y_true, scores)
    assert ROCAUCMetric(y_true, scores).get_metric() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_average_precision_matches_sklearn_including_ties(seed, decimals):
    y_true, scores = binary_data(seed, decimals=decimals)
    expected = skm.average_precision_score(y_true, scores)
    value = PrecisionRecallCurveAUCMetric(y_true, scores).get_metric()
    assert value == pytest.approx(expected, abs=1e-12)


def test_auc_known_values():
    assert ROCAUCMetric([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]).get_metric() == pytest.approx(0.75)
    assert ROCAUCMetric([0, 1], [0.5, 0.5]).get_metric() == pytest.approx(0.5)
    assert PrecisionRecallCurveAUCMetric([0, 1], [0.2, 0.9]).get_metric() == pytest.approx(1.0)


def test_binary_score_shapes_are_equivalent():
    y_true, scores = binary_data(7, decimals=2)
    two_col = np.stack([1 - scores, scores], axis=1)
    for metric in (ROCAUCMetric, PrecisionRecallCurveAUCMetric):
        base = metric(y_true, scores).get_metric()
        assert metric(y_true, scores[:, None]).get_metric() == pytest.approx(base)
        assert metric(y_true, two_col).get_metric() == pytest.approx(base)
    acc = AccuracyMetric(y_true, scores, positive_class_thresh=0.5).get_metric()
    assert AccuracyMetric(y_true, two_col, positive_class_thresh=0.5).get_metric() == acc


def test_average_ranks_gives_ties_the_mean_rank():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])),
                               [3.5, 1.0, 3.5, 2.0])


def test_torch_and_list_inputs_give_same_results():
    y_true, scores = multiclass_data(11)
    base = F1ScoreMetric(y_true, scores).get_metric()
    assert F1ScoreMetric(torch.tensor(y_true), torch.tensor(scores)).get_metric() == base
    assert F1ScoreMetric(y_true.tolist(), scores.tolist()).get_metric() == base
    yb, sb = binary_data(11)
    half = torch.tensor(sb, dtype=torch.bfloat16)
    assert ROCAUCMetric(torch.tensor(yb), half).get_metric() == pytest.approx(
        skm.roc_auc_score(yb, half.float().numpy()))


@pytest.mark.parametrize("seed", SEEDS)
def test_regression_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.normal(size=100)
    y_pred = y_true + rng.normal(scale=0.5, size=100)
    mse = MeanSquaredErrorMetric(y_true, y_pred)
    mae = MeanAbsoluteErrorMetric(torch.tensor(y_true), y_pred[:, None])
    assert mse.get_metric() == pytest.approx(skm.mean_squared_error(y_true, y_pred))
    assert mae.get_metric() == pytest.approx(skm.mean_absolute_error(y_true, y_pred))
    assert mse.get_metric_dict() == {"Mean_squared_error": mse.get_metric()}
    assert mae.get_metric_dict() == {"Mean_absolute_error": mae.get_metric()}


def test_multi_output_regression_matches_sklearn():
    rng = np.random.default_rng(5)
    y_true, y_pred = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    assert MeanSquaredErrorMetric(y_true, y_pred).get_metric() == pytest.approx(
        skm.mean_squared_error(y_true, y_pred))


def test_results_are_python_floats_and_named():
    y_true, scores = binary_data(0)
    for metric, name in [(AccuracyMetric(y_true, scores, positive_class_thresh=0.5), "Accuracy"),
                         (PrecisionMetric(y_true, scores, 0.5), "Precision"),
                         (RecallMetric(y_true, scores, 0.5), "Recall"),
                         (F1ScoreMetric(y_true, scores, 0.5), "F1_score"),
                         (ROCAUCMetric(y_true, scores), "ROC_AUC"),
                         (PrecisionRecallCurveAUCMetric(y_true, scores), "PrecisionRecall_AUC")]:
        assert type(metric.get_metric()) is float
        assert list(metric.get_metric_dict()) == [name]
        assert str(metric).startswith(f"{name}: ")


def test_custom_metric_subclass_gets_numpy_inputs():
    class CountMetric(AbstractBaseMetric):
        def __init__(self, y_true, y_predicted):
            super().__init__(y_true, y_predicted, metric_name="count")

        def calculate_metric(self):
            assert isinstance(self.y_true, np.ndarray)
            assert isinstance(self.y_predicted, np.ndarray)
            return float(len(self.y_true))

    assert CountMetric(torch.zeros(4), [1, 2, 3, 4]).get_metric_dict() == {"count": 4.0}


def test_length_mismatch_error_names_arguments():
    with pytest.raises(ValueError, match=r"y_true and y_predicted .*3 vs 2"):
        AccuracyMetric([0, 1, 1], [0, 1])


@pytest.mark.parametrize("y_true, y_pred, arg", [([], [], "y_true"), ([1], [], "y_predicted")])
def test_empty_input_error_names_argument(y_true, y_pred, arg):
    with pytest.raises(ValueError, match=rf"{arg} is empty"):
        MeanSquaredErrorMetric(y_true, y_pred)


def test_roc_auc_with_one_class_raises():
    with pytest.raises(ValueError, match="only one class"):
        ROCAUCMetric([1, 1, 1], [0.2, 0.3, 0.9])


def test_pr_auc_without_positives_raises():
    with pytest.raises(ValueError, match="no positive"):
        PrecisionRecallCurveAUCMetric([0, 0], [0.2, 0.3])


def test_binary_metrics_reject_non_binary_labels():
    with pytest.raises(ValueError, match="binary 0/1"):
        ROCAUCMetric([0, 1, 2], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="average='binary'"):
        F1ScoreMetric([0, 1, 2], [0, 1, 2], average="binary")


def test_bad_shapes_and_average_raise():
    with pytest.raises(ValueError, match=r"\(N,\), \(N, 1\) or \(N, 2\)"):
        ROCAUCMetric([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="average must be one of"):
        RecallMetric([0, 1], [0, 1], average="micro")
    with pytest.raises(ValueError, match="shapes differ"):
        MeanAbsoluteErrorMetric(np.zeros((4, 2)), np.zeros((4, 3)))
