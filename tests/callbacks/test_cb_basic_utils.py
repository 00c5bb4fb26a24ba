"""ListRegisteredCallbacks, FunctionOnTrainLoop, DataSubsetTestRun and ConvertSyncBatchNorm."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from aitoolbox.torchtrain.callbacks.basic import (
    ConvertSyncBatchNorm, DataSubsetTestRun, EarlyStopping, FunctionOnTrainLoop, ListRegisteredCallbacks)
from tests.callbacks.cb_testkit import LogCapture, make_loop, regression_dataset


def test_list_registered_callbacks_logs_every_callback_in_order():
    callbacks = [EarlyStopping(), ListRegisteredCallbacks()]
    with LogCapture() as logs:
        make_loop().fit(num_epochs=1, callbacks=callbacks)
    text = logs.text()
    assert "ListRegisteredCallbacks" in text and "EarlyStopping: on_epoch_end" in text
    assert text.index("ListRegisteredCallbacks") < text.index("EarlyStopping")  # order 0 before 10


def test_function_on_train_loop_runs_at_the_selected_points_only():
    calls = []
    callback = FunctionOnTrainLoop(lambda loop: calls.append((loop.epoch, loop.iteration)),
                                   epoch_end=True, after_optimizer_step=True)
    assert callback.implemented_hooks() == {"on_epoch_end", "on_after_optimizer_step"}
    loop = make_loop(num_train=24)  # 3 batches per epoch
    loop.fit(num_epochs=2, callbacks=[callback], grad_accumulation=2)  # steps after batches 1, 2
    assert calls == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert loop.callbacks_handler.has("on_epoch_end") and not loop.callbacks_handler.has("on_batch_end")


def test_function_on_train_loop_without_a_point_of_training_runs_only_when_asked():
    calls = []
    callback = FunctionOnTrainLoop(calls.append)
    assert callback.implemented_hooks() == frozenset()
    loop = make_loop()
    loop.fit(num_epochs=1, callbacks=[callback])
    assert calls == []
    callback.execute_callback()
    assert calls == [loop]


def test_data_subset_test_run_trains_and_evaluates_on_the_first_batches():
    loop = make_loop(num_train=48, test=True)  # batches of 8
    train_sizes = []
    callbacks = [DataSubsetTestRun(num_train_batches=2, num_val_batches=1),
                 FunctionOnTrainLoop(lambda lp: train_sizes.append(lp.get_num_training_steps()), train_begin=True)]
    loop.fit(num_epochs=2, callbacks=callbacks)
    assert loop.total_iteration_idx == 4  # 2 batches per epoch
    assert train_sizes == [4]
    assert len(loop.validation_loader.dataset) == 8 and len(loop.test_loader.dataset) == 16
    x, y = regression_dataset(24, seed=1)[:8]
    with torch.no_grad():
        expected = nn.functional.mse_loss(loop.model(x), y).item()
    assert loop.train_history["val_loss"][-1] == pytest.approx(expected, rel=1e-6)


def test_data_subset_keeps_the_loader_settings():
    loader = DataLoader(regression_dataset(40), batch_size=6, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(3))
    loop = make_loop()
    loop.train_loader = loader
    DataSubsetTestRun(num_train_batches=3).register_train_loop_object(loop)
    subset = loop.train_loader
    assert isinstance(subset.sampler, RandomSampler) and subset.drop_last and subset.batch_size == 6
    assert subset.generator is loader.generator and len(subset) == 3 and len(subset.dataset) == 18


def test_data_subset_rejects_a_negative_count():
    with pytest.raises(ValueError, match="num_train_batches"):
        DataSubsetTestRun(num_train_batches=-1)


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)), nn.Linear(8, 1))


def test_convert_sync_batchnorm_converts_in_place_and_trains_the_same_on_one_device():
    plain, converted = bn_model(), bn_model()
    params_before = list(converted.parameters())
    make_loop(model=plain).fit(num_epochs=2)
    make_loop(model=converted).fit(num_epochs=2, callbacks=[ConvertSyncBatchNorm()])
    assert isinstance(converted[1], nn.SyncBatchNorm) and isinstance(converted[3][1], nn.SyncBatchNorm)
    assert not any(type(m) is nn.BatchNorm1d for m in converted.modules())
    assert all(a is b for a, b in zip(params_before, converted.parameters()))  # optimizer still valid
    for a, b in zip(plain.state_dict().values(), converted.state_dict().values()):
        assert torch.equal(a, b)


def test_convert_sync_batchnorm_rejects_a_bare_batchnorm_model():
    loop = make_loop(model=nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="itself is a BatchNorm"):
        loop.fit(num_epochs=1, callbacks=[ConvertSyncBatchNorm()])


def test_convert_sync_batchnorm_keeps_batchnorm_on_cpu_in_a_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = bn_model()
        with LogCapture() as logs:
            make_loop(model=model).fit(num_epochs=1, callbacks=[ConvertSyncBatchNorm()])
    finally:
        dist.destroy_process_group()
    assert type(model[1]) is nn.BatchNorm1d and "does not run on CPU" in logs.text()
