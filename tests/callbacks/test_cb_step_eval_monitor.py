"""EvaluateEveryNSteps and TrainingMonitor."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from aitoolbox.torchtrain.callbacks.gradient import GradNormClip
from aitoolbox.torchtrain.callbacks.monitor import TrainingMonitor, process_rss_bytes
from aitoolbox.torchtrain.callbacks.step_eval import EvaluateEveryNSteps
from aitoolbox.torchtrain.schedulers.basic import LambdaLRScheduler
from tests.callbacks.cb_testkit import LogCapture, Recorder, make_loop, mlp, regression_dataset


def mse_with(state, dataset):
    model = mlp()
    model.load_state_dict(state)
    x, y = dataset[:]
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def test_evaluate_every_n_steps_writes_the_losses_of_those_steps():
    loop = make_loop()  # 6 batches per epoch
    states = Recorder("on_after_optimizer_step", lambda lp: copy.deepcopy(lp.model.state_dict()))
    with LogCapture() as logs:
        loop.fit(num_epochs=2, callbacks=[EvaluateEveryNSteps(4, on_train=True), states])
    history = loop.train_history
    assert history["step_idx"] == [4, 8, 12]
    for idx, step in enumerate(history["step_idx"]):
        state = states.records[step - 1]
        assert history["step_val_loss"][idx] == pytest.approx(mse_with(state, regression_dataset(24, 1)), rel=1e-6)
        assert history["step_loss"][idx] == pytest.approx(mse_with(state, regression_dataset(48, 0)), rel=1e-6)
    assert history["step_val_loss"][-1] == history["val_loss"][-1]  # step 12 ends epoch 2: same weights
    assert "Step 8: step_loss=" in logs.text()


def test_evaluate_every_n_steps_does_not_change_the_training_run():
    def final_weights(callbacks):
        loop = make_loop()
        loop.train_loader = DataLoader(regression_dataset(48), batch_size=8, shuffle=True)
        torch.manual_seed(7)
        loop.fit(num_epochs=2, callbacks=callbacks)
        return loop.model.state_dict()

    with_eval, without = final_weights([EvaluateEveryNSteps(1)]), final_weights([])
    assert all(torch.equal(with_eval[k], without[k]) for k in without)


def test_evaluate_every_n_steps_needs_a_validation_loader():
    with pytest.raises(ValueError, match="validation_loader"):
        make_loop(validation=False).fit(num_epochs=1, callbacks=[EvaluateEveryNSteps(2)])
    with pytest.raises(ValueError, match="on_val and / or on_train"):
        EvaluateEveryNSteps(2, on_val=False)


def test_training_monitor_records_lr_grad_norm_and_memory():
    monitor, clipper = TrainingMonitor(), GradNormClip(0.5)
    scheduler = LambdaLRScheduler(lambda step: 1.0 / (1 + step), execute_epoch_end=False, execute_batch_end=True)
    norms = Recorder("on_after_optimizer_step", lambda lp: clipper.total_norms[0].item())
    loop = make_loop(lr=0.1)
    loop.fit(num_epochs=2, callbacks=[monitor, clipper, scheduler, norms])
    history = loop.train_history
    assert history["monitor_step"] == list(range(1, 13))
    assert history["monitor_lr"] == pytest.approx([0.1 / (1 + k) for k in range(12)])  # lr of each update
    assert history["monitor_grad_norm"] == pytest.approx(norms.records, rel=1e-5)  # before clipping
    assert max(history["monitor_grad_norm"]) > 0.5
    rss_now = process_rss_bytes() / 2 ** 20
    assert all(10 < mb <= rss_now * 1.5 for mb in history["monitor_rss_mb"])


def test_training_monitor_every_n_steps_with_several_param_groups_and_logging():
    model = mlp()
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[2].parameters(), "lr": 0.01}])
    loop = make_loop(model=model, optimizer=optimizer)
    monitor = TrainingMonitor(grad_norm=False, memory=False, every_n_steps=5, log=True)
    with LogCapture() as logs:
        loop.fit(num_epochs=2, callbacks=[monitor])
    assert loop.train_history["monitor_step"] == [5, 10]
    assert loop.train_history["monitor_lr_0"] == [0.1, 0.1]
    assert loop.train_history["monitor_lr_1"] == [0.01, 0.01]
    assert "monitor_grad_norm" not in loop.train_history
    assert "monitor_step=10, monitor_lr_0=0.1, monitor_lr_1=0.01" in logs.text()
