"""The logging path's own cost per step, outside a fit: ``python -m bench.logger_cost [ROUNDS]``.

Drives ``LoggerCallback.on_batch_end`` 2,000 times on a stand-in loop (CPU loss tensors, one
param group), then times the flush's parts separately: turning the buffered steps into columns,
``CSVLogger.log_columns`` and ``TensorBoardLogger.log_columns`` over the 2,000 steps. Pure Python in
warm caches: a lower bound of what scenario 10 measures inside a real ``fit`` (where the training
step's work has evicted the interpreter's caches between two hooks).
"""
import statistics
import sys
import tempfile
import time
import types

import torch

from aitoolbox.experiment.loggers.csv_logger import CSVLogger
from aitoolbox.experiment.loggers.tensorboard_logger import TensorBoardLogger
from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback, _column

STEPS = 2000


def one_round(folder: str) -> list:
    """µs per step of: on_batch_end, building the rows, the CSV block, the TensorBoard block."""
    csv_logger, tb_logger = CSVLogger(f"{folder}/csv"), TensorBoardLogger(f"{folder}/tb")
    callback = LoggerCallback([csv_logger, tb_logger], flush_every_n_steps=10 ** 9)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    loop = types.SimpleNamespace(total_iteration_idx=0, loss_batch_accum=[], optimizers=[optimizer], callbacks=[],
                                 num_optimizer_steps=0)
    callback.train_loop_obj = loop
    callback._groups = list(optimizer.param_groups)
    callback._one_group, callback._group0, callback._lr_names = True, callback._groups[0], ["train/lr"]
    callback._norm_sources = []
    losses = [torch.tensor(0.5 + i * 1e-4) for i in range(STEPS)]
    start = time.perf_counter()
    for i in range(STEPS):
        loop.total_iteration_idx = i
        loop.loss_batch_accum.append(losses[i])
        callback.on_batch_end()
    hook = time.perf_counter()
    buffer = callback._buffer
    steps, wall_times = _column(buffer, 0), _column(buffer, 1)
    names, columns = callback._step_columns(buffer, callback._loss_floats(buffer))
    converted = time.perf_counter()
    csv_logger.setup(None)
    tb_logger.setup(None)
    t0 = time.perf_counter()
    csv_logger.log_columns(names, steps, wall_times, columns)
    t1 = time.perf_counter()
    tb_logger.log_columns(names, steps, wall_times, columns)
    t2 = time.perf_counter()
    csv_logger.finalize()
    tb_logger.finalize()
    return [(b - a) / STEPS * 1e6 for a, b in ((start, hook), (hook, converted), (t0, t1), (t1, t2))]


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        results = [one_round(f"{folder}/{r}") for r in range(rounds)]
    labels = ["on_batch_end", "columns (tensors -> floats)", "CSV block", "TensorBoard block"]
    medians = []
    for label, values in zip(labels, zip(*results)):
        medians.append(statistics.median(values))
        print(f"{label}: median {medians[-1]:.2f} µs/step (min {min(values):.2f}, max {max(values):.2f})")
    print(f"total: {sum(medians):.2f} µs/step")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
