"""TrainLoop callbacks: hook in at fixed points of the training loop.

Re-exports the callbacks the original aitoolbox exported here; each is imported on first use, so
that optional dependencies (tensorboard, wandb, boto3 ...) load only with the callback needing them.
"""
from aitoolbox.utils.lazy_import import exports, lazy_module_attributes

_EXPORTS = exports({
    "aitoolbox.torchtrain.callbacks.abstract": ["AbstractCallback"],
    "aitoolbox.torchtrain.callbacks.experiment_base": ["AbstractExperimentCallback"],
    "aitoolbox.torchtrain.callbacks.basic": ["EarlyStopping", "ThresholdEarlyStopping", "EmailNotification",
                                             "TerminateOnNaN", "AllPredictionsSame", "LogUpload"],
    "aitoolbox.torchtrain.callbacks.performance_eval": ["ModelPerformanceEvaluation",
                                                        "ModelPerformancePrintReport",
                                                        "ModelTrainHistoryFileWriter", "ModelTrainHistoryPlot"],
    "aitoolbox.torchtrain.callbacks.stop_signal": ["StopOnSignal"],
    "aitoolbox.torchtrain.callbacks.gradient": ["GradNormClip", "GradValueClip"],
    "aitoolbox.torchtrain.callbacks.tensorboard": ["TensorboardFullTracking", "TensorboardTrainHistoryMetric"],
    "aitoolbox.torchtrain.callbacks.wandb": ["WandBTracking"],
    # the original kept these here for backward compatibility
    "aitoolbox.torchtrain.schedulers.warmup": ["LinearWithWarmupScheduler"],
    "aitoolbox.torchtrain.schedulers.basic": ["ReduceLROnPlateauScheduler", "ReduceLROnPlateauMetricScheduler"],
})

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_module_attributes(globals(), _EXPORTS)
