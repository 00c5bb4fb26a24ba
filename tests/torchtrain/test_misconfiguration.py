"""No silent misconfiguration (issue 13, item 3): each mistake gets a clear error (or, where only
the run can tell, a warning) naming the argument, before any batch is trained. One test per check."""
import logging
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from aitoolbox import MultiOptimizer, TrainLoop, TTModel
from aitoolbox.experiment.experiment_folder import validate_name
from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.basic import EarlyStopping, ThresholdEarlyStopping
from aitoolbox.torchtrain.callbacks.metric_watch import MissingMonitoredMetricError
from aitoolbox.torchtrain.callbacks.performance_eval import (
    ModelPerformanceEvaluation, ModelPerformancePrintReport)
from aitoolbox.torchtrain.callbacks.save_best import SaveBestModel
from aitoolbox.torchtrain.data.batch_model_feed_defs import BasicModelFeedDefinition
from aitoolbox.torchtrain.model import ModelWrap
from aitoolbox.torchtrain.schedulers.basic import ReduceLROnPlateauMetricScheduler, StepLRScheduler
from aitoolbox.torchtrain.train_loop.train_loop_tracking import TrainLoopCheckpoint

from _loop_helpers import CountingNet, loader, make_data, make_mlp


class CountingMLP(nn.Module):
    """A plain nn.Module that counts its forward calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 3)
        self.forward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        return self.linear(x)


class Logs:
    """The ``aitoolbox`` logger's warnings while the block runs."""

    def __enter__(self):
        self.records = []
        self.handler = logging.Handler(level=logging.WARNING)
        self.handler.emit = self.records.append
        self.logger = logging.getLogger("aitoolbox")
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)

    @property
    def text(self):
        return "\n".join(r.getMessage() for r in self.records)


def _loop(model=None, validation=True, test=False, optimizer=None, criterion="default", **kwargs):
    model = CountingMLP() if model is None else model
    params = model.model.parameters() if isinstance(model, ModelWrap) else model.parameters()
    return TrainLoop(model, loader(make_data(20), 10), loader(make_data(10, seed=1), 5) if validation else None,
                     loader(make_data(10, seed=2), 5) if test else None,
                     optimizer or torch.optim.SGD(params, lr=0.1),
                     nn.CrossEntropyLoss() if criterion == "default" else criterion,
                     **{"show_progress": False, **kwargs})


def _tracking_loop(tmp_path, rm_subopt_local_models, model=None, **kwargs):
    model = CountingMLP() if model is None else model
    return TrainLoopCheckpoint(model, loader(make_data(20), 10), loader(make_data(10, seed=1), 5), None,
                               torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                               project_name="proj", experiment_name="exp",
                               local_model_result_folder_path=str(tmp_path), hyperparams={},
                               cloud_save_mode=None, rm_subopt_local_models=rm_subopt_local_models,
                               show_progress=False, **kwargs)


class ValAccuracyWriter(AbstractCallback):
    """A user's callback that computes a metric at run time (its output is not declared)."""

    def __init__(self):
        super().__init__("val accuracy writer")

    def on_epoch_end(self):
        self.train_loop_obj.insert_metric_result_into_history("val_acc", 0.5)


# ---------------------------------------------------------------- watched history metrics
def test_rm_subopt_local_models_metric_that_nothing_computes_fails_at_fit(tmp_path):
    loop = _tracking_loop(tmp_path, "val_accuracy")
    with pytest.raises(MissingMonitoredMetricError, match="rm_subopt_local_models='val_accuracy'") as info:
        loop.fit(num_epochs=2)
    assert "val_loss" in str(info.value)  # the metrics that will exist are listed
    assert loop.module.forward_calls == 0
    assert not os.path.exists(os.path.join(loop.experiment_dir, "checkpoint_model"))


def test_rm_subopt_local_models_typo_warns_after_the_first_epoch_with_a_suggestion(tmp_path):
    loop = _tracking_loop(tmp_path, "val_Acuracy")
    with Logs() as logs:
        loop.fit(num_epochs=2, callbacks=[ModelPerformanceEvaluation(ClassificationResultPackage(), {})])
    warnings = [r for r in logs.records if "val_Acuracy" in r.getMessage()]
    assert len(warnings) == 1  # once, after the first epoch
    assert "rm_subopt_local_models='val_Acuracy'" in logs.text and "Did you mean 'val_Accuracy'?" in logs.text
    assert "Metrics in the history:" in logs.text and "val_Accuracy" in warnings[0].getMessage()


def test_early_stopping_typo_of_a_loop_metric_fails_at_fit_with_a_suggestion():
    loop = _loop()
    with pytest.raises(MissingMonitoredMetricError, match=r"monitor='val_los'.*Did you mean 'val_loss'\?"):
        loop.fit(num_epochs=1, callbacks=[EarlyStopping(monitor="val_los")])
    assert loop.module.forward_calls == 0


def test_threshold_early_stopping_on_val_loss_without_validation_loader_fails_at_fit():
    with pytest.raises(MissingMonitoredMetricError, match="ThresholdEarlyStopping.*monitor='val_loss'"):
        _loop(validation=False).fit(num_epochs=1, callbacks=[ThresholdEarlyStopping(threshold=1.0)])


def test_save_best_model_on_a_metric_nothing_computes_fails_at_fit():
    with pytest.raises(MissingMonitoredMetricError, match="SaveBestModel.*monitor='val_Accuracy'"):
        _loop().fit(num_epochs=1, callbacks=[SaveBestModel(monitor="val_Accuracy")])


def test_plateau_metric_scheduler_on_a_metric_nothing_computes_fails_at_fit():
    loop = _loop()
    with pytest.raises(MissingMonitoredMetricError, match="metric_name='val_Accuracy'"):
        loop.fit(num_epochs=1, callbacks=[ReduceLROnPlateauMetricScheduler("val_Accuracy", mode="max")])
    assert loop.module.forward_calls == 0


def test_print_report_of_a_metric_nothing_computes_fails_at_fit():
    with pytest.raises(MissingMonitoredMetricError, match=r"metrics='val_F1'"):
        _loop().fit(num_epochs=1, callbacks=[ModelPerformancePrintReport(["val_loss", "val_F1"])])


def test_a_package_evaluated_on_train_data_only_does_not_produce_val_metrics():
    evaluation = ModelPerformanceEvaluation(ClassificationResultPackage(), {}, on_train_data=True,
                                            on_val_data=False)
    with pytest.raises(MissingMonitoredMetricError, match="monitor='val_Accuracy'") as info:
        _loop().fit(num_epochs=1, callbacks=[evaluation, EarlyStopping(monitor="val_Accuracy")])
    assert "train_* (from ModelPerformanceEvaluation)" in str(info.value)


def test_metric_computed_by_a_users_callback_at_run_time_still_works():
    stopper = EarlyStopping(monitor="val_acc", patience=0)  # constant value: stops at the 2nd epoch
    loop = _loop()
    with Logs() as logs:
        loop.fit(num_epochs=5, callbacks=[ValAccuracyWriter(), stopper])
    assert loop.epoch == 2 and stopper.stopped_epoch == 1
    assert logs.records == []


def test_a_callback_that_declares_its_output_lets_fit_reject_other_names():
    class Declared(ValAccuracyWriter):
        def produced_history_metrics(self):
            return ["val_acc"]

    loop = _loop()
    loop.fit(num_epochs=1, callbacks=[Declared(), SaveBestModel(monitor="val_acc")])
    with pytest.raises(MissingMonitoredMetricError, match=r"Did you mean 'val_acc'\?"):
        loop.fit(num_epochs=2, callbacks=[Declared(), SaveBestModel(monitor="val_ac")])


# ---------------------------------------------------------------- model, criterion, optimizer
def test_criterion_none_with_a_plain_module_fails_before_any_batch():
    loop = _loop(criterion=None)
    with pytest.raises(ValueError, match="criterion is None"):
        loop.fit(num_epochs=1)
    assert loop.module.forward_calls == 0


def test_criterion_none_with_a_model_wrap_of_the_basic_feed_fails_before_any_batch():
    model = ModelWrap(CountingMLP(), BasicModelFeedDefinition())
    with pytest.raises(ValueError, match="criterion is None"):
        _loop(model=model, criterion=None).fit(num_epochs=1)
    assert model.model.forward_calls == 0


def test_criterion_none_with_a_ttmodel_is_not_judged():
    class OwnLoss(CountingNet):
        def get_loss(self, batch_data, criterion, device):
            x, y = batch_data
            return nn.functional.cross_entropy(self(x), y)

    loop = _loop(model=OwnLoss(), criterion=None)
    loop.fit(num_epochs=1)
    assert loop.model.forward_calls > 0


def test_optimizer_on_another_models_parameters_fails_before_any_batch():
    other = make_mlp()
    loop = _loop(optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"^optimizer updates 4 parameter tensor\(s\), none of which belongs"):
        loop.fit(num_epochs=1)
    assert loop.module.forward_calls == 0


def test_optimizer_on_a_subset_of_the_parameters_trains():
    model = CountingMLP()
    frozen_bias = model.linear.bias.detach().clone()
    loop = _loop(model=model, optimizer=torch.optim.SGD([model.linear.weight], lr=0.1))
    loop.fit(num_epochs=1)
    assert torch.equal(model.linear.bias.detach(), frozen_bias) and model.forward_calls > 0


def test_multi_optimizer_entry_on_another_models_parameters_fails():
    model, other = CountingMLP(), make_mlp()
    optimizer = MultiOptimizer([torch.optim.SGD(model.parameters(), lr=0.1),
                                torch.optim.SGD(other.parameters(), lr=0.1)])
    with pytest.raises(ValueError, match=r"optimizer \(MultiOptimizer entry 1\)"):
        _loop(model=model, optimizer=optimizer).fit(num_epochs=1)


def test_optimizer_of_the_criterions_parameters_counts_as_the_models():
    class WeightedLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, pred, target):
            return self.scale * nn.functional.cross_entropy(pred, target)

    model, criterion = CountingMLP(), WeightedLoss()
    optimizer = MultiOptimizer([torch.optim.SGD(model.parameters(), lr=0.1),
                                torch.optim.SGD(criterion.parameters(), lr=0.1)])
    _loop(model=model, optimizer=optimizer, criterion=criterion).fit(num_epochs=1)
    assert criterion.scale.item() != 1.0


# ---------------------------------------------------------------- devices
@pytest.mark.parametrize("dp_model_args", [{"device_ids": [0, 1]}, {"device_ids": [7]}])
def test_data_parallel_device_ids_that_do_not_exist_fail(dp_model_args):
    if 7 in dp_model_args["device_ids"]:
        pass  # index 7: beyond any machine these tests run on
    elif torch.cuda.device_count() >= 2:
        pytest.skip("two GPUs visible: [0, 1] exists")
    loop = _loop(gpu_mode="dp")
    with pytest.raises(ValueError, match="dp_model_args names CUDA device"):
        loop.fit(num_epochs=1, dp_model_args=dp_model_args)
    assert loop.module.forward_calls == 0


def test_device_idx_execution_beyond_the_processes_fails():
    cb = ValAccuracyWriter()
    cb.device_idx_execution = 5
    loop = _loop()
    with pytest.raises(ValueError, match=r"device_idx_execution=5.*1 process"):
        loop.fit(num_epochs=1, callbacks=[cb])
    assert loop.module.forward_calls == 0


def test_on_gpu_must_be_a_bool():
    loop = _loop(gpu_mode="ddp")
    with pytest.raises(TypeError, match="on_gpu must be True or False, got 'no'"):
        loop.fit(num_epochs=1, on_gpu="no", backend="gloo", num_gpus=1)


# ---------------------------------------------------------------- more silent acceptances
def test_the_same_callback_instance_twice_fails():
    scheduler = StepLRScheduler(step_size=1)
    loop = _loop()
    with pytest.raises(ValueError, match="StepLRScheduler.*registered twice"):
        loop.fit(num_epochs=1, callbacks=[scheduler, scheduler])
    assert loop.module.forward_calls == 0


def test_the_same_callback_instance_registered_again_through_the_handler_fails():
    cb = ValAccuracyWriter()
    loop = _loop()
    loop.callbacks_handler.register_callbacks([cb])
    with pytest.raises(ValueError, match="registered twice"):
        loop.callbacks_handler.register_callbacks([cb])


@pytest.mark.parametrize("which", ["validation_loader", "test_loader"])
def test_an_empty_validation_or_test_set_fails_at_fit(which):
    empty = DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)), batch_size=5)
    loop = _loop(test=True)
    setattr(loop, which, empty)
    with pytest.raises(ValueError, match=f"{which} is empty \\(0 samples\\)"):
        loop.fit(num_epochs=1)
    assert loop.module.forward_calls == 0


class WithEmptyBatch(Sampler):
    """Batches of indices, the second one empty."""

    def __iter__(self):
        return iter([[0, 1, 2], [], [3, 4]])

    def __len__(self):
        return 3


def stack_samples(samples):
    """A collate_fn that also makes an (empty) batch of no samples."""
    if not samples:
        return torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)
    return torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])


def _with_empty_batch():
    return DataLoader(make_data(5), batch_sampler=WithEmptyBatch(), collate_fn=stack_samples)


def test_a_training_batch_of_zero_samples_fails_naming_it():
    loop = _loop()
    loop.train_loader = _with_empty_batch()
    with pytest.raises(ValueError, match="train_loader yielded an empty batch \\(batch 1 of epoch 1"):
        loop.fit(num_epochs=1)
    assert loop.module.forward_calls == 1  # only the first batch ran


def test_an_evaluation_batch_of_zero_samples_fails_naming_it():
    loop = _loop()
    loop.validation_loader = _with_empty_batch()
    with pytest.raises(ValueError, match="validation_loader yielded an empty batch \\(batch 1 has 0 samples"):
        loop.evaluate_loss_on_validation_set()


def test_a_standard_loader_needs_no_per_batch_emptiness_check():
    loop = _loop()
    loop.fit(num_epochs=1)
    assert loop._check_empty_batches is False
    loop.train_loader = _with_empty_batch()
    loop._prepare_training(1, 0, [], 1)
    assert loop._check_empty_batches is True


def test_dict_batches_fed_to_a_plain_module_get_a_clear_error():
    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, idx):
            return {"x": torch.randn(8), "y": idx % 3}

    loop = _loop()
    loop.train_loader = DataLoader(DictData(), batch_size=5)
    with pytest.raises(TypeError, match=r"The batch is a dict \(keys \['x', 'y'\]\).*TTModel") as info:
        loop.fit(num_epochs=1)
    assert info.value.__cause__ is not None  # the original error stays attached


@pytest.mark.parametrize("arg", ["show_progress", "print_callbacks", "lazy_experiment_save"])
def test_flags_must_be_bools(arg):
    with pytest.raises(TypeError, match=f"{arg} must be True or False, got 'no'"):
        _loop(**{arg: "no"})


@pytest.mark.parametrize("name", ["exp\n", "ex\tp", "e\x1bxp"])
def test_names_with_control_characters_fail(tmp_path, name):
    with pytest.raises(ValueError, match="experiment_name=.*contains control character"):
        validate_name(name, "experiment_name")
    model = CountingMLP()
    with pytest.raises(ValueError, match="project_name=.*contains control character"):
        TrainLoopCheckpoint(model, loader(make_data(20), 10), None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                            nn.CrossEntropyLoss(), project_name=name, experiment_name="exp",
                            local_model_result_folder_path=str(tmp_path), hyperparams={}, cloud_save_mode=None)
    assert os.listdir(tmp_path) == []


def test_under_ddp_val_loss_without_a_validation_loader_is_left_to_the_run():
    # the loaders may be built in each process (InMultiProcessDataLoad): no error at fit
    from aitoolbox.torchtrain.callbacks.metric_watch import check_monitored_metrics
    unverified = check_monitored_metrics(_loop(validation=False, gpu_mode="ddp"), [EarlyStopping()])
    assert [m.metric for _, m in unverified] == ["val_loss"]
    with pytest.raises(MissingMonitoredMetricError):
        check_monitored_metrics(_loop(validation=False), [EarlyStopping()])
