"""Training behaviours that follow aitoolbox 1.8 (UPSTREAM_API.md section 3, "follow the original").

Stopping rules' patience, FunctionOnTrainLoop's hook flags, DataSubsetTestRun in batches, user
overrides of MultiLoss / MultiOptimizer, the callback API of the original, and the attributes of
the (tracking) TrainLoops that callbacks written for the original read.
"""
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aitoolbox.experiment.result_package.basic_packages import RegressionResultPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.basic import (
    DataSubsetTestRun, EarlyStopping, FunctionOnTrainLoop, ThresholdEarlyStopping)
from aitoolbox.torchtrain.model import TTModel
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss, MultiOptimizer
from aitoolbox.torchtrain.train_loop import TrainLoop
from aitoolbox.torchtrain.train_loop.train_loop_tracking import (
    TrainLoopCheckpoint, TrainLoopCheckpointEndSave, TrainLoopEndSave)
from tests.callbacks.cb_testkit import make_loop, mlp, regression_dataset


# ---------------------------------------------------------------- stopping rules
def feed(callback, monitor, values):
    """Register ``callback`` with a loop, feed ``values`` one epoch end at a time; early_stop after each."""
    loop = make_loop()
    loop.callbacks_handler.register_callbacks([callback])
    flags = []
    for value in values:
        loop.insert_metric_result_into_history(monitor, value)
        callback.on_epoch_end()
        flags.append(loop.early_stop)
    return flags


@pytest.mark.parametrize("monitor, patience, min_delta, values, expected", [
    ("dummy_loss", 0, 0., [10., 10., 10.], [False, True, True]),
    ("dummy_loss", 1, 0., [10., 10., 10.], [False, False, True]),
    ("dummy_loss", 2, 0., [10., 10., 10., 10.], [False, False, False, True]),
    ("dummy_loss", 1, 1., [10., 9.4, 9.], [False, False, True]),
    ("dummy_loss", 2, 1., [10., 9.4, 9., 8.9], [False, False, False, False]),
    ("dummy_acc", 1, 1., [9., 9.4, 10.], [False, False, True]),
    ("dummy_acc", 2, 1., [9., 9., 10.0, 10.1], [False, False, False, False]),
    ("dummy_acc", 0, 2., [10., 12.0], [False, True]),  # an improvement must exceed min_delta
])
def test_early_stopping_stops_at_the_patience_plus_first_bad_evaluation(monitor, patience, min_delta, values,
                                                                          expected):
    callback = EarlyStopping(monitor=monitor, min_delta=min_delta, patience=patience)
    assert feed(callback, monitor, values) == expected


def test_early_stopping_arguments_counters_and_a_real_run():
    callback = EarlyStopping()
    assert (callback.monitor, callback.min_delta, callback.patience) == ("val_loss", 0., 0)
    callback = EarlyStopping("val_loss", 0., 2)  # positional, as in the original
    assert callback.patience_count == 2
    values = [1.0, 0.5, 0.6, 0.7, 0.8] + [0.0] * 5
    loop = make_loop(end_auto_eval=False)
    feeder = FunctionOnTrainLoop(lambda lp: lp.insert_metric_result_into_history("val_loss", values[lp.epoch]),
                                 epoch_end=True, execution_order=-1)
    loop.fit(num_epochs=10, callbacks=[feeder, callback])
    assert loop.epoch == 5 and loop.early_stop  # epochs 2 and 3 tolerated, epoch 4 stops
    assert callback.patience_count == -1 and callback.best_performance == 0.5 and callback.best_epoch == 1


@pytest.mark.parametrize("monitor, threshold, patience, values, expected, counts", [
    ("dummy_loss", 0.7, 0, [0.7], [False], [0]),  # equal to the threshold is not a failure
    ("dummy_loss", 0.7, 0, [0.71], [True], [-1]),
    ("dummy_acc", 0.7, 0, [0.7], [False], [0]),
    ("dummy_acc", 0.7, 0, [0.69], [True], [-1]),
    ("dummy_loss", 0.65, 3, [0.8, 0.8, 0.71, 0.7, 0.65, 0.6], [False, False, False, True, True, True],
     [2, 1, 0, -1, 3, 3]),
    ("dummy_acc", 0.8, 3, [0.6, 0.65, 0.7, 0.71, 0.8, 0.8], [False, False, False, True, True, True],
     [2, 1, 0, -1, 3, 3]),
])
def test_threshold_early_stopping_as_in_the_original(monitor, threshold, patience, values, expected, counts):
    callback = ThresholdEarlyStopping(monitor, threshold, patience)
    loop = make_loop()
    loop.callbacks_handler.register_callbacks([callback])
    flags, patience_counts = [], []
    for value in values:
        loop.insert_metric_result_into_history(monitor, value)
        callback.on_epoch_end()
        flags.append(loop.early_stop)
        patience_counts.append(callback.patience_count)
    assert flags == expected and patience_counts == counts


# ---------------------------------------------------------------- FunctionOnTrainLoop
def test_function_on_train_loop_positional_flags_and_every_hook():
    calls = []
    # the original's order: tl_registration, epoch_begin, epoch_end, train_begin, train_end,
    # batch_begin, batch_end, after_gradient_update, after_optimizer_step
    callbacks = {flag: FunctionOnTrainLoop(lambda lp, f=flag: calls.append(f), *[i == pos for i in range(9)])
                 for pos, flag in enumerate(["tl_registration", "epoch_begin", "epoch_end", "train_begin",
                                             "train_end", "batch_begin", "batch_end", "after_gradient_update",
                                             "after_optimizer_step"])}
    loop = make_loop(num_train=16)  # 2 batches per epoch
    loop.fit(num_epochs=2, callbacks=list(callbacks.values()))
    counts = {flag: calls.count(flag) for flag in callbacks}
    assert counts == {"tl_registration": 1, "epoch_begin": 2, "epoch_end": 2, "train_begin": 1, "train_end": 1,
                      "batch_begin": 4, "batch_end": 4, "after_gradient_update": 4, "after_optimizer_step": 4}
    assert loop.grad_cb_used  # set at registration by the gradient flags, as in the original
    assert callbacks["epoch_end"].epoch_end and not callbacks["epoch_end"].batch_end


def test_function_on_train_loop_after_gradient_update_sees_the_gradients():
    norms = []
    callback = FunctionOnTrainLoop(
        lambda lp: norms.append(sum(float(p.grad.norm()) for p in lp.model.parameters())),
        after_gradient_update=True)
    make_loop().fit(num_epochs=1, callbacks=[callback])
    assert len(norms) == 6 and all(n > 0 for n in norms)


def test_function_on_train_loop_with_handler_calls_of_the_original():
    def add_100(tl):
        tl.epoch += 100

    loop = make_loop()
    callback = FunctionOnTrainLoop(add_100, tl_registration=True, after_gradient_update=True)
    loop.callbacks_handler.register_callbacks([callback])
    assert loop.epoch == 100 and loop.grad_cb_used
    loop.callbacks_handler.execute_gradient_update()
    assert loop.epoch == 200
    loop.callbacks_handler.execute_epoch_begin()  # not selected
    assert loop.epoch == 200


# ---------------------------------------------------------------- DataSubsetTestRun
def test_data_subset_test_run_counts_batches():
    callback = DataSubsetTestRun()
    assert (callback.num_train_batches, callback.num_val_batches, callback.num_test_batches) == (1, 0, 0)
    train = DataLoader(TensorDataset(torch.randn(1000, 4), torch.randn(1000, 1)), batch_size=100)
    val = DataLoader(TensorDataset(torch.randn(500, 4), torch.randn(500, 1)), batch_size=50)
    test = DataLoader(TensorDataset(torch.randn(200, 4), torch.randn(200, 1)), batch_size=30)
    model = mlp()
    loop = TrainLoop(model, train, val, test, torch.optim.SGD(model.parameters(), lr=0.01), nn.MSELoss(),
                     show_progress=False)
    loop.fit(num_epochs=2, callbacks=[DataSubsetTestRun(num_train_batches=3, num_val_batches=2, num_test_batches=2)])
    assert len(loop.train_loader) == 3 and loop.total_iteration_idx == 6
    assert len(loop.validation_loader) == 2 and len(loop.test_loader) == 2
    assert [b[0].shape[0] for b in loop.test_loader] == [30, 30]
    assert len(loop.test_loader.dataset) == 60


def test_data_subset_test_run_keeps_the_other_loaders_and_needs_the_loader_it_subsets():
    loop = make_loop(test=True)
    loop.callbacks_handler.register_callbacks([DataSubsetTestRun(num_train_batches=2)])
    assert len(loop.train_loader) == 2 and len(loop.validation_loader.dataset) == 24
    for kwargs in (dict(num_val_batches=1), dict(num_test_batches=1)):
        with pytest.raises(ValueError, match="cannot be subset"):
            make_loop(validation=False).callbacks_handler.register_callbacks([DataSubsetTestRun(**kwargs)])


# ---------------------------------------------------------------- MultiLoss / MultiOptimizer overrides
class TwoHeads(TTModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)

    def forward(self, x):
        return self.a(x), self.b(x)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        out_a, out_b = self(x)
        return CountingMultiLoss({"a": criterion(out_a, y), "b": criterion(out_b, y)})

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x)[0], y, None


CALLS = []


class CountingMultiLoss(MultiLoss):
    def backward(self, optimizer_idx, iteration, amp_grad_scaler):
        CALLS.append(("backward", optimizer_idx, iteration))
        loss = amp_grad_scaler.scale(self.loss_dict[self.optimizer_loss_map[optimizer_idx]])
        loss.backward(retain_graph=optimizer_idx == 0)


class CountingMultiOptimizer(MultiOptimizer):
    def step(self, optimizer_idx, iteration, amp_grad_scaler):
        CALLS.append(("step", optimizer_idx, iteration))
        amp_grad_scaler.step(self.optimizer_list[optimizer_idx])

    def zero_grad(self, optimizer_idx, iteration):
        CALLS.append(("zero_grad", optimizer_idx, iteration))
        self.optimizer_list[optimizer_idx].zero_grad()


@pytest.mark.parametrize("use_amp", [False, True])  # CPU AMP: bfloat16, the pass-through scaler
def test_the_loop_calls_user_overrides_of_multi_loss_and_multi_optimizer(use_amp):
    CALLS.clear()
    model = TwoHeads()
    optimizer = CountingMultiOptimizer([torch.optim.SGD(model.a.parameters(), lr=0.1),
                                        torch.optim.SGD(model.b.parameters(), lr=0.1)])
    before = [p.detach().clone() for p in model.parameters()]
    train = DataLoader(regression_dataset(16), batch_size=8)
    loop = TrainLoop(model, train, None, None, optimizer, nn.MSELoss(), show_progress=False, use_amp=use_amp)
    loop.fit(num_epochs=1)
    per_batch = lambda it: [("backward", 0, it), ("backward", 1, it), ("step", 0, it), ("zero_grad", 0, it),
                            ("step", 1, it), ("zero_grad", 1, it)]
    assert CALLS == per_batch(0) + per_batch(1)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert set(loop.train_history["accumulated_loss_a"]) and "loss_b" in loop.train_history


def test_plain_multi_loss_and_multi_optimizer_keep_the_fast_path():
    model = TwoHeads()
    optimizer = MultiOptimizer([torch.optim.SGD(model.a.parameters(), lr=0.1),
                                torch.optim.SGD(model.b.parameters(), lr=0.1)])
    loop = TrainLoop(model, DataLoader(regression_dataset(16), batch_size=8), None, None, optimizer, nn.MSELoss())
    assert not loop._user_optimizer_step and not loop._user_zero_grad
    assert optimizer.optimizer_list is optimizer.optimizer_lst
    losses = MultiLoss({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    assert losses.optimizer_loss_map == {0: "a", 1: "b"} and losses.loss_backward_remaining == 2
    assert losses.get_loss_dict() == {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    assert type(CountingMultiLoss(losses) / 2) is CountingMultiLoss  # the user's class survives the division


# ---------------------------------------------------------------- callback API of the original
class OriginalStyleCallback(AbstractCallback):
    """A callback written for aitoolbox 1.8, touching what its callbacks touch."""

    def __init__(self):
        AbstractCallback.__init__(self, "original style", execution_order=0, device_idx_execution=None)
        self.seen = []

    def on_train_loop_registration(self):
        self.train_loop_obj.grad_cb_used = True
        self.seen.append("registration")

    def on_after_gradient_update(self, optimizer_idx):
        self.seen.append(("grad", optimizer_idx))

    def on_after_optimizer_step(self):
        self.seen.append("step")

    def on_batch_end(self):  # as in the original: the indices of the current batch
        self.seen.append(("batch", self.train_loop_obj.iteration, self.train_loop_obj.total_iteration_idx))

    def on_epoch_end(self):
        loop = self.train_loop_obj
        self.seen.append((loop.epoch, len(loop.train_history["loss"]),
                          loop.is_main_process(), loop.ddp_training_mode, loop.use_amp, loop.num_optimizers,
                          type(loop.experiment_timestamp), loop.model is not None, loop.device.type))
        assert loop.optimizer is not None and loop.criterion is not None and loop.message_service is not None
        assert loop.prediction_store is not None and not loop.early_stop and loop.callbacks_handler is not None
        assert len(loop.loss_batch_accum) == 2 and loop.amp_scaler is None and loop.ddp_rank is None


def test_a_callback_written_for_the_original_works_unchanged():
    callback = OriginalStyleCallback()
    loop = make_loop(num_train=16)
    callback.register_train_loop_object(loop)  # registration runs on_train_loop_registration, as there
    assert callback.seen == ["registration"]
    callback.seen.clear()
    loop.fit(num_epochs=1, callbacks=[callback])
    assert callback.seen == ["registration", ("grad", 0), "step", ("batch", 0, 0), ("grad", 0), "step",
                             ("batch", 1, 1), (0, 1, True, False, False, 1, str, True, "cpu")]
    handler = loop.callbacks_handler
    assert len(handler) == 1 and callback in handler and "original style" in handler
    assert OriginalStyleCallback in handler and "At on_epoch_end" in str(handler)


def test_cached_callbacks_are_registered_at_fit():
    calls = []
    loop = make_loop()
    loop.callbacks_handler.register_callbacks([FunctionOnTrainLoop(calls.append, train_begin=True)],
                                              cache_callbacks=True)
    assert len(loop.callbacks_handler) == 0
    loop.fit(num_epochs=1)
    assert calls == [loop]


# ---------------------------------------------------------------- tracking TrainLoops' attributes
def tracking_args(tmp_path):
    model = mlp()
    return dict(model=model, train_loader=DataLoader(regression_dataset(16), batch_size=8),
                validation_loader=DataLoader(regression_dataset(8, seed=1), batch_size=8), test_loader=None,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.01), criterion=nn.MSELoss(),
                project_name="proj", experiment_name="exp", local_model_result_folder_path=str(tmp_path),
                cloud_save_mode=None, show_progress=False)


@pytest.mark.parametrize("cls", [TrainLoopCheckpoint, TrainLoopEndSave, TrainLoopCheckpointEndSave])
def test_tracking_loops_have_the_original_attributes(tmp_path, cls):
    hyperparams = {"lr": 0.01, "batch_size": 8}
    kwargs = tracking_args(tmp_path)
    if cls is not TrainLoopCheckpoint:
        kwargs["val_result_package"] = RegressionResultPackage()
    if cls is not TrainLoopEndSave:
        kwargs.update(rm_subopt_local_models=True, num_best_checkpoints_kept=3, iteration_save_freq=0)
    loop = cls(hyperparams=hyperparams, source_dirs=(), bucket_name="my-bucket", cloud_dir_prefix="pre", **kwargs)
    assert (loop.project_name, loop.experiment_name) == ("proj", "exp")
    assert loop.local_model_result_folder_path == str(tmp_path)
    assert (loop.cloud_save_mode, loop.bucket_name, loop.cloud_dir_prefix, loop.source_dirs) == \
        (None, "my-bucket", "pre", ())
    assert loop.hyperparams["lr"] == 0.01 and loop.hyperparams is not hyperparams
    assert hyperparams == {"lr": 0.01, "batch_size": 8}  # never mutated
    assert loop.collate_batch_pred_fn is not None and loop.pred_transform_fn is not None
    assert isinstance(loop.experiment_timestamp, str) and loop.experiment_timestamp in loop.experiment_dir
    if cls is not TrainLoopEndSave:
        assert (loop.rm_subopt_local_models, loop.num_best_checkpoints_kept, loop.iteration_save_freq) == \
            (True, 3, 0)
    if cls is not TrainLoopCheckpoint:
        assert isinstance(loop.val_result_package, RegressionResultPackage) and loop.test_result_package is None


def test_tracking_loop_expands_the_user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    loop = TrainLoopCheckpoint(hyperparams={}, **{**tracking_args(tmp_path), "local_model_result_folder_path": "~"})
    assert loop.local_model_result_folder_path == str(tmp_path) == os.path.expanduser("~")
