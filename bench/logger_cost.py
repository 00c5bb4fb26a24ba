"""The logging path's own cost per step, outside a fit: ``python -m bench.logger_cost [ROUNDS]``.

Drives ``LoggerCallback.on_batch_end`` 2,000 times on a stand-in loop (CPU loss tensors, one
param group, the loop's shared loss floats already converted, as the epoch's mean converts them
in every fit), then runs the flush's parts separately: turning the buffered steps into columns,
``CSVLogger.log_columns`` and ``TensorBoardLogger.log_columns`` over the 2,000 steps.

* ``python -m bench.logger_cost 15``: each part timed (median over rounds, µs per step). Pure
  Python in warm caches: a lower bound of what scenario 10 measures inside a real ``fit``.
* ``python -m bench.logger_cost --instructions``: each part counted in instructions under
  valgrind's callgrind (one process; ``callgrind_control --dump`` after each part, bytecode
  cached as in ``bench.instructions``), per step, minus an empty part (the cost of switching the
  count on and off) and, for ``on_batch_end``, minus the driving loop without the hook. Does not
  depend on the machine's load.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from aitoolbox.experiment.loggers.csv_logger import CSVLogger
from aitoolbox.experiment.loggers.tensorboard_logger import TensorBoardLogger
from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback, _column
from aitoolbox.torchtrain.train_loop.components.loss_values import LossValues

STEPS = 2000
PARTS = ["empty", "driver", "on_batch_end", "columns (tensors -> floats)", "CSV block", "TensorBoard block"]


class StandInLoop:
    """What ``LoggerCallback`` reads of a ``TrainLoop`` (a plain class, as ``TrainLoop`` is)."""

    def __init__(self, optimizer):
        self.total_iteration_idx, self.loss_batch_accum, self.optimizers = 0, [], [optimizer]
        self.callbacks, self.num_optimizer_steps, self.train_history = [], 0, {}
        self.hyperparams, self.experiment_store, self._loss_values = None, None, LossValues()


def run_parts(folder: str, part) -> None:
    """Run every part of the logging path, each as ``part(label, fn)``."""
    csv_logger, tb_logger = CSVLogger(f"{folder}/csv"), TensorBoardLogger(f"{folder}/tb")
    callback = LoggerCallback([csv_logger, tb_logger], flush_every_n_steps=10 ** 9)
    loop = StandInLoop(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    callback.train_loop_obj = loop
    callback.on_train_begin()  # sets the loggers up too
    losses = [torch.tensor(0.5 + i * 1e-4) * 1.0001 for i in range(STEPS)]

    def drive(hook):
        for i in range(STEPS):
            loop.total_iteration_idx = i
            loop.loss_batch_accum.append(losses[i])
            hook()

    part("empty", lambda: None)
    part("driver", lambda: drive(lambda: None))
    loop.loss_batch_accum = []
    part("on_batch_end", lambda: drive(callback.on_batch_end))
    loop._loss_values.update(loop.loss_batch_accum)  # the epoch's mean converts them in every fit
    buffer = callback._buffer
    steps, wall_times = _column(buffer, 0), _column(buffer, 1)
    names, columns = part("columns (tensors -> floats)",
                          lambda: callback._step_columns(buffer, callback._loss_floats(buffer)))
    part("CSV block", lambda: csv_logger.log_columns(names, steps, wall_times, columns))
    part("TensorBoard block", lambda: tb_logger.log_columns(names, steps, wall_times, columns))
    csv_logger.finalize()
    tb_logger.finalize()


def one_round(folder: str) -> dict:
    """µs per step of each part."""
    spent = {}

    def part(label, fn):
        start = time.perf_counter()
        out = fn()
        spent[label] = (time.perf_counter() - start) / STEPS * 1e6
        return out
    run_parts(folder, part)
    return spent


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        results = [one_round(f"{folder}/{r}") for r in range(rounds)]
    total = 0.0
    for label in PARTS[2:]:
        values = [r[label] for r in results]
        median = statistics.median(values)
        total += median
        print(f"{label}: median {median:.2f} µs/step (min {min(values):.2f}, max {max(values):.2f})")
    print(f"total: {total:.2f} µs/step")


def _count_child() -> None:
    """Under callgrind (``--instr-atstart=no``): count each part, dumping the counters after it."""
    def callgrind(*args):
        subprocess.run(["callgrind_control", *args, str(os.getpid())], capture_output=True, check=False)

    def part(label, fn):
        callgrind("-i", "on")
        out = fn()
        callgrind("-i", "off")
        callgrind(f"--dump={PARTS.index(label)}")
        return out
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        run_parts(f"{folder}/warm", lambda label, fn: fn())  # first calls, caches, specialisation
        run_parts(f"{folder}/counted", part)


def count_instructions() -> dict:
    """Instructions per step of each part (see the module's docstring)."""
    from bench.instructions import child_env
    with tempfile.TemporaryDirectory() as tmp:
        env = child_env(os.path.join(tmp, "pycache"))
        subprocess.run([sys.executable, "-m", "bench.logger_cost", "1"], check=True, capture_output=True, env=env)
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                        sys.executable, "-m", "bench.logger_cost", "--count-child"],
                       check=True, capture_output=True, env=env)
        totals = {}
        for name in os.listdir(tmp):
            if name.startswith("callgrind.out."):
                with open(os.path.join(tmp, name)) as f:
                    text = f.read()
                label = re.search(r"^desc: Trigger: Client Request: (\d+)|^desc: Trigger: dump (\d+)", text, re.M)
                totals[PARTS[int(label.group(1) or label.group(2))]] = int(re.search(r"^totals:\s*(\d+)", text, re.M)
                                                                         .group(1))
    per_step = {label: (totals[label] - totals["empty"]) / STEPS for label in PARTS[1:]}
    per_step["on_batch_end"] -= per_step.pop("driver")
    per_step = {label: round(value) for label, value in per_step.items()}
    return {"instructions_per_step": per_step, "total_per_step": sum(per_step.values()), "steps": STEPS}


if __name__ == "__main__":
    if sys.argv[1:] == ["--count-child"]:
        _count_child()
    elif sys.argv[1:] == ["--instructions"]:
        print(json.dumps(count_instructions(), indent=1))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
