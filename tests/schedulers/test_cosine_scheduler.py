"""CosineLrScheduler: recorded learning rates against the closed-form schedule."""
import math

import pytest
import torch

from aitoolbox.torchtrain.callbacks.basic import FunctionOnTrainLoop
from aitoolbox.torchtrain.schedulers.cosine import CosineLrScheduler
from tests.callbacks.cb_testkit import Recorder, make_loop, mlp


def closed_form(t, lr_max, warmup, cosine, start, lr_min, k):
    """lr of update t (0-based) after ``warmup`` linear steps, ``cosine`` cosine steps, then the floor."""
    if t < warmup:
        return start + (lr_max - start) * t / warmup
    tc = t - warmup
    if tc < cosine:
        return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * (tc / cosine) ** k)) / 2
    return lr_min


def recorded_lrs(scheduler, optimizer=None, num_epochs=8, grad_accumulation=2, extra=(), model=None,
                 **fit_kwargs):
    """lr of every update, read just before the optimizer steps."""
    loop = make_loop(model=model, num_train=56, optimizer=optimizer)  # 7 batches -> 4 updates per epoch with accumulation 2
    lrs = Recorder("on_after_gradient_update", lambda lp: [g["lr"] for g in lp.optimizer.param_groups])
    fit_kwargs.setdefault("num_epochs", num_epochs)
    loop.fit(callbacks=[scheduler, lrs, *extra], grad_accumulation=grad_accumulation, **fit_kwargs)
    return lrs.records, loop


@pytest.mark.parametrize("k_decay", [1.0, 2.0, 0.5])
def test_cosine_schedule_with_warmup_and_cooldown_matches_the_closed_form(k_decay):
    scheduler = CosineLrScheduler(num_warmup_epochs=2, warmup_starting_lr=1e-3, lr_min=1e-4,
                                  num_cooldown_epochs=1, k_decay=k_decay)
    records, loop = recorded_lrs(scheduler)
    assert scheduler.total_steps == loop.get_num_training_steps() == 32 and scheduler.steps_per_epoch == 4
    expected = [closed_form(t, 0.05, 8, 20, 1e-3, 1e-4, k_decay) for t in range(32)]
    assert [r[0] for r in records] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert records[8][0] == pytest.approx(0.05) and records[0][0] == pytest.approx(1e-3)
    assert all(r[0] == pytest.approx(1e-4) for r in records[28:])  # cooldown floor
    assert scheduler.get_last_lr() == [pytest.approx(1e-4)]


def test_k_decay_changes_the_shape():
    mid = 8 + 10
    high = closed_form(mid - 8, 0.05, 0, 20, 0, 1e-4, 2.0)
    low = closed_form(mid - 8, 0.05, 0, 20, 0, 1e-4, 1.0)
    records, _ = recorded_lrs(CosineLrScheduler(num_warmup_epochs=2, num_cooldown_epochs=1, lr_min=1e-4, k_decay=2.0))
    assert records[mid][0] == pytest.approx(high) and high > low


def test_ratios_per_param_group():
    model = mlp()
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[2].parameters(), "lr": 0.02}])
    scheduler = CosineLrScheduler(num_warmup_epochs=1, warmup_starting_lr_ratio=0.5, min_lr_ratio=0.1)
    records, _ = recorded_lrs(scheduler, optimizer=optimizer, num_epochs=4, model=model)
    for group, lr_max in enumerate((0.1, 0.02)):
        expected = [closed_form(t, lr_max, 4, 12, 0.5 * lr_max, 0.1 * lr_max, 1.0) for t in range(16)]
        assert [r[group] for r in records] == pytest.approx(expected, rel=1e-12)


def test_num_iterations_run_takes_its_steps_from_the_loop():
    scheduler = CosineLrScheduler(lr_min=0.0)
    records, loop = recorded_lrs(scheduler, num_epochs=0, num_iterations=10, grad_accumulation=1)
    assert scheduler.total_steps == 10 and len(records) == 10
    assert [r[0] for r in records] == pytest.approx([closed_form(t, 0.05, 0, 10, 0, 0.0, 1) for t in range(10)])


def test_no_step_on_an_update_that_amp_skipped():
    def mark_skipped(loop):
        loop.amp_handler.step_skipped = loop.num_optimizer_steps == 3

    skipper = FunctionOnTrainLoop(mark_skipped, after_optimizer_step=True, execution_order=-1)
    scheduler = CosineLrScheduler(lr_min=0.0)
    records, _ = recorded_lrs(scheduler, num_epochs=2, extra=[skipper])
    expected = [closed_form(t, 0.05, 0, 8, 0, 0.0, 1) for t in range(8)]
    assert [r[0] for r in records] == pytest.approx(expected[:3] + expected[2:7])
    assert scheduler.num_updates == 7


def test_resumed_run_continues_the_schedule_exactly(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    saver = Recorder("on_epoch_end", lambda lp: lp.save_checkpoint(path) if lp.epoch == 2 else None)
    make_scheduler = lambda: CosineLrScheduler(num_warmup_epochs=1, num_cooldown_epochs=1, k_decay=1.5)  # noqa: E731
    full_records, full_loop = recorded_lrs(make_scheduler(), num_epochs=6, extra=[saver])
    resumed_loop = make_loop(num_train=56).load_checkpoint(path)
    lrs = Recorder("on_after_gradient_update", lambda lp: [g["lr"] for g in lp.optimizer.param_groups])
    resumed_loop.fit(num_epochs=6, callbacks=[make_scheduler(), lrs], grad_accumulation=2)
    assert lrs.records == full_records[12:]
    for k, v in full_loop.model.state_dict().items():
        assert torch.equal(resumed_loop.model.state_dict()[k], v)


def test_standalone_use_in_a_hand_written_loop():
    optimizer = torch.optim.SGD(mlp().parameters(), lr=1.0)
    scheduler = CosineLrScheduler(num_warmup_epochs=1, warmup_starting_lr=0.0, lr_min=0.0,
                                  num_training_steps=10, num_update_steps_per_epoch=2).attach(optimizer)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([closed_form(t, 1.0, 2, 8, 0.0, 0.0, 1) for t in range(10)])
    assert optimizer.param_groups[0]["initial_lr"] == 1.0


def test_warmup_and_cooldown_must_leave_room_for_the_cosine():
    with pytest.raises(ValueError, match="no update for the cosine"):
        recorded_lrs(CosineLrScheduler(num_warmup_epochs=5, num_cooldown_epochs=3))
    with pytest.raises(ValueError, match="num_training_steps"):
        CosineLrScheduler().attach(torch.optim.SGD(mlp().parameters(), lr=1.0))
