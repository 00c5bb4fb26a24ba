"""Scenario 7 (CUDA only): AMP float16 throughput, and pinned-memory / non-blocking input copies.

The AMP arms train the medium MLP under ``torch.autocast(float16)`` with a ``GradScaler``; the
pinned arms train in float32 from a ``pin_memory=True`` loader (the hand-written loop copies with
``non_blocking=True``). Every arm synchronises the device before the clock stops.
"""
from __future__ import annotations

from bench import common

BASE = dict(sizes=[784, 4096, 4096, 10], batch_size=512, num_samples=512 * 200, num_epochs=1)


def params(quick: bool) -> dict:
    """The workload; ``quick`` shrinks it to a smoke run."""
    out = dict(BASE)
    if quick:
        out.update(num_samples=512 * 10)
    return out


def setup(p: dict, pin_memory: bool):
    """``(model on cuda, loader, optimizer, criterion)`` after a few warm-up steps on the GPU."""
    import torch
    from torch.utils.data import DataLoader
    model = common.mlp(p["sizes"]).cuda()
    data = common.dataset(p["num_samples"], p["sizes"][0], p["sizes"][-1])
    train = DataLoader(data, batch_size=p["batch_size"], shuffle=True, pin_memory=pin_memory,
                       generator=torch.Generator().manual_seed(common.SEED))
    opt, crit = common.sgd(model), torch.nn.CrossEntropyLoss()
    x = torch.randn(p["batch_size"], p["sizes"][0], device="cuda")
    y = torch.randint(0, p["sizes"][-1], (p["batch_size"],), device="cuda")
    for _ in range(5):
        crit(model(x), y).backward()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return model, train, opt, crit


def finish(timer, p: dict) -> dict:
    """Samples per second of the run."""
    return {**timer.times(), "samples_per_s": p["num_samples"] * p["num_epochs"] / timer.seconds}


def hand_loop(model, train, opt, crit, scaler=None) -> None:
    """Hand-written CUDA loop: non-blocking copies, optional float16 autocast with a scaler."""
    import torch
    for x, y in train:
        x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None):
            loss = crit(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    torch.cuda.synchronize()


def run_hand(p: dict, amp: bool, pin: bool) -> dict:
    """Time the hand-written loop."""
    import torch
    model, train, opt, crit = setup(p, pin_memory=pin)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    with common.Timer() as timer:
        for _ in range(p["num_epochs"]):
            hand_loop(model, train, opt, crit, scaler)
    return finish(timer, p)


def run_aitoolbox(p: dict, amp: bool, pin: bool) -> dict:
    """Time ``TrainLoop.fit`` (evaluation and progress bar off)."""
    import torch
    from aitoolbox import TrainLoop
    model, train, opt, crit = setup(p, pin_memory=pin)
    with common.Timer() as timer:
        TrainLoop(model, train, None, None, opt, crit, use_amp=amp, end_auto_eval=False,
                  show_progress=False).fit(num_epochs=p["num_epochs"])
        torch.cuda.synchronize()
    return finish(timer, p)


def arm_hand_amp(p: dict) -> dict:
    """Hand-written float16 AMP loop."""
    return run_hand(p, amp=True, pin=False)


def arm_aitoolbox_amp(p: dict) -> dict:
    """``TrainLoop(use_amp=True)``."""
    return run_aitoolbox(p, amp=True, pin=False)


def arm_hand_pinned(p: dict) -> dict:
    """Hand-written float32 loop from pinned memory with non-blocking copies."""
    return run_hand(p, amp=False, pin=True)


def arm_aitoolbox_pinned(p: dict) -> dict:
    """``TrainLoop`` from the same pinned-memory loader."""
    return run_aitoolbox(p, amp=False, pin=True)
