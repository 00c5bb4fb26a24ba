"""Classification metrics computed with numpy only.

Multi-class predictions of shape (N, C) are reduced to labels with an argmax
over the class dimension. Binary scores may be given as (N,), (N, 1) or
(N, 2); for the last, column 1 holds the positive-class score.
"""

import logging
from typing import Optional, Tuple

import numpy as np

from aitoolbox.experiment.core_metrics.abstract_metric import AbstractBaseMetric, ArrayLike

logger = logging.getLogger(__name__)

_AVERAGES = ("macro", "binary")


def _true_labels(y_true: np.ndarray) -> np.ndarray:
    """Return the ground truth as a 1-D label array.

    Raises:
        ValueError: If ``y_true`` is not 1-D or (N, 1).
    """
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        return y_true[:, 0]
    if y_true.ndim != 1:
        raise ValueError(
            f"y_true must hold 1-D class labels, got shape {y_true.shape}"
        )
    return y_true


def binary_scores(y_predicted: np.ndarray) -> np.ndarray:
    """Return the positive-class scores of binary predictions as a 1-D array.

    Args:
        y_predicted: Scores of shape (N,), (N, 1) or (N, 2); for (N, 2) the
            second column is taken as the positive-class score.

    Returns:
        A 1-D float array of positive-class scores.

    Raises:
        ValueError: If ``y_predicted`` has any other shape.
    """
    if y_predicted.ndim == 2 and y_predicted.shape[1] in (1, 2):
        y_predicted = y_predicted[:, -1]
    if y_predicted.ndim != 1:
        raise ValueError(
            "binary y_predicted must have shape (N,), (N, 1) or (N, 2), "
            f"got {y_predicted.shape}"
        )
    return y_predicted.astype(np.float64)


def predicted_labels(
    y_predicted: np.ndarray, positive_class_thresh: Optional[float] = None
) -> np.ndarray:
    """Turn predictions into 1-D class labels.

    Args:
        y_predicted: Labels (N,), per-class scores (N, C), or binary scores.
        positive_class_thresh: If given, predictions are binary scores and
            a score greater than or equal to it means class 1. If None, 2-D
            predictions are reduced with an argmax over dimension 1.

    Returns:
        A 1-D array of predicted labels.

    Raises:
        ValueError: If the predictions have more than two dimensions.
    """
    if positive_class_thresh is not None:
        scores = binary_scores(y_predicted)
        return (scores >= positive_class_thresh).astype(np.int64)
    if y_predicted.ndim == 2:
        if y_predicted.shape[1] == 1:
            return y_predicted[:, 0]
        return np.argmax(y_predicted, axis=1)
    if y_predicted.ndim != 1:
        raise ValueError(
            f"y_predicted must be 1-D labels or 2-D (N, C) scores, got {y_predicted.shape}"
        )
    return y_predicted


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Divide element-wise, giving 0 where the denominator is 0."""
    numerator = numerator.astype(np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _confusion_counts(
    y_true: np.ndarray, y_pred: np.ndarray, average: str
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positive, false positive and false negative counts.

    For ``average='macro'`` the classes are those present in y_true or y_pred;
    for ``average='binary'`` only class 1 is counted.

    Raises:
        ValueError: If ``average`` is unknown, or is 'binary' and the labels
            are not within {0, 1}.
    """
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    labels = np.union1d(y_true, y_pred)
    if average == "binary":
        if not np.all(np.isin(labels, [0, 1])):
            raise ValueError(
                f"average='binary' needs labels in {{0, 1}}, got {labels.tolist()}"
            )
        labels = np.array([1])
    true_hit = y_true[:, None] == labels[None, :]
    pred_hit = y_pred[:, None] == labels[None, :]
    tp = np.sum(true_hit & pred_hit, axis=0)
    fp = np.sum(~true_hit & pred_hit, axis=0)
    fn = np.sum(true_hit & ~pred_hit, axis=0)
    return tp, fp, fn


class _LabelMetric(AbstractBaseMetric):
    """Shared set-up for metrics computed on predicted labels."""

    def __init__(
        self,
        y_true: ArrayLike,
        y_predicted: ArrayLike,
        metric_name: str,
        positive_class_thresh: Optional[float] = None,
        average: str = "macro",
    ) -> None:
        self.positive_class_thresh = positive_class_thresh
        self.average = average
        super().__init__(y_true, y_predicted, metric_name=metric_name)

    def _labels(self) -> Tuple[np.ndarray, np.ndarray]:
        """Return (true labels, predicted labels) as 1-D arrays."""
        y_pred = predicted_labels(self.y_predicted, self.positive_class_thresh)
        return _true_labels(self.y_true), y_pred

    def _counts(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return per-class (tp, fp, fn) counts for the configured average."""
        y_true, y_pred = self._labels()
        return _confusion_counts(y_true, y_pred, self.average)


class AccuracyMetric(_LabelMetric):
    """Fraction of examples whose predicted label equals the true label.

    Args:
        y_true: Ground truth labels, shape (N,) or (N, 1).
        y_predicted: Predicted labels (N,), class scores (N, C), or binary
            scores when ``positive_class_thresh`` is set.
        positive_class_thresh: If given, binary scores at or above it are
            predicted as class 1.

    Raises:
        ValueError: If the inputs are empty, misaligned or badly shaped.
    """

    def __init__(
        self,
        y_true: ArrayLike,
        y_predicted: ArrayLike,
        positive_class_thresh: Optional[float] = None,
    ) -> None:
        super().__init__(y_true, y_predicted, "Accuracy", positive_class_thresh)

    def calculate_metric(self) -> float:
        """Compute the accuracy.

        Returns:
            The accuracy in [0, 1].
        """
        y_true, y_pred = self._labels()
        return float(np.mean(y_true == y_pred))


class PrecisionMetric(_LabelMetric):
    """Precision, macro-averaged over classes or for class 1 only.

    A class that is never predicted has precision 0.

    Args:
        y_true: Ground truth labels, shape (N,) or (N, 1).
        y_predicted: Predicted labels (N,), class scores (N, C), or binary
            scores when ``positive_class_thresh`` is set.
        positive_class_thresh: If given, binary scores at or above it are
            predicted as class 1.
        average: ``'macro'`` (unweighted mean over the classes present in
            y_true or y_predicted) or ``'binary'`` (class 1 only).

    Raises:
        ValueError: If the inputs are bad or ``average`` is unknown.
    """

    def __init__(
        self,
        y_true: ArrayLike,
        y_predicted: ArrayLike,
        positive_class_thresh: Optional[float] = None,
        average: str = "macro",
    ) -> None:
        super().__init__(y_true, y_predicted, "Precision", positive_class_thresh, average)

    def calculate_metric(self) -> float:
        """Compute the precision.

        Returns:
            The averaged precision in [0, 1].
        """
        tp, fp, _ = self._counts()
        return float(np.mean(_safe_divide(tp, tp + fp)))


class RecallMetric(_LabelMetric):
    """Recall, macro-averaged over classes or for class 1 only.

    A class absent from y_true has recall 0.

    Args:
        y_true: Ground truth labels, shape (N,) or (N, 1).
        y_predicted: Predicted labels (N,), class scores (N, C), or binary
            scores when ``positive_class_thresh`` is set.
        positive_class_thresh: If given, binary scores at or above it are
            predicted as class 1.
        average: ``'macro'`` or ``'binary'``, as in :class:`PrecisionMetric`.

    Raises:
        ValueError: If the inputs are bad or ``average`` is unknown.
    """

    def __init__(
        self,
        y_true: ArrayLike,
        y_predicted: ArrayLike,
        positive_class_thresh: Optional[float] = None,
        average: str = "macro",
    ) -> None:
        super().__init__(y_true, y_predicted, "Recall", positive_class_thresh, average)

    def calculate_metric(self) -> float:
        """Compute the recall.

        Returns:
            The averaged recall in [0, 1].
        """
        tp, _, fn = self._counts()
        return float(np.mean(_safe_divide(tp, tp + fn)))


class F1ScoreMetric(_LabelMetric):
    """F1 score, macro-averaged over classes or for class 1 only.

    Per class, F1 is ``2 * tp / (2 * tp + fp + fn)``, and 0 when undefined.

    Args:
        y_true: Ground truth labels, shape (N,) or (N, 1).
        y_predicted: Predicted labels (N,), class scores (N, C), or binary
            scores when ``positive_class_thresh`` is set.
        positive_class_thresh: If given, binary scores at or above it are
            predicted as class 1.
        average: ``'macro'`` or ``'binary'``, as in :class:`PrecisionMetric`.

    Raises:
        ValueError: If the inputs are bad or ``average`` is unknown.
    """

    def __init__(
        self,
        y_true: ArrayLike,
        y_predicted: ArrayLike,
        positive_class_thresh: Optional[float] = None,
        average: str = "macro",
    ) -> None:
        super().__init__(y_true, y_predicted, "F1_score", positive_class_thresh, average)

    def calculate_metric(self) -> float:
        """Compute the F1 score.

        Returns:
            The averaged F1 score in [0, 1].
        """
        tp, fp, fn = self._counts()
        return float(np.mean(_safe_divide(2 * tp, 2 * tp + fp + fn)))


def _binary_targets(y_true: np.ndarray) -> np.ndarray:
    """Return y_true as a boolean positive-class mask.

    Raises:
        ValueError: If y_true holds labels other than 0 and 1.
    """
    y_true = _true_labels(y_true)
    labels = np.unique(y_true)
    if not np.all(np.isin(labels, [0, 1])):
        raise ValueError(f"y_true must hold binary 0/1 labels, got {labels.tolist()}")
    return y_true == 1


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Rank values from 1 upwards, giving tied values their mean rank.

    Args:
        values: 1-D array of values to rank.

    Returns:
        A float array of ranks, aligned with ``values``.
    """
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse.reshape(-1)]


class ROCAUCMetric(AbstractBaseMetric):
    """Area under the ROC curve for binary classification.

    Computed from score ranks (the Mann-Whitney U statistic), so tied scores
    count as half a correct ordering, which equals the trapezoid area.

    Args:
        y_true: Binary 0/1 labels, shape (N,) or (N, 1).
        y_predicted: Positive-class scores, shape (N,), (N, 1) or (N, 2).

    Raises:
        ValueError: If the inputs are bad, or y_true does not contain both classes.
    """

    def __init__(self, y_true: ArrayLike, y_predicted: ArrayLike) -> None:
        super().__init__(y_true, y_predicted, metric_name="ROC_AUC")

    def calculate_metric(self) -> float:
        """Compute the ROC AUC.

        Returns:
            The area under the ROC curve in [0, 1].

        Raises:
            ValueError: If y_true does not contain both classes.
        """
        positive = _binary_targets(self.y_true)
        scores = binary_scores(self.y_predicted)
        n_pos = int(positive.sum())
        n_neg = positive.size - n_pos
        if n_pos == 0 or n_neg == 0:
            raise ValueError("ROC AUC is undefined: y_true contains only one class")
        rank_sum = average_ranks(scores)[positive].sum()
        return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class PrecisionRecallCurveAUCMetric(AbstractBaseMetric):
    """Area under the precision-recall curve, computed as average precision.

    Average precision is the sum over score thresholds of the recall gain
    times the precision at that threshold; tied scores form one threshold.

    Args:
        y_true: Binary 0/1 labels, shape (N,) or (N, 1).
        y_predicted: Positive-class scores, shape (N,), (N, 1) or (N, 2).

    Raises:
        ValueError: If the inputs are bad, or y_true has no positive example.
    """

    def __init__(self, y_true: ArrayLike, y_predicted: ArrayLike) -> None:
        super().__init__(y_true, y_predicted, metric_name="PrecisionRecall_AUC")

    def calculate_metric(self) -> float:
        """Compute the average precision.

        Returns:
            The average precision in [0, 1].

        Raises:
            ValueError: If y_true has no positive example.
        """
        positive = _binary_targets(self.y_true)
        scores = binary_scores(self.y_predicted)
        if not positive.any():
            raise ValueError("PR AUC is undefined: y_true has no positive (1) label")
        order = np.argsort(-scores, kind="mergesort")
        sorted_scores, sorted_pos = scores[order], positive[order]
        # Last index of each group of tied scores: one threshold per group.
        group_ends = np.r_[np.nonzero(np.diff(sorted_scores))[0], sorted_scores.size - 1]
        tps = np.cumsum(sorted_pos)[group_ends]
        precision = tps / (group_ends + 1.0)
        recall = tps / tps[-1]
        recall_gain = np.diff(np.r_[0.0, recall])
        return float(np.sum(recall_gain * precision))
