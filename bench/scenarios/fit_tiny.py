"""Scenario 8: what the defaults cost on a tiny model: ``python -m bench.scenarios.fit_tiny``.

A 1,000-step ``fit`` of the tiny MLP 32-64-10 (batch 32, one thread) with ``TrainLoop``'s default
arguments - the progress bar on - and no evaluation (a train loader only, ``validation_loader=None``,
``end_auto_eval=False``), the whole ``fit`` call timed, set-up included, against the hand-written
loop on the same DataLoader. Target: at most 10 µs per step over the hand-written loop.

Run as a module it is its own in-process harness: one process alternates hand-written and
``TrainLoop`` runs (the order flips every round) for many rounds and reports the median of the
per-round differences with their spread (quartiles, min, max), in CPU time and wall time. The
progress bar writes to stderr (redirect it to see a terminal's cost: ``2>/dev/tty``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import time

from bench import common

BASE = dict(sizes=[32, 64, 10], batch_size=32, steps=1000, num_epochs=1)


def params(quick: bool) -> dict:
    """The workload (the same in a quick run: it is small already)."""
    return dict(BASE)


def build(p: dict):
    """``(model, train_loader, optimizer, criterion)``: identical on every call."""
    import torch
    model = common.mlp(p["sizes"])
    data = common.dataset(p["steps"] // p["num_epochs"] * p["batch_size"], p["sizes"][0], p["sizes"][-1])
    return model, common.loader(data, p["batch_size"], shuffle=True), common.sgd(model), \
        torch.nn.CrossEntropyLoss()


def hand_run(model, train_loader, opt, crit, p: dict) -> None:
    """The hand-written loop."""
    common.hand_train(model, train_loader, opt, crit, p["num_epochs"])


def aitoolbox_run(model, train_loader, opt, crit, p: dict) -> None:
    """``TrainLoop`` with its defaults (progress bar on), no evaluation: the whole ``fit``."""
    from aitoolbox import TrainLoop
    TrainLoop(model, train_loader, None, None, opt, crit, end_auto_eval=False).fit(num_epochs=p["num_epochs"])


def _paired(p: dict, run, imports=()) -> dict:
    def warm():
        common.limit_threads()
        common.warm_up(p["sizes"], p["batch_size"])
    out = common.paired(lambda: build(p), lambda *b: hand_run(*b, p), lambda *b: run(*b, p), warm, imports)
    return {**out, "steps": p["steps"]}


def arm_hand(p: dict) -> dict:
    """The hand-written loop against itself: the noise floor."""
    return _paired(p, hand_run)


#: imported before timing: import time is scenario 6 (``import aitoolbox`` is lazy), not a per-step cost
IMPORTS = ["aitoolbox", "aitoolbox.torchtrain.train_loop.train_loop", "aitoolbox.torchtrain.callbacks.progress"]


def arm_aitoolbox(p: dict) -> dict:
    """The default ``fit`` against the hand-written loop."""
    return _paired(p, aitoolbox_run, IMPORTS)


def _hand_again(model, train_loader, opt, crit, p: dict) -> None:
    """The hand-written loop once more: hand against hand is the noise floor."""
    hand_run(model, train_loader, opt, crit, p)


def measure(rounds: int = 30, p: dict = None) -> dict:
    """Alternate hand / TrainLoop / hand runs ``rounds`` times in this process; µs per step.

    The order rotates every round. ``*_us_per_step``: TrainLoop minus hand; ``noise_floor_*``:
    the second hand-written run minus the first, measured in the same rounds.
    """
    for name in IMPORTS:  # import time is not a per-step cost
        importlib.import_module(name)
    p = dict(BASE if p is None else p)
    common.limit_threads()
    common.warm_up(p["sizes"], p["batch_size"])
    arms = [hand_run, aitoolbox_run, _hand_again]
    diffs = {"cpu": [], "wall": [], "noise_cpu": []}
    for rnd in range(rounds + 2):  # two warm-up rounds
        times = {}
        shift = rnd % 3
        for fn in arms[shift:] + arms[:shift]:
            built = build(p)
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            fn(*built, p)
            times[fn] = (time.process_time() - start_cpu, time.perf_counter() - start_wall)
        if rnd >= 2:
            diffs["cpu"].append((times[aitoolbox_run][0] - times[hand_run][0]) / p["steps"] * 1e6)
            diffs["wall"].append((times[aitoolbox_run][1] - times[hand_run][1]) / p["steps"] * 1e6)
            diffs["noise_cpu"].append((times[_hand_again][0] - times[hand_run][0]) / p["steps"] * 1e6)
    hand_us = times[hand_run][0] / p["steps"] * 1e6
    return {"cpu_us_per_step": common.quartile_spread(diffs["cpu"]),
            "wall_us_per_step": common.quartile_spread(diffs["wall"]),
            "noise_floor_cpu_us_per_step": common.quartile_spread(diffs["noise_cpu"]),
            "hand_cpu_us_per_step_last_round": round(hand_us, 1), "rounds": rounds, **p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=BASE["steps"])
    parser.add_argument("--epochs", type=int, default=BASE["num_epochs"])
    args = parser.parse_args()
    p = {**BASE, "steps": args.steps, "num_epochs": args.epochs}
    print(json.dumps(measure(args.rounds, p), indent=1))


if __name__ == "__main__":
    main()
