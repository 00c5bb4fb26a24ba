"""Experiment loggers: where a run's numbers go (CSV, TensorBoard, MLflow, Weights & Biases).

Every backend implements :class:`~aitoolbox.experiment.loggers.base.ExperimentLogger`; the
``LoggerCallback`` (``aitoolbox.torchtrain.callbacks.loggers``) drives any number of them from a
TrainLoop. The optional packages (tensorboard, mlflow, wandb) are imported only when a logger of
theirs is set up, so importing this package is cheap.
"""
from aitoolbox.utils.lazy_import import lazy_module_attributes

_NAMES = {
    "ExperimentLogger": "aitoolbox.experiment.loggers.base",
    "CSVLogger": "aitoolbox.experiment.loggers.csv_logger",
    "TensorBoardLogger": "aitoolbox.experiment.loggers.tensorboard_logger",
    "MLflowLogger": "aitoolbox.experiment.loggers.mlflow_logger",
    "WandBLogger": "aitoolbox.experiment.loggers.wandb_logger",
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_module_attributes(globals(), _NAMES)
