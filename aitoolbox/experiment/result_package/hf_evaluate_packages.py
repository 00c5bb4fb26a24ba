"""``HFEvaluateResultPackage``: a result package over a HuggingFace ``evaluate`` metric.

HuggingFace ``evaluate`` is optional (``pip install "aitoolbox[hf]"``); it is imported when the
package is constructed, never when this module is imported.
"""
from __future__ import annotations

from typing import Any, Dict

from aitoolbox.experiment.result_package.abstract_result_packages import AbstractResultPackage
from aitoolbox.utils.optional import import_optional

#: suffix of every result name
RESULT_SUFFIX = "_HFEvaluate"


class HFEvaluateResultPackage(AbstractResultPackage):
    """Results of ``hf_evaluate_metric.compute(references=y_true, predictions=y_predicted, ...)``.

    Every result name gets the ``_HFEvaluate`` suffix.

    Args:
        hf_evaluate_metric: an ``evaluate.EvaluationModule`` (e.g. ``evaluate.load('accuracy')``).
        use_models_additional_results: also pass the model's additional prediction outputs
            (``additional_results['additional_results']``) to ``compute``.
        **kwargs: further inputs of ``compute`` known before predicting (kept as
            :attr:`package_metadata`).

    Raises:
        ImportError: HuggingFace ``evaluate`` is not installed (names ``pip install "aitoolbox[hf]"``).
    """

    def __init__(self, hf_evaluate_metric: Any, use_models_additional_results: bool = True, **kwargs):
        import_optional("evaluate", "hf", "HFEvaluateResultPackage")
        super().__init__(pkg_name="HuggingFace Evaluate metrics", np_array=False)
        self.metric = hf_evaluate_metric
        self.use_models_additional_results = use_models_additional_results
        self.package_metadata: Dict[str, Any] = dict(kwargs)

    def prepare_results_dict(self) -> Dict[str, Any]:
        inputs = dict(self.package_metadata)
        if self.use_models_additional_results and self.additional_results:
            inputs.update(self.additional_results.get("additional_results", {}) or {})
        result = self.metric.compute(references=self.y_true, predictions=self.y_predicted, **inputs)
        if isinstance(result, dict):
            result = {f"{name}{RESULT_SUFFIX}": value for name, value in result.items()}
        return result


__all__ = ["HFEvaluateResultPackage"]
