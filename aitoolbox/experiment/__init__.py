"""Experiment tracking: training history, result packages and metrics, saving.

Re-exports the basic result packages, as the original aitoolbox did (imported on first use).
"""
from aitoolbox.utils.lazy_import import exports, lazy_module_attributes

_EXPORTS = exports({
    "aitoolbox.experiment.result_package.basic_packages": [
        "BinaryClassificationResultPackage", "ClassificationResultPackage", "RegressionResultPackage"],
})

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_module_attributes(globals(), _EXPORTS)
