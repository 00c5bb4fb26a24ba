"""The stateful and stateless param-group scheduler base classes on fields other than lr."""
import pytest
import torch

from aitoolbox.torchtrain.schedulers.param_schedulers import ParamGroupScheduler, StatefulParamGroupScheduler
from tests.callbacks.cb_testkit import Recorder, make_loop, mlp


class StepWeightDecay(StatefulParamGroupScheduler):
    """Multiply the weight decay by gamma every n updates."""

    def __init__(self, n=3, gamma=2.0):
        super().__init__(param_group_field="weight_decay")
        self.n, self.gamma = n, gamma

    def get_updated_values(self, num_updates):
        if num_updates % self.n == 0 and num_updates > 0:
            return [g["weight_decay"] * self.gamma for g in self.optimizer.param_groups]
        return None


class LinearMomentum(ParamGroupScheduler):
    """Stateless: momentum = initial - 0.01 per update."""

    def __init__(self):
        super().__init__(param_group_field="momentum")

    def get_updated_values(self, num_updates):
        return [base - 0.01 * num_updates for base in self.base_values()]


def fields(field):
    return Recorder("on_after_gradient_update", lambda lp: [g[field] for g in lp.optimizer.param_groups])


def test_stateful_scheduler_of_weight_decay():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.01)
    loop = make_loop(model=model, optimizer=optimizer)  # 6 updates per epoch
    scheduler, recorder = StepWeightDecay(), fields("weight_decay")
    loop.fit(num_epochs=2, callbacks=[scheduler, recorder])
    assert [r[0] for r in recorder.records] == pytest.approx([0.01] * 3 + [0.02] * 3 + [0.04] * 3 + [0.08] * 3)
    assert scheduler.state_dict() == {"num_updates": 12}
    assert optimizer.param_groups[0]["initial_weight_decay"] == 0.01
    assert scheduler in loop.get_schedulers()


def test_stateless_scheduler_follows_the_loop_step_count():
    model = mlp()
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "momentum": 0.9},
                                 {"params": model[2].parameters(), "momentum": 0.5}], lr=0.05)
    loop = make_loop(model=model, optimizer=optimizer)
    scheduler, recorder = LinearMomentum(), fields("momentum")
    loop.fit(num_epochs=1, callbacks=[scheduler, recorder], grad_accumulation=2)
    flat = [m for r in recorder.records for m in r]
    assert flat == pytest.approx([m - 0.01 * t for t in range(3) for m in (0.9, 0.5)])
    assert scheduler.state_dict() is None  # nothing to save: the loop's step count is the state
    # a second fit continues from the loop's count
    loop.fit(num_epochs=2, callbacks=[LinearMomentum(), recorder], grad_accumulation=2)
    assert recorder.records[3] == pytest.approx([0.9 - 0.03, 0.5 - 0.03])


def test_bad_values_and_fields_are_reported():
    class TooMany(ParamGroupScheduler):
        def get_updated_values(self, num_updates):
            return [0.1, 0.2]

    optimizer = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="2 values for 1 param groups"):
        TooMany().attach(optimizer)
    with pytest.raises(KeyError, match="'betas'"):
        ParamGroupScheduler(param_group_field="betas").attach(optimizer)
    with pytest.raises(NotImplementedError, match="get_updated_values"):
        ParamGroupScheduler().attach(optimizer)
