"""Every import path of the original aitoolbox 1.8 (UPSTREAM_API.md section 1) resolves.

Each row: the original's import path, the names imported from it, and the module where ours
defines the object (None: defined at that path). A re-export must be the very same object.
"""
import importlib

import pytest

TT = "aitoolbox.torchtrain"
CB = "aitoolbox.torchtrain.callbacks"
EXP = "aitoolbox.experiment"

# (upstream import path, names, module that defines them here or None when it is the same path)
TABLE = [
    (TT, ["TTModel", "MultiGPUModelWrap", "ModelWrap"], f"{TT}.model"),
    (TT, ["TTDataParallel"], f"{TT}.parallel"),
    (TT, ["TrainLoop"], f"{TT}.train_loop.train_loop"),
    (TT, ["TrainLoopCheckpoint", "TrainLoopEndSave", "TrainLoopCheckpointEndSave"], f"{TT}.train_loop.train_loop_tracking"),
    (TT, ["AbstractModelFeedDefinition"], f"{TT}.data.batch_model_feed_defs"),
    (TT, ["MultiLoss", "MultiOptimizer"], f"{TT}.multi_loss_optim"),
    (TT, ["BasicDataset"], f"{TT}.data.dataset"),
    (f"{TT}.model", ["TTBasicMultiGPUModel"], None),
    (f"{TT}.model_predict", ["PyTorchModelPredictor"], None),
    (f"{TT}.parallel", ["TTParallelBase"], None),
    (CB, ["AbstractCallback"], f"{CB}.abstract"),
    (CB, ["AbstractExperimentCallback"], f"{CB}.experiment_base"),
    (CB, ["EarlyStopping", "ThresholdEarlyStopping", "TerminateOnNaN", "AllPredictionsSame"], f"{CB}.basic"),
    (CB, ["EmailNotification", "LogUpload"], f"{CB}.basic"),
    (CB, ["TensorboardTrainHistoryMetric"], f"{CB}.tensorboard"),
    (CB, ["ModelPerformanceEvaluation", "ModelPerformancePrintReport", "ModelTrainHistoryFileWriter",
          "ModelTrainHistoryPlot"], f"{CB}.performance_eval"),
    (CB, ["GradNormClip", "GradValueClip"], f"{CB}.gradient"),
    (CB, ["TensorboardFullTracking"], f"{CB}.tensorboard"),
    (CB, ["WandBTracking"], f"{CB}.wandb"),
    (CB, ["LinearWithWarmupScheduler"], f"{TT}.schedulers.warmup"),
    (CB, ["ReduceLROnPlateauScheduler", "ReduceLROnPlateauMetricScheduler"], f"{TT}.schedulers.basic"),
    (f"{CB}.abstract", ["AbstractExperimentCallback"], f"{CB}.experiment_base"),
    (f"{CB}.basic", ["EmailNotification", "LogUpload"], None),
    (f"{CB}.ddp", ["DistributedSamplerSetEpoch", "InMultiProcessDataLoad"], None),
    (f"{CB}.gradient", ["GradientCallbackBase", "GradDistributionPlot"], None),
    (f"{CB}.performance_eval", ["ModelTrainHistoryBaseCB"], None),
    (f"{CB}.tensorboard", ["TensorboardReporterBaseCB", "TensorboardTrainBatchLoss",
                           "TensorboardTrainHistoryMetric"], None),
    (f"{CB}.wandb", ["AlertConfig", "WandBTracking"], None),
    (f"{TT}.data.dataset", ["BasicDataset", "ListDataset"], None),
    (f"{TT}.train_loop.components.ddp_handler", ["DDPHandler"], None),
    (f"{TT}.train_loop.components.message_passing", ["MessageHandling", "Message"], None),
    (f"{TT}.train_loop.components.model_prediction_store", ["ModelPredictionStore"], None),
    (EXP, ["BinaryClassificationResultPackage", "ClassificationResultPackage", "RegressionResultPackage"],
     f"{EXP}.result_package.basic_packages"),
    (f"{EXP}.experiment_saver", ["AbstractExperimentSaver", "BaseFullExperimentSaver", "BaseFullExperimentS3Saver",
                                 "FullPyTorchExperimentS3Saver", "BaseFullExperimentGoogleStorageSaver",
                                 "FullPyTorchExperimentGoogleStorageSaver"], None),
    (f"{EXP}.local_experiment_saver", ["BaseFullExperimentLocalSaver", "FullPyTorchExperimentLocalSaver"], None),
    (f"{EXP}.result_reporting.hyperparam_reporter", ["HyperParamSourceReporter"], None),
    (f"{EXP}.result_reporting.report_generator", ["TrainingHistoryPlotter", "TrainingHistoryWriter",
                                                  "GradientPlotter"], None),
    (f"{EXP}.result_package.hf_evaluate_packages", ["HFEvaluateResultPackage"], None),
    (f"{EXP}.result_package.torch_metrics_packages", ["TorchMetricsPackage"], None),
    (f"{EXP}.local_save.folder_create", ["ExperimentFolder"], f"{EXP}.experiment_folder"),
    (f"{EXP}.local_save.local_model_save", ["AbstractLocalModelSaver", "BaseLocalModelSaver",
                                            "PyTorchLocalModelSaver", "LocalSubOptimalModelRemover"], None),
    (f"{EXP}.local_save.local_results_save", ["AbstractLocalResultsSaver", "BaseLocalResultsSaver",
                                              "LocalResultsSaver"], None),
    (f"{EXP}.local_load.local_model_load", ["AbstractLocalModelLoader", "PyTorchLocalModelLoader"], None),
    ("aitoolbox.cloud.GoogleCloud.data_access", ["BaseGoogleStorageDataSaver", "BaseGoogleStorageDataLoader"], None),
    ("aitoolbox.cloud.GoogleCloud.model_load", ["BaseModelGoogleStorageLoader", "PyTorchGoogleStorageModelLoader"],
     None),
    ("aitoolbox.cloud.GoogleCloud.model_save", ["BaseModelGoogleStorageSaver", "PyTorchGoogleStorageModelSaver"],
     None),
    ("aitoolbox.cloud.GoogleCloud.results_save", ["BaseResultsGoogleStorageSaver", "GoogleStorageResultsSaver"],
     None),
    ("aitoolbox.cloud.AWS.data_access", ["BaseDataSaver", "BaseDataLoader", "AbstractDatasetFetcher"], None),
    ("aitoolbox.cloud.AWS.model_load", ["BaseModelLoader", "PyTorchS3ModelLoader"], None),
    ("aitoolbox.cloud.AWS.model_save", ["AbstractModelSaver", "BaseModelSaver", "PyTorchS3ModelSaver"], None),
    ("aitoolbox.cloud.AWS.results_save", ["AbstractResultsSaver", "BaseResultsSaver", "S3ResultsSaver"], None),
    ("aitoolbox.cloud.AWS.simple_email_service", ["SESSender"], None),
    ("aitoolbox.utils.dict_util", ["combine_prediction_metadata_batches", "flatten_dict", "combine_dict_elements",
                                   "flatten_combine_dict"], None),
    ("aitoolbox.utils.file_system", ["create_folder_hierarchy", "zip_folder", "unzip_file"], None),
    ("aitoolbox.utils.util", ["function_exists", "copy_function", "is_empty_function", "flatten_list_of_lists"],
     None),
    ("aitoolbox", ["MultiGPUModelWrap"], f"{TT}.model"),
    ("aitoolbox", ["TTDataParallel"], f"{TT}.parallel"),
    ("aitoolbox", ["TrainLoopCheckpoint", "TrainLoopEndSave", "TrainLoopCheckpointEndSave"],
     f"{TT}.train_loop.train_loop_tracking"),
    ("aitoolbox", ["AbstractModelFeedDefinition"], f"{TT}.data.batch_model_feed_defs"),
    ("aitoolbox", ["BasicDataset"], f"{TT}.data.dataset"),
    ("aitoolbox", ["EmailNotification", "LogUpload"], f"{CB}.basic"),
    ("aitoolbox", ["TensorboardTrainHistoryMetric"], f"{CB}.tensorboard"),
    ("aitoolbox", ["AbstractCallback"], f"{CB}.abstract"),
    ("aitoolbox", ["AbstractExperimentCallback"], f"{CB}.experiment_base"),
    ("aitoolbox", ["EarlyStopping", "ThresholdEarlyStopping", "TerminateOnNaN", "AllPredictionsSame"], f"{CB}.basic"),
    ("aitoolbox", ["ModelPerformanceEvaluation", "ModelPerformancePrintReport", "ModelTrainHistoryFileWriter",
                   "ModelTrainHistoryPlot"], f"{CB}.performance_eval"),
    ("aitoolbox", ["GradNormClip", "GradValueClip"], f"{CB}.gradient"),
    ("aitoolbox", ["TensorboardFullTracking"], f"{CB}.tensorboard"),
    ("aitoolbox", ["WandBTracking"], f"{CB}.wandb"),
    ("aitoolbox", ["LinearWithWarmupScheduler"], f"{TT}.schedulers.warmup"),
    ("aitoolbox", ["ReduceLROnPlateauScheduler", "ReduceLROnPlateauMetricScheduler"], f"{TT}.schedulers.basic"),
    ("aitoolbox", ["BinaryClassificationResultPackage", "ClassificationResultPackage", "RegressionResultPackage"],
     f"{EXP}.result_package.basic_packages"),
    # ours, kept at the top level
    ("aitoolbox", ["TrainLoop", "TTModel", "TTBasicModel", "ModelWrap", "MultiLoss", "MultiOptimizer"], None),
]

CASES = [(path, name, home) for path, names, home in TABLE for name in names]


@pytest.mark.parametrize("path, name, home", CASES, ids=[f"{p}:{n}" for p, n, _ in CASES])
def test_upstream_import_path(path, name, home):
    namespace = {}
    exec(f"from {path} import {name}", namespace)  # the statement a user's script contains
    obj = namespace[name]
    assert obj is getattr(importlib.import_module(path), name)
    if home is not None:
        assert obj is getattr(importlib.import_module(home), name), f"{path}.{name} is a copy, not a re-export"
    assert callable(obj)


def test_cloud_save_mode_options():
    from aitoolbox.cloud import gcs_available_options, s3_available_options

    assert s3_available_options == ["s3", "aws_s3", "aws"]
    assert gcs_available_options == ["gcs", "google_storage", "google storage"]


@pytest.mark.parametrize("package", ["aitoolbox", TT, CB, EXP, f"{TT}.train_loop"])
def test_all_lists_only_resolvable_lazy_names(package):
    module = importlib.import_module(package)
    assert "TrainLoop" in module.__all__ or package in (CB, EXP)
    assert set(module.__all__) <= set(dir(module))


def test_unknown_attribute_raises_attribute_error():
    import aitoolbox

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        aitoolbox.NoSuchThing  # noqa: B018
    from aitoolbox.torchtrain.callbacks import basic  # a submodule still imports through the package
    assert basic.EarlyStopping is aitoolbox.EarlyStopping
