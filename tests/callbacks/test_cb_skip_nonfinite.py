"""SkipNonFinite: a non-finite window's update is skipped, training goes on (vs a hand-written loop)."""
import copy

import pytest
import torch
from torch import nn

from aitoolbox import TrainLoop
from aitoolbox.torchtrain.callbacks.basic import SkipNonFinite


def _batches(bad_batches, num=8):
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(num):
        x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 1, generator=gen)
        if i in bad_batches:
            x[0, 0] = float("nan")
        out.append((x, y))
    return out


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))


def _hand(model, batches, accumulation):
    """Plain SGD loop that skips every window holding a non-finite loss."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.MSELoss()
    window_bad = False
    for i, (x, y) in enumerate(batches):
        loss = crit(model(x), y)
        window_bad |= not torch.isfinite(loss).item()
        (loss / accumulation).backward()
        if (i + 1) % accumulation == 0 or i + 1 == len(batches):
            if not window_bad:
                opt.step()
            opt.zero_grad(set_to_none=True)
            window_bad = False
    return model


@pytest.mark.parametrize("accumulation, bad, skipped", [(1, {2, 5}, [2, 5]), (2, {2}, [3]), (2, {5}, [5])])
def test_skipped_updates_match_a_hand_loop_that_skips_them(accumulation, bad, skipped):
    batches = _batches(bad)
    reference = _hand(_model(), batches, accumulation)
    model = _model()
    cb = SkipNonFinite()
    loop = TrainLoop(model, batches, None, None, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(),
                     end_auto_eval=False, show_progress=False)
    loop.fit(num_epochs=1, callbacks=[cb], grad_accumulation=accumulation)
    assert cb.skipped_iterations == skipped  # the window's stepping batch; later windows are not skipped
    assert loop.total_iteration_idx == len(batches) and loop.epoch == 1 and not loop.early_stop  # trained to the end
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.isfinite(p).all()
        assert torch.allclose(p, q, atol=1e-6)


def test_without_the_callback_the_nan_reaches_the_weights():
    model = _model()
    TrainLoop(model, _batches({2}), None, None, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(),
              end_auto_eval=False, show_progress=False).fit(num_epochs=1)
    assert not all(torch.isfinite(p).all() for p in model.parameters())


def test_max_consecutive_stops_training(caplog):
    model = _model()
    cb = SkipNonFinite(max_consecutive=2)
    loop = TrainLoop(model, _batches({3, 4, 5}), None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.MSELoss(), end_auto_eval=False, show_progress=False)
    loop.fit(num_epochs=1, callbacks=[cb])
    assert cb.skipped_iterations == [3, 4] and loop.early_stop
    assert "2 updates in a row skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_bad_max_consecutive_is_named(value):
    with pytest.raises(ValueError, match="max_consecutive"):
        SkipNonFinite(max_consecutive=value)
