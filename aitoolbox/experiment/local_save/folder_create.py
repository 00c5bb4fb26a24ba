"""aitoolbox 1.8's import path of :class:`~aitoolbox.experiment.experiment_folder.ExperimentFolder`."""
from aitoolbox.experiment.experiment_folder import ExperimentFolder

__all__ = ["ExperimentFolder"]
