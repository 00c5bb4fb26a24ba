"""Scenarios 1 and 2: training throughput on a tiny and on a medium MLP.

The framework arms train with evaluation and the progress bar off (scenario 3 measures the
defaults), so the difference to the hand-written loop is the loop's own per-step overhead.
Timing covers everything a user pays after the model and the data exist: building the
framework's objects and ``fit``. Each process runs the hand-written loop, then the arm, then the
hand-written loop again (see :func:`bench.common.paired`); the arm is compared with the mean of
its two bracketing hand-written runs.
"""
from __future__ import annotations

from typing import Sequence

from bench import common

TINY = dict(sizes=[32, 64, 10], batch_size=32, num_samples=32_000, num_epochs=3)
MEDIUM = dict(sizes=[784, 1024, 1024, 10], batch_size=128, num_samples=12_800, num_epochs=3)


def params(base: dict, quick: bool) -> dict:
    """The workload; ``quick`` shrinks it to a smoke run."""
    out = dict(base)
    if quick:
        out.update(num_samples=base["batch_size"] * 20, num_epochs=1)
    out["steps"] = out["num_epochs"] * -(-out["num_samples"] // out["batch_size"])
    return out


def build(p: dict):
    """``(model, train_loader, optimizer, criterion)``: identical on every call."""
    import torch
    model = common.mlp(p["sizes"])
    data = common.dataset(p["num_samples"], p["sizes"][0], p["sizes"][-1])
    return model, common.loader(data, p["batch_size"], shuffle=True), common.sgd(model), \
        torch.nn.CrossEntropyLoss()


def setup(p: dict):
    """:func:`build` after limiting threads and a warm-up."""
    common.limit_threads()
    common.warm_up(p["sizes"], p["batch_size"])
    return build(p)


def hand_run(model, train_loader, opt, crit, p: dict) -> None:
    """The hand-written loop over the whole workload."""
    common.hand_train(model, train_loader, opt, crit, p["num_epochs"])


def paired(p: dict, run, imports: Sequence[str] = ()) -> dict:
    """Time ``run(model, loader, opt, crit, p)`` bracketed by two hand-written runs: H X H
    (:func:`bench.common.paired`), after an untimed hand-written epoch."""
    def warm():
        setup(p)
        hand_run(*build(p), {**p, "num_epochs": 1})

    out = common.paired(lambda: build(p), lambda *b: hand_run(*b, p), lambda *b: run(*b, p), warm, imports)
    return {**out, "steps": p["steps"]}


def aitoolbox_run(model, train_loader, opt, crit, p: dict) -> None:
    """``TrainLoop.fit`` with evaluation and progress bar off."""
    from aitoolbox import TrainLoop
    TrainLoop(model, train_loader, None, None, opt, crit, end_auto_eval=False,
              show_progress=False).fit(num_epochs=p["num_epochs"])


def arm_hand(p: dict) -> dict:
    """The hand-written loop against itself: the noise floor of the paired measurement."""
    return paired(p, hand_run)


def arm_aitoolbox(p: dict) -> dict:
    """``TrainLoop.fit`` against the hand-written loop."""
    return paired(p, aitoolbox_run, ["aitoolbox"])
