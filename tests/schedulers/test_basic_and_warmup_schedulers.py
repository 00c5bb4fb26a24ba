"""Scheduler callbacks: closed-form warmup schedules, plateau schedulers, checkpointed state."""
import math

import pytest
import torch
from torch import nn

from aitoolbox import MultiOptimizer, TrainLoop
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.schedulers.basic import (
    LambdaLRScheduler, MultiStepLRScheduler, ReduceLROnPlateauMetricScheduler, ReduceLROnPlateauScheduler,
    StepLRScheduler)
from aitoolbox.torchtrain.schedulers.warmup import (
    ConstantWithWarmupScheduler, CosineWithWarmupScheduler, HardRestartsCosineWithWarmupScheduler,
    LinearWithWarmupScheduler)

from _loop_helpers import loader, make_data, make_mlp


class LrRecorder(AbstractCallback):
    def __init__(self, optimizer_idx=0):
        super().__init__("lr recorder", execution_order=100)
        self.lrs, self.optimizer_idx = [], optimizer_idx

    def on_after_optimizer_step(self):
        self.lrs.append(self.train_loop_obj.optimizers[self.optimizer_idx].param_groups[0]["lr"])


def _fit(scheduler, num_epochs=2, grad_accumulation=1, optimizer=None, model=None, **loop_kwargs):
    data = make_data(100)
    model = model or make_mlp()
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=1.0)
    recorder = LrRecorder()
    loop = TrainLoop(model, loader(data, 10), loader(data, 50), None, optimizer, nn.CrossEntropyLoss(),
                     show_progress=False, **loop_kwargs)
    loop.fit(num_epochs=num_epochs, grad_accumulation=grad_accumulation, callbacks=[scheduler, recorder])
    return recorder.lrs, loop


@pytest.mark.parametrize("scheduler_cls, closed_form", [
    (ConstantWithWarmupScheduler, lambda s, w, n: min(1.0, s / w)),
    (LinearWithWarmupScheduler, lambda s, w, n: s / w if s < w else max(0.0, (n - s) / (n - w))),
    (CosineWithWarmupScheduler, lambda s, w, n: s / w if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / (n - w)))),
])
def test_warmup_schedules_follow_closed_form(scheduler_cls, closed_form):
    lrs, loop = _fit(scheduler_cls(num_warmup_steps=4), num_epochs=2, grad_accumulation=2)
    total = loop.get_num_training_steps()
    assert total == 10 and len(lrs) == 10
    # The lr in force after update s is the factor of s updates (the scheduler steps after each update).
    assert lrs == pytest.approx([closed_form(s, 4, total) for s in range(1, 11)], abs=1e-12)


def test_hard_restarts_cosine_restarts():
    scheduler = HardRestartsCosineWithWarmupScheduler(num_warmup_steps=0, num_training_steps=20, num_cycles=2)
    lrs, _ = _fit(scheduler, num_epochs=2)
    expected = [0.5 * (1 + math.cos(math.pi * ((2 * s / 20) % 1.0))) if s < 20 else 0.0 for s in range(1, 21)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[9] == pytest.approx(1.0)  # the restart


def test_step_and_multistep_schedulers_step_per_epoch():
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    _fit(StepLRScheduler(step_size=2, gamma=0.5), num_epochs=4, optimizer=opt, model=model)
    assert opt.param_groups[0]["lr"] == 0.25
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    _fit(MultiStepLRScheduler([1, 4], gamma=0.1), num_epochs=3, optimizer=opt, model=model)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_lambda_scheduler_per_batch_and_argument_check():
    lrs, _ = _fit(LambdaLRScheduler(lambda s: 1 / (s + 1), execute_epoch_end=False, execute_batch_end=True),
                  num_epochs=1)
    assert lrs == pytest.approx([1 / (s + 1) for s in range(1, 11)])
    with pytest.raises(ValueError, match="exactly one of execute_epoch_end and execute_batch_end"):
        LambdaLRScheduler(lambda s: 1.0, execute_epoch_end=True, execute_batch_end=True)


def test_plateau_scheduler_on_validation_loss_uses_the_cache():
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no learning: the loss plateaus
    opt.param_groups[0]["lr"] = 1e-12
    scheduler = ReduceLROnPlateauScheduler(patience=0, factor=0.5, threshold=1e-3)
    _fit(scheduler, num_epochs=3, optimizer=opt, model=model)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-12 * 0.5 ** 2)


def test_plateau_metric_scheduler_needs_the_metric():
    with pytest.raises(ValueError, match="'val_Accuracy' is not in the training history"):
        _fit(ReduceLROnPlateauMetricScheduler("val_Accuracy", mode="max"), num_epochs=1)


def test_scheduler_picks_optimizer_of_multioptimizer_and_state_is_checkpointed():
    model = make_mlp()
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    opts = MultiOptimizer([torch.optim.SGD(first, lr=1.0), torch.optim.SGD(second, lr=1.0)])
    scheduler = StepLRScheduler(step_size=1, gamma=0.5, optimizer_idx=1)
    _, loop = _fit(scheduler, num_epochs=2, optimizer=opts, model=model)
    assert opts[0].param_groups[0]["lr"] == 1.0 and opts[1].param_groups[0]["lr"] == 0.25
    state = loop.state_dict()["callbacks_state_dict"]
    (key, value), = [(k, v) for k, v in state.items() if k.startswith("StepLRScheduler")]
    assert value["scheduler"]["last_epoch"] == 2 and value["lrs"] == [0.25]
