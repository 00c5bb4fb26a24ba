"""The loop's own cost per training step, resolved to about a microsecond: ``python -m bench.micro``.

The scenarios of ``bench/run.py`` time whole programs with a DataLoader, whose noise on a shared
machine is tens of microseconds per step. This harness removes what both loops share: the
batches are materialised once as a list (a list has ``len`` and ``iter``, so ``TrainLoop`` takes it
as its train loader), the model is tiny (by default one 2 -> 2 linear layer, so that the
torch work per step is small against the loop's), and one process alternates short runs of the
hand-written loop and of ``TrainLoop.fit`` many times, taking the CPU time of each. The per-step
overhead is the median over rounds of (TrainLoop - hand) / steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from bench import common


def _hand(model, batches, opt, crit, num_epochs: int) -> None:
    common.hand_train(model, batches, opt, crit, num_epochs)


#: ``--progress``: time ``TrainLoop`` with its default progress display on
SHOW_PROGRESS = False


def _loop(model, batches, opt, crit, num_epochs: int) -> None:
    from aitoolbox import TrainLoop
    TrainLoop(model, batches, None, None, opt, crit, end_auto_eval=False,
              show_progress=SHOW_PROGRESS).fit(num_epochs=num_epochs)


def measure(rounds: int = 40, steps: int = 500, sizes=(2, 2), batch_size: int = 4,
            loader: bool = False) -> dict:
    """Alternate hand / TrainLoop runs of ``steps`` batches ``rounds`` times; µs per step.

    ``loader``: read the batches through a shuffled DataLoader (as scenario 1 does) instead of a list.
    """
    import torch
    common.limit_threads()
    data = common.dataset(steps * batch_size, sizes[0], sizes[-1])
    batches = [(data.tensors[0][i:i + batch_size], data.tensors[1][i:i + batch_size])
               for i in range(0, steps * batch_size, batch_size)]
    if loader:
        batches = common.loader(data, batch_size, shuffle=True)
    crit = torch.nn.CrossEntropyLoss()
    diffs, hand_steps = [], []
    for rnd in range(rounds + 2):  # two warm-up rounds
        times = {}
        order = (_hand, _loop) if rnd % 2 == 0 else (_loop, _hand)
        for fn in order:
            model = common.mlp(sizes)
            opt = common.sgd(model)
            start = time.process_time()
            fn(model, batches, opt, crit, 1)
            times[fn] = time.process_time() - start
        if rnd >= 2:
            diffs.append((times[_loop] - times[_hand]) / steps * 1e6)
            hand_steps.append(times[_hand] / steps * 1e6)
    return {"overhead_us_median": statistics.median(diffs), "overhead_us_min": min(diffs),
            "overhead_us_max": max(diffs), "hand_step_us_median": statistics.median(hand_steps),
            "rounds": rounds, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--sizes", default="2,2", help="layer sizes of the MLP, e.g. 32,64,10")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--loader", action="store_true", help="batches from a shuffled DataLoader")
    parser.add_argument("--progress", action="store_true",
                        help="TrainLoop with its default progress display (a bar when stderr is a terminal)")
    args = parser.parse_args()
    global SHOW_PROGRESS
    SHOW_PROGRESS = args.progress
    sizes = tuple(int(n) for n in args.sizes.split(","))
    print(json.dumps(measure(args.rounds, args.steps, sizes, args.batch_size, args.loader), indent=1))


if __name__ == "__main__":
    main()
