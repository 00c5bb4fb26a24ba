"""Scenarios 1 and 2: training throughput on a tiny and on a medium MLP.

The framework arms train with evaluation and the progress bar off (scenario 3 measures the
defaults), so the difference to the hand-written loop is the loop's own per-step overhead.
Timing covers everything a user pays after the model and the data exist: building the
framework's objects and ``fit``.
"""
from __future__ import annotations

from bench import common

TINY = dict(sizes=[32, 64, 10], batch_size=32, num_samples=96_000, num_epochs=1)
MEDIUM = dict(sizes=[784, 1024, 1024, 10], batch_size=128, num_samples=12_800, num_epochs=3)


def params(base: dict, quick: bool) -> dict:
    """The workload; ``quick`` shrinks it to a smoke run."""
    out = dict(base)
    if quick:
        out.update(num_samples=base["batch_size"] * 20, num_epochs=1)
    out["steps"] = out["num_epochs"] * -(-out["num_samples"] // out["batch_size"])
    return out


def setup(p: dict):
    """``(model, train_loader, optimizer, criterion)`` of the workload, after a warm-up."""
    import torch
    common.limit_threads()
    common.warm_up(p["sizes"], p["batch_size"])
    model = common.mlp(p["sizes"])
    data = common.dataset(p["num_samples"], p["sizes"][0], p["sizes"][-1])
    return model, common.loader(data, p["batch_size"], shuffle=True), common.sgd(model), \
        torch.nn.CrossEntropyLoss()


def result(timer, p: dict, model) -> dict:
    """What every training arm reports."""
    return {**timer.times(), "steps": p["steps"], "checksum": common.checksum(model)}


def arm_hand(p: dict) -> dict:
    """The hand-written loop."""
    model, train_loader, opt, crit = setup(p)
    with common.Timer() as timer:
        common.hand_train(model, train_loader, opt, crit, p["num_epochs"])
    return result(timer, p, model)


def arm_aitoolbox(p: dict) -> dict:
    """``TrainLoop.fit`` with evaluation and progress bar off."""
    from aitoolbox import TrainLoop
    model, train_loader, opt, crit = setup(p)
    with common.Timer() as timer:
        TrainLoop(model, train_loader, None, None, opt, crit, end_auto_eval=False,
                  show_progress=False).fit(num_epochs=p["num_epochs"])
    return result(timer, p, model)
