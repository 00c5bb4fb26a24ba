"""ModelEma and ModelEmaCallback against hand computations."""
import copy

import pytest
import torch
from torch import nn

from aitoolbox.torchtrain.callbacks.ema import ModelEmaCallback
from aitoolbox.torchtrain.ema import ModelEma
from tests.callbacks.cb_testkit import Recorder, make_loop, regression_dataset


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1))


def hand_ema(initial, states, decay):
    ema = {k: v.clone() for k, v in initial.items()}
    for state in states:
        for k, v in state.items():
            ema[k] = decay * ema[k] + (1 - decay) * v if v.is_floating_point() else v.clone()
    return ema


def assert_state_close(actual, expected):
    assert actual.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(actual[k], expected[k], rtol=1e-6, atol=1e-7, msg=k)


def test_model_ema_matches_a_hand_computation_of_parameters_and_buffers():
    model = bn_model()
    initial = copy.deepcopy(model.state_dict())
    ema = ModelEma(model, decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = regression_dataset(16)[:]
    states = []
    for _ in range(4):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        ema.update(model)
        states.append(copy.deepcopy(model.state_dict()))
    expected = hand_ema(initial, states, 0.9)
    assert_state_close(ema.state_dict(), expected)
    assert ema.state_dict()["1.num_batches_tracked"].item() == 4
    assert not torch.equal(expected["0.weight"], states[-1]["0.weight"])  # the average lags behind
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_model_ema_on_another_device_and_applied_to_restores_the_weights():
    model = bn_model()
    ema = ModelEma(model, decay=0.5, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    before = copy.deepcopy(model.state_dict())
    with ema.applied_to(model) as swapped:
        assert swapped is model
        assert torch.equal(model[0].weight, ema.module[0].weight)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_model_ema_rejects_a_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        ModelEma(nn.Linear(2, 2), decay=1.5)


def run(callbacks, num_epochs=3, grad_accumulation=2):
    model = bn_model()
    loop = make_loop(model=model, lr=0.05)
    steps = Recorder("on_after_optimizer_step", lambda lp: copy.deepcopy(lp.model.state_dict()))
    loop.fit(num_epochs=num_epochs, callbacks=list(callbacks) + [steps], grad_accumulation=grad_accumulation)
    return loop, steps.records


def test_ema_callback_updates_after_every_optimizer_step():
    initial = copy.deepcopy(bn_model().state_dict())
    callback = ModelEmaCallback(decay=0.8)
    loop, step_states = run([callback])
    assert len(step_states) == loop.num_optimizer_steps == 9  # 6 batches, accumulation 2, 3 epochs
    assert callback.model_ema.num_updates == 9
    assert_state_close(callback.model_ema.state_dict(), hand_ema(initial, step_states, 0.8))


def test_ema_callback_evaluates_the_ema_model_without_touching_training():
    callback = ModelEmaCallback(decay=0.8)
    loop, _ = run([callback])
    plain_loop, _ = run([])
    for a, b in zip(loop.model.state_dict().values(), plain_loop.model.state_dict().values()):
        assert torch.equal(a, b)  # bit-identical training
    assert loop.train_history["val_loss"] == plain_loop.train_history["val_loss"]
    assert loop.evaluate_loss_on_validation_set(float_dict_format=True) == plain_loop.train_history["val_loss"][-1]
    x, y = regression_dataset(24, seed=1)[:]
    with torch.no_grad():
        expected = nn.functional.mse_loss(callback.ema_model(x), y).item()
    assert len(loop.train_history["ema_val_loss"]) == 3
    assert loop.train_history["ema_val_loss"][-1] == pytest.approx(expected, rel=1e-5)
    assert loop.train_history["ema_val_loss"][-1] != loop.train_history["val_loss"][-1]


def test_ema_callback_state_is_checkpointed(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    full = ModelEmaCallback(decay=0.8, evaluate=False)
    saver = Recorder("on_epoch_end", lambda lp: lp.save_checkpoint(path) if lp.epoch == 1 else None)
    run([full, saver])
    resumed_loop = make_loop(model=bn_model(), lr=0.05).load_checkpoint(path)
    resumed = ModelEmaCallback(decay=0.8, evaluate=False)
    resumed_loop.fit(num_epochs=3, callbacks=[resumed], grad_accumulation=2)
    for k, v in full.model_ema.state_dict().items():
        assert torch.equal(resumed.model_ema.state_dict()[k], v), k
