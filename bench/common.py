"""Workloads shared by every arm of the benchmark: models, data, the hand-written loops, meters.

Every arm of a scenario builds exactly the same model (same seed) and the same data (same seed,
same batch order), so the arms differ only in who runs the loop. Torch is imported lazily so that
the import scenario can time a clean ``import torch``.
"""
from __future__ import annotations

import importlib
import os
import re
import time
from typing import Callable, List, Optional, Sequence, Tuple

SEED = 1234


def limit_threads() -> None:
    """One intra-op thread: the overhead of a loop is not hidden behind parallel kernels."""
    import torch
    torch.set_num_threads(1)


def mlp(sizes: Sequence[int], seed: int = SEED):
    """An MLP ``sizes[0] -> ... -> sizes[-1]`` with ReLU between layers, initialised from ``seed``."""
    import torch
    from torch import nn
    torch.manual_seed(seed)
    layers: List = []
    for idx, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if idx < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def dataset(num_samples: int, num_features: int, num_classes: int, seed: int = SEED):
    """A synthetic classification ``TensorDataset`` (float features, int64 labels)."""
    import torch
    from torch.utils.data import TensorDataset
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, num_features, generator=gen)
    y = torch.randint(0, num_classes, (num_samples,), generator=gen)
    return TensorDataset(x, y)


def loader(data, batch_size: int, shuffle: bool, seed: int = SEED):
    """A DataLoader in the main process; shuffled from its own seeded generator when asked."""
    import torch
    from torch.utils.data import DataLoader
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen)


def sgd(model, lr: float = 0.01):
    """The optimizer of every training arm."""
    import torch
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def hand_train(model, train_loader, optimizer, criterion, num_epochs: int) -> None:
    """The reference: the plainest correct PyTorch training loop."""
    model.train()
    for _ in range(num_epochs):
        for x, y in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()


def hand_eval_loss(model, eval_loader, criterion) -> float:
    """The reference evaluation: one ``inference_mode`` forward pass, sample-weighted mean loss."""
    import torch
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in eval_loader:
            total += float(criterion(model(x), y)) * len(y)
            count += len(y)
    model.train(was_training)
    return total / count


def warm_up(sizes: Sequence[int], batch_size: int, steps: int = 30) -> None:
    """Run a few hand-written steps on a throwaway model so that every arm starts warm."""
    import torch
    model = mlp(sizes, seed=SEED + 1)
    opt = sgd(model)
    crit = torch.nn.CrossEntropyLoss()
    x, y = torch.randn(batch_size, sizes[0]), torch.randint(0, sizes[-1], (batch_size,))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()


def checksum(model) -> float:
    """Sum of all parameters: equal across arms when they did exactly the same updates."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall) and ``t.cpu_seconds`` (this process)."""

    def __enter__(self):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start
        return False

    def times(self) -> dict:
        """``{"seconds": wall, "cpu_seconds": CPU time of every thread of this process}``."""
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds}


def rss_kib() -> Tuple[int, int]:
    """``(current RSS, RSS high-water mark)`` of this process in KiB, from ``/proc/self/status``."""
    with open("/proc/self/status") as fh:
        text = fh.read()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", text).group(1)) for key in ("VmRSS", "VmHWM"))


def reset_rss_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux ``clear_refs``); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child_env(repo_root: str, extra: Optional[dict] = None) -> dict:
    """Environment of every measured process: one thread, the repository first on the path.

    ``extra``: variables of one scenario, e.g. the prediction scenario's
    ``MALLOC_MMAP_THRESHOLD_`` (see ``bench/scenarios/predict.py``).
    """
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p),
               PYTHONDONTWRITEBYTECODE="1", **(extra or {}))
    return env


def paired(build: Callable[[], tuple], hand: Callable, arm: Callable, warm: Callable[[], None],
           imports: Sequence[str] = ()) -> dict:
    """Time ``arm(*build())`` bracketed by two ``hand(*build())`` runs in this process: H X H.

    The hand-written runs in the same process are the arm's own baseline, so that differences
    between processes (placement, caches, neighbours' load) cancel; their mean also cancels a
    linear drift within the process. ``warm()`` runs first, untimed, to take the one-time costs
    (heap growth, first allocations) off the first timed run. ``imports`` are imported before any
    timing (import time is scenario 6, not a per-step cost). ``build()[0]`` is the model.
    """
    for name in imports:
        importlib.import_module(name)
    warm()
    timers, models = [], []
    for fn in (hand, arm, hand):
        built = build()
        with Timer() as timer:
            fn(*built)
        timers.append(timer)
        models.append(built[0])
    return {**timers[1].times(),
            "hand_cpu_seconds": (timers[0].cpu_seconds + timers[2].cpu_seconds) / 2,
            "hand_seconds": (timers[0].seconds + timers[2].seconds) / 2,
            "checksum": checksum(models[1]), "hand_checksum": checksum(models[0])}


def quartile_spread(values) -> dict:
    """Median, quartiles, min and max of ``values``, rounded to 0.01 (the in-process harnesses' summary)."""
    import statistics
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": round(med, 2), "q1": round(q1, 2), "q3": round(q3, 2),
            "min": round(min(values), 2), "max": round(max(values), 2)}
