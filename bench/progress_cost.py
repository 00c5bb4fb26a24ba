"""The progress display's own cost per step: ``python -m bench.progress_cost [ROUNDS]``.

Around a simulated 300 µs training step (a busy wait), only the display calls are timed: the
tqdm bar as ``TrainLoop`` drove it before scenario 8 was added (``update()`` every batch, a forced
redraw with the last batch's loss every 50 batches) against the current ``EpochProgress`` (updates on
an adaptive stride, a running mean of the batch losses). Both write to a fake terminal. Pure
Python and short timed regions: far less noisy on a shared machine than whole ``fit`` calls.
"""
import io
import statistics
import sys
import time
import types

import torch
from tqdm.auto import tqdm

from aitoolbox.torchtrain.callbacks import progress as P

class TTY(io.StringIO):
    def isatty(self):
        return True


def busy(us):
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


STEPS, STEP_US = 1000, 300


def before_style(stream):
    spent = 0.0; losses = []
    t = time.perf_counter()
    bar = tqdm(total=STEPS, initial=0, desc="Epoch 1", leave=False, dynamic_ncols=True, file=stream)
    spent += time.perf_counter() - t
    for it in range(1, STEPS + 1):
        busy(STEP_US); losses.append(torch.tensor(0.5))
        t = time.perf_counter()
        bar.update()
        if it % 50 == 0:
            bar.set_postfix(loss=float(losses[-1]))
        spent += time.perf_counter() - t
    t = time.perf_counter(); bar.close(); spent += time.perf_counter() - t
    return spent / STEPS * 1e6


def after_style(stream):
    loop = types.SimpleNamespace(loss_batch_accum=[], iteration=0, _epoch_len=STEPS, epoch=0, num_epochs=1)
    spent = 0.0
    t = time.perf_counter(); prog = P.open_epoch_progress(loop, stream); spent += time.perf_counter() - t
    next_update = prog.next_update
    for it in range(1, STEPS + 1):
        busy(STEP_US); loop.loss_batch_accum.append(torch.tensor(0.5)); loop.iteration = it
        t = time.perf_counter()
        if loop.iteration >= next_update:
            prog.update(); next_update = prog.next_update
        spent += time.perf_counter() - t
    t = time.perf_counter(); prog.close(); spent += time.perf_counter() - t
    return spent / STEPS * 1e6

def main(rounds: int) -> None:
    res = {"before": [], "after": []}
    for _ in range(rounds):
        for name, fn in (("before", before_style), ("after", after_style)):
            res[name].append(fn(TTY()))
    for k, v in res.items():
        q = statistics.quantiles(v, n=4, method="inclusive")
        print(f"{k}: median {q[1]:.2f} µs/step (q1 {q[0]:.2f}, q3 {q[2]:.2f}, min {min(v):.2f}, max {max(v):.2f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
