"""Scenario 10: what logging every step to CSV + TensorBoard costs: ``python -m bench.scenarios.loggers``.

Two ``fit`` calls of the tiny MLP 32-64-10 (batch 32, one thread, no progress bar, no evaluation)
are compared: the same ``TrainLoop`` with and without ``LoggerCallback([CSVLogger, TensorBoardLogger],
log_every_n_steps=1)``. The logged run writes the batch loss and the learning rate of every step
to ``steps.csv`` and to a TensorBoard event file, plus the per-epoch rows. Target: at most 2 µs per
step.

Per step, the fixed costs of a run (creating the folders and files, the fsync at the end) are
taken out by timing two lengths, ``steps`` and ``2 * steps``: the per-step cost is the growth of
the difference between the logged and the plain run from the short to the long fit, divided by
the added steps. The whole-fit difference per step (fixed costs included) is reported too.

On a shared, loaded machine whole ``fit`` calls vary by far more than 2 µs a step, so the logged
run also times the callback's own work directly (``hook_us_per_step``): every hook of the
``LoggerCallback`` - setting the loggers up, each ``on_batch_end``, the flushes, the epoch's rows,
closing the files - timed in CPU time of the thread (``time.thread_time``) and summed, minus the
same timer around the same hooks of an empty callback, alone in a fit of the same length right
after (the timer's own cost, cold caches included), divided by the steps. That is everything logging
adds to a step except the loop's call of one more subscriber (tens of nanoseconds).

Run as a module it is its own in-process harness: one process alternates the arms (the order
rotates every round) for many rounds and reports the medians with their spread.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import tempfile
import time

from bench import common

BASE = dict(sizes=[32, 64, 10], batch_size=32, steps=2000)

#: imported before timing: import time is scenario 6, not a per-step cost
IMPORTS = ["aitoolbox", "aitoolbox.torchtrain.train_loop.train_loop", "aitoolbox.torchtrain.callbacks.loggers",
           "aitoolbox.experiment.loggers.csv_logger", "aitoolbox.experiment.loggers.tensorboard_logger",
           "tensorboard", "google_crc32c"]


def params(quick: bool) -> dict:
    """The workload (smaller in a quick run)."""
    return dict(BASE, steps=300) if quick else dict(BASE)


def build(p: dict, steps: int):
    """``(model, train_loader, optimizer, criterion)``: identical on every call."""
    import torch
    model = common.mlp(p["sizes"])
    data = common.dataset(steps * p["batch_size"], p["sizes"][0], p["sizes"][-1])
    return model, common.loader(data, p["batch_size"], shuffle=True), common.sgd(model), torch.nn.CrossEntropyLoss()


def plain_run(model, train_loader, opt, crit) -> None:
    """``TrainLoop.fit`` without loggers."""
    from aitoolbox import TrainLoop
    TrainLoop(model, train_loader, None, None, opt, crit, end_auto_eval=False, show_progress=False,
              quiet=True).fit(num_epochs=1)


TIMED_HOOKS = ("on_train_begin", "on_batch_end", "on_epoch_end", "on_train_end")


def _timed(hook):
    """``hook`` wrapped: its CPU time is added to ``self.spent``, its calls to ``self.calls``."""
    def run(self, *args):
        start = time.thread_time()
        hook(self, *args)
        self.spent += time.thread_time() - start
        self.calls += 1
    return run


def timed_callback_class():
    """A ``LoggerCallback`` whose hooks add their own CPU time to ``spent`` (and count the calls).

    CPU time of the thread, not wall time: on a loaded machine the process is descheduled for
    milliseconds at a time, and a wall clock would charge those pauses to whatever hook was running."""
    from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback
    attrs = {name: _timed(getattr(LoggerCallback, name)) for name in TIMED_HOOKS}
    attrs.update(spent=0.0, calls=0)
    return type("TimedLoggerCallback", (LoggerCallback,), attrs)


def timed_empty_callback():
    """A callback doing nothing in the same hooks, timed the same way: the timer's own cost, in a
    fit of its own where it is the only callback, as the logger is (the first code to run after a
    training step pays for cold caches; a timer placed right after the logger's would be warm)."""
    from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

    def nothing(self, *args):
        pass
    attrs = {name: _timed(nothing) for name in TIMED_HOOKS}
    attrs.update(spent=0.0, calls=0)
    return type("TimedEmptyCallback", (AbstractCallback,), attrs)("timed empty callback")


LAST_HOOK_SECONDS = {"logged": [], "empty": []}  # CPU seconds in the timed hooks of each run in this process


def logged_run(model, train_loader, opt, crit, timed: bool = True) -> None:
    """The same ``fit`` logging every step to CSV and TensorBoard (files in a fresh temporary folder).

    ``timed``: the callback times its own hooks (``hook_us_per_step``); ``bench.instructions``
    counts the plain ``LoggerCallback`` instead."""
    from aitoolbox import TrainLoop
    from aitoolbox.experiment.loggers.csv_logger import CSVLogger
    from aitoolbox.experiment.loggers.tensorboard_logger import TensorBoardLogger
    from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback
    folder = tempfile.mkdtemp(prefix="aitoolbox_bench_loggers_")
    try:
        callback = (timed_callback_class() if timed else LoggerCallback)(
            [CSVLogger(f"{folder}/csv"), TensorBoardLogger(f"{folder}/tb")], log_every_n_steps=1)
        TrainLoop(model, train_loader, None, None, opt, crit, end_auto_eval=False,
                  show_progress=False, quiet=True).fit(num_epochs=1, callbacks=[callback])
        if timed:
            LAST_HOOK_SECONDS["logged"].append(callback.spent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def empty_run(model, train_loader, opt, crit) -> None:
    """The same ``fit`` with only the timed empty callback: the timer's own cost."""
    from aitoolbox import TrainLoop
    empty = timed_empty_callback()
    TrainLoop(model, train_loader, None, None, opt, crit, end_auto_eval=False,
              show_progress=False, quiet=True).fit(num_epochs=1, callbacks=[empty])
    LAST_HOOK_SECONDS["empty"].append(empty.spent)


def hook_us_per_step(steps: int) -> float:
    """The callback's own CPU time per step in the last logged run, the timer's cost (the empty
    callback's) taken out."""
    return (LAST_HOOK_SECONDS["logged"][-1] - LAST_HOOK_SECONDS["empty"][-1]) / steps * 1e6


def _cpu_seconds(fn, p: dict, steps: int) -> float:
    built = build(p, steps)
    start = time.process_time()
    fn(*built)
    return time.process_time() - start


def _arm(p: dict, arm) -> dict:
    """One fresh-process run: the arm and the plain fit at both lengths (plain, arm, arm, plain)."""
    for name in IMPORTS:
        importlib.import_module(name)
    common.limit_threads()
    common.warm_up(p["sizes"], p["batch_size"])
    n = p["steps"]
    short_base, short_arm = _cpu_seconds(plain_run, p, n), _cpu_seconds(arm, p, n)
    long_arm, long_base = _cpu_seconds(arm, p, 2 * n), _cpu_seconds(plain_run, p, 2 * n)
    hooks = {}
    if arm is logged_run:
        _cpu_seconds(empty_run, p, 2 * n)
        hooks["hook_us_per_step"] = hook_us_per_step(2 * n)
    # "hand_cpu_seconds" is the baseline field of the report's overhead_us comparisons
    return {"cpu_seconds": long_arm - short_arm, "hand_cpu_seconds": long_base - short_base,
            "whole_fit_cpu_seconds": long_arm, "whole_fit_hand_cpu_seconds": long_base, "steps": n,
            "whole_fit_steps": 2 * n, **hooks}


def arm_plain(p: dict) -> dict:
    """The plain fit against itself: the noise floor."""
    return _arm(p, plain_run)


def arm_logged(p: dict) -> dict:
    """The logged fit against the plain fit."""
    return _arm(p, logged_run)


def measure(rounds: int = 20, p: dict = None) -> dict:
    """Alternate plain / logged / plain runs at ``steps`` and ``2 * steps`` for ``rounds`` rounds in
    this process; µs per step (marginal: fixed costs out; whole: fixed costs in) with their spread."""
    for name in IMPORTS:
        importlib.import_module(name)
    p = dict(BASE if p is None else p)
    common.limit_threads()
    common.warm_up(p["sizes"], p["batch_size"])
    n = p["steps"]
    arms = [("plain", plain_run), ("logged", logged_run), ("plain2", plain_run)]
    diffs = {"marginal": [], "whole": [], "noise_marginal": [], "hooks": []}
    for rnd in range(rounds + 1):  # one warm-up round
        shift = rnd % 3
        times = {}
        for name, fn in arms[shift:] + arms[:shift]:
            times[name] = (_cpu_seconds(fn, p, n), _cpu_seconds(fn, p, 2 * n))
            if fn is logged_run:
                _cpu_seconds(empty_run, p, 2 * n)
                hooks = hook_us_per_step(2 * n)
        if rnd:
            diffs["hooks"].append(hooks)
            growth = {name: long - short for name, (short, long) in times.items()}
            diffs["marginal"].append((growth["logged"] - growth["plain"]) / n * 1e6)
            diffs["noise_marginal"].append((growth["plain2"] - growth["plain"]) / n * 1e6)
            diffs["whole"].append((times["logged"][1] - times["plain"][1]) / (2 * n) * 1e6)
    return {"hook_us_per_step": common.quartile_spread(diffs["hooks"]),
            "per_step_us": common.quartile_spread(diffs["marginal"]),
            "whole_fit_per_step_us": common.quartile_spread(diffs["whole"]),
            "noise_floor_per_step_us": common.quartile_spread(diffs["noise_marginal"]),
            "plain_cpu_us_per_step_last_round": round(times["plain"][1] / (2 * n) * 1e6, 1), "rounds": rounds, **p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=BASE["steps"])
    args = parser.parse_args()
    print(json.dumps(measure(args.rounds, {**BASE, "steps": args.steps}), indent=1))


if __name__ == "__main__":
    main()
