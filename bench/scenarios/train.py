"""Scenarios 1 and 2: training throughput on a tiny and on a medium MLP.

The framework arms train with evaluation and the progress bar off (scenario 3 measures the
defaults), so the difference to the hand-written loop is the loop's own per-step overhead.
Timing covers everything a user pays after the model and the data exist: building the
framework's objects and ``fit``. Each process runs the hand-written loop, then the arm, then the
hand-written loop again (see :func:`paired`); the arm is compared with the mean of its two
bracketing hand-written runs.
"""
from __future__ import annotations

import importlib
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
    """Time ``run(model, loader, opt, crit, p)`` bracketed by two hand-written runs: H X H.

    The hand-written runs in the same process are the arm's own baseline, so that differences
    between processes (placement, caches, neighbours' load) cancel; their mean also cancels a
    linear drift within the process. An untimed hand-written epoch first takes the one-time costs
    (heap growth, first allocations) off the first timed run. ``imports`` are imported before any timing (import time is
    scenario 6, not a per-step cost).
    """
    for name in imports:
        importlib.import_module(name)
    setup(p)
    hand_run(*build(p), {**p, "num_epochs": 1})  # untimed: the first full run pays one-time costs
    timers, models = [], []
    for fn in (hand_run, run, hand_run):
        built = build(p)
        with common.Timer() as timer:
            fn(*built, p)
        timers.append(timer)
        models.append(built[0])
    hand_cpu = (timers[0].cpu_seconds + timers[2].cpu_seconds) / 2
    hand_wall = (timers[0].seconds + timers[2].seconds) / 2
    return {**timers[1].times(), "hand_cpu_seconds": hand_cpu, "hand_seconds": hand_wall,
            "steps": p["steps"], "checksum": common.checksum(models[1]),
            "hand_checksum": common.checksum(models[0])}


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
