"""Ready-made result packages for classification and regression."""

import logging
from typing import Any, List, Sequence, Type

from aitoolbox.experiment.core_metrics.abstract_metric import AbstractBaseMetric
from aitoolbox.experiment.core_metrics.classification import (
    AccuracyMetric,
    F1ScoreMetric,
    PrecisionRecallCurveAUCMetric,
    ROCAUCMetric,
)
from aitoolbox.experiment.core_metrics.regression import (
    MeanAbsoluteErrorMetric,
    MeanSquaredErrorMetric,
)
from aitoolbox.experiment.result_package.abstract_result_packages import (
    AbstractResultPackage,
    ResultsDict,
    merge_results,
)

logger = logging.getLogger(__name__)


class GeneralResultPackage(AbstractResultPackage):
    """A package that evaluates any list of metric classes.

    Each metric class is instantiated as ``metric(y_true, y_predicted)``.

    Args:
        metrics_list: Subclasses of
            :class:`~aitoolbox.experiment.core_metrics.abstract_metric.AbstractBaseMetric`.
        strict_content_check: If True, bad results raise instead of warn.
        pkg_name: Name of the package.
        **kwargs: Package metadata.

    Raises:
        ValueError: If ``metrics_list`` is empty.
        TypeError: If an element is not a subclass of AbstractBaseMetric.
    """

    def __init__(
        self,
        metrics_list: Sequence[Type[AbstractBaseMetric]],
        strict_content_check: bool = False,
        pkg_name: str = "GeneralResultPackage",
        **kwargs: Any,
    ) -> None:
        super().__init__(pkg_name, strict_content_check, np_array=True, **kwargs)
        if not metrics_list:
            raise ValueError("metrics_list is empty: give at least one metric class")
        for metric in metrics_list:
            if not (isinstance(metric, type) and issubclass(metric, AbstractBaseMetric)):
                raise TypeError(f"metrics_list holds a non-metric class: {metric!r}")
        self.metrics_list: List[Type[AbstractBaseMetric]] = list(metrics_list)

    def prepare_results_dict(self) -> ResultsDict:
        """Evaluate every metric on the stored inputs.

        Returns:
            The merged ``{metric_name: value}`` dicts of all metrics.

        Raises:
            ValueError: If two metrics share a name.
        """
        metrics = [m(self.y_true, self.y_predicted) for m in self.metrics_list]
        return merge_results([m.get_metric_dict() for m in metrics])


class ClassificationResultPackage(AbstractResultPackage):
    """Multi-class results: ``Accuracy`` (as in the original aitoolbox).

    2-D predictions (N, C) are reduced by argmax. For precision, recall or F1
    use ``GeneralResultPackage([AccuracyMetric, PrecisionMetric, RecallMetric,
    F1ScoreMetric])``.

    Args:
        strict_content_check: If True, bad results raise instead of warn.
        pkg_name: Name of the package.
        **kwargs: Package metadata.
    """

    def __init__(
        self,
        strict_content_check: bool = False,
        pkg_name: str = "ClassificationResult",
        **kwargs: Any,
    ) -> None:
        super().__init__(pkg_name, strict_content_check, np_array=True, **kwargs)

    def prepare_results_dict(self) -> ResultsDict:
        """Compute the accuracy.

        Returns:
            Dict with the key ``Accuracy``.
        """
        return AccuracyMetric(self.y_true, self.y_predicted).get_metric_dict()


class BinaryClassificationResultPackage(AbstractResultPackage):
    """Binary results: ``Accuracy``, ``ROC_AUC``, ``PrecisionRecall_AUC``, ``F1_score``.

    ROC AUC and PR AUC (average precision) use the raw scores. Accuracy and
    F1 use labels from thresholding the scores; F1 is that of class 1.

    Args:
        positive_class_thresh: Scores at or above this are predicted as class 1.
        strict_content_check: If True, bad results raise instead of warn.
        pkg_name: Name of the package.
        **kwargs: Package metadata.
    """

    def __init__(
        self,
        positive_class_thresh: float = 0.5,
        strict_content_check: bool = False,
        pkg_name: str = "BinaryClassificationResult",
        **kwargs: Any,
    ) -> None:
        super().__init__(pkg_name, strict_content_check, np_array=True, **kwargs)
        self.positive_class_thresh = positive_class_thresh

    def prepare_results_dict(self) -> ResultsDict:
        """Compute the four binary classification metrics.

        Returns:
            Dict with keys ``Accuracy``, ``ROC_AUC``, ``PrecisionRecall_AUC``, ``F1_score``.

        Raises:
            ValueError: If y_true is not binary 0/1 or lacks one of the classes.
        """
        y_true, y_pred, thresh = self.y_true, self.y_predicted, self.positive_class_thresh
        metrics = [
            AccuracyMetric(y_true, y_pred, positive_class_thresh=thresh),
            ROCAUCMetric(y_true, y_pred),
            PrecisionRecallCurveAUCMetric(y_true, y_pred),
            F1ScoreMetric(y_true, y_pred, positive_class_thresh=thresh, average="binary"),
        ]
        return merge_results([m.get_metric_dict() for m in metrics])


class RegressionResultPackage(AbstractResultPackage):
    """Regression results: ``Mean_squared_error`` and ``Mean_absolute_error``.

    Args:
        strict_content_check: If True, bad results raise instead of warn.
        pkg_name: Name of the package.
        **kwargs: Package metadata.
    """

    def __init__(
        self,
        strict_content_check: bool = False,
        pkg_name: str = "RegressionResult",
        **kwargs: Any,
    ) -> None:
        super().__init__(pkg_name, strict_content_check, np_array=True, **kwargs)

    def prepare_results_dict(self) -> ResultsDict:
        """Compute the regression metrics.

        Returns:
            Dict with keys ``Mean_squared_error`` and ``Mean_absolute_error``.
        """
        metrics = (MeanSquaredErrorMetric, MeanAbsoluteErrorMetric)
        return merge_results(
            [m(self.y_true, self.y_predicted).get_metric_dict() for m in metrics]
        )
